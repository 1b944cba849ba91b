"""The manifest builder: every entry recorded once, bad files described, symlinks not followed, memory bounded."""

import io
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.data.manifest import Entry, build_manifest, display_path, duplicates, fingerprint, probe, scan
from models.files import LEDGER

ROOT = Path(__file__).resolve().parents[1]
NON_UTF8 = b"caf\xe9.png"   # latin-1 bytes: not valid UTF-8

# relpath -> expected quarantine code, or None for "accepted (converted at load time if needed)".
EXPECTED: dict[str, str | None] = {
    **{f"good/rgb_{i:02d}.png": None for i in range(12)},
    "good/gray.png": None,            # grayscale among RGB: accepted, converted to model.channels at load
    "good/alpha.png": None,           # RGBA: accepted, alpha composited on white
    "good/gray16.png": None,          # 16-bit: accepted, scaled by its max to 8 bit
    "good/palette.png": None,         # P: accepted, converted through RGBA
    "good/big.jpg": None,             # 8000x8000 JPEG: accepted, decoded at 1/8 scale
    "zz_dup.png": "duplicate",        # same bytes as good/rgb_00.png, which is kept
    "bad/truncated.jpg": "decode-error",
    "bad/empty.png": "empty-file",
    "bad/text.png": "decode-error",
    "bad/tiny4.png": "too-small",
    "bad/blank.png": "degenerate",
    "bad/wide.png": "aspect",
    "bad/gif_named.png": "format",
    "bad/cmyk.jpg": "mode",
    "bad/bomb.png": "too-large",      # header says 20000x20000; never decoded
    "bad/notes.txt": "unsupported-suffix",
    "links/loop.png": "symlink-loop",
    "links/outside.png": "symlink-outside-root",
    "links/up": "symlink-loop",       # a folder link back to the root: following it would never end
    display_path(NON_UTF8): "non-utf8-name",
}


def _noise(rng: np.random.Generator, w: int, h: int, c: int = 3) -> np.ndarray:
    shape = (h, w, c) if c > 1 else (h, w)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _png_header_only(path: Path, w: int, h: int) -> None:
    """A PNG whose IHDR claims w x h, with an empty IDAT: a decompression bomb that costs nothing to build."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b""))


def make_bad_inputs(base: Path) -> Path:
    """The issue's bad-input zoo under base/data (plus a file outside it); returns the data root."""
    rng = np.random.default_rng(0)
    root = base / "data"
    for d in ("good", "bad", "links"):
        (root / d).mkdir(parents=True)
    for i in range(12):
        Image.fromarray(_noise(rng, 32, 32)).save(root / f"good/rgb_{i:02d}.png")
    Image.fromarray(_noise(rng, 32, 32, 1)).save(root / "good/gray.png")
    Image.fromarray(_noise(rng, 32, 32, 4), "RGBA").save(root / "good/alpha.png")
    Image.fromarray(_noise(rng, 32, 32, 1).astype(np.uint16) * 257).save(root / "good/gray16.png")
    Image.fromarray(_noise(rng, 32, 32)).convert("P", palette=Image.ADAPTIVE).save(root / "good/palette.png")
    big = Image.new("RGB", (8000, 8000), (40, 90, 160))
    big.paste(Image.fromarray(_noise(rng, 2000, 2000)), (3000, 3000))
    big.save(root / "good/big.jpg", quality=80)
    shutil.copy(root / "good/rgb_00.png", root / "zz_dup.png")

    buf = io.BytesIO()
    Image.fromarray(_noise(rng, 64, 64)).save(buf, "JPEG")
    (root / "bad/truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "bad/empty.png").write_bytes(b"")
    (root / "bad/text.png").write_text("this is not an image\n")
    Image.fromarray(_noise(rng, 4, 4)).save(root / "bad/tiny4.png")
    Image.new("RGB", (32, 32), (255, 255, 255)).save(root / "bad/blank.png")
    Image.fromarray(_noise(rng, 200, 32)).save(root / "bad/wide.png")
    Image.fromarray(_noise(rng, 32, 32)).save(root / "bad/gif_named.png", format="GIF")
    Image.fromarray(_noise(rng, 32, 32, 4), "CMYK").save(root / "bad/cmyk.jpg")
    _png_header_only(root / "bad/bomb.png", 20000, 20000)
    (root / "bad/notes.txt").write_text("scraped from somewhere\n")

    Image.fromarray(_noise(rng, 32, 32)).save(base / "outside.png")
    os.symlink("loop.png", root / "links/loop.png")               # points at itself
    os.symlink(base / "outside.png", root / "links/outside.png")
    os.symlink("..", root / "links/up")                           # folder link back into the root
    Image.fromarray(_noise(rng, 32, 32)).save(os.path.join(os.fsencode(root), NON_UTF8))
    return root


_CACHE: dict[str, Path] = {}


def bad_inputs_root(tmp_path_factory) -> Path:
    """Built once per session (the 8000x8000 JPEG takes about a second), shared with test_data_gate.py."""
    if "root" not in _CACHE:
        _CACHE["root"] = make_bad_inputs(tmp_path_factory.mktemp("bad-inputs"))
    return _CACHE["root"]


def all_entries(root: Path) -> set[str]:
    """Every file, link and link-to-folder under root, as display relpaths (an independent os.walk over bytes)."""
    out = set()
    broot = os.fsencode(root)
    for dirpath, dirs, files in os.walk(broot, followlinks=False):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            out.add(display_path(os.path.relpath(os.path.join(dirpath, name), broot)))
    return out


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory):
    return bad_inputs_root(tmp_path_factory)


@pytest.fixture(scope="module")
def entries(bad_root):
    return {e.relpath: e for e in build_manifest(bad_root, workers=2)}


def test_every_entry_recorded_exactly_once(bad_root, entries):
    assert set(entries) == all_entries(bad_root) == set(EXPECTED)


@pytest.mark.parametrize("rel,needle", [
    ("bad/truncated.jpg", "decode-error"), ("bad/empty.png", "empty-file"), ("bad/text.png", "decode-error"),
    ("bad/bomb.png", "too-large"),
])
def test_unreadable_content_is_described(entries, rel, needle):
    e = entries[rel]
    assert not e.decodes and e.decode_error.startswith(needle), e


def test_symlinks_and_names_are_not_read(entries, bad_root):
    assert entries["links/loop.png"].scan_error.startswith("symlink-loop")
    outside = entries["links/outside.png"].scan_error
    assert outside.startswith("symlink-outside-root") and "outside.png" in outside
    assert entries["links/up"].scan_error.startswith("symlink-loop: points to ")
    assert entries[display_path(NON_UTF8)].scan_error.startswith("non-utf8-name")
    assert entries[display_path(NON_UTF8)].path.endswith("caf\\xe9.png")  # printable, Arrow-safe


def test_accepted_modes_decode_with_stats(entries):
    modes = {rel: entries[rel].mode for rel in ("good/gray.png", "good/alpha.png", "good/gray16.png",
                                                "good/palette.png", "good/rgb_00.png", "good/big.jpg")}
    assert modes == {"good/gray.png": "L", "good/alpha.png": "RGBA", "good/gray16.png": "I;16",
                     "good/palette.png": "P", "good/rgb_00.png": "RGB", "good/big.jpg": "RGB"}
    for rel in modes:
        e = entries[rel]
        assert e.decodes and e.std > 2.0 and 0 <= e.mean <= 255 and len(e.sha256) == 64, e
    assert entries["bad/blank.png"].std == 0.0
    assert (entries["good/big.jpg"].width, entries["good/big.jpg"].height) == (8000, 8000)
    assert entries["zz_dup.png"].sha256 == entries["good/rgb_00.png"].sha256


def _peak_mb_during(fn) -> float:
    """Peak RSS growth (MiB) while fn runs: reset the kernel's high-water mark, then read VmHWM."""
    def status() -> dict[str, int]:
        d = dict(line.split(":", 1) for line in open("/proc/self/status"))
        return {k: int(d[k].split()[0]) for k in ("VmHWM", "VmRSS")}
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before = status()["VmRSS"]
    fn()
    return (status()["VmHWM"] - before) / 1024


def test_huge_image_memory_stays_bounded(bad_root):
    """Full decode of 8000x8000 RGB would need 183 MiB; the JPEG draft decodes at 1/8 scale."""
    try:
        peak = _peak_mb_during(lambda: probe(Entry(str(bad_root / "good/big.jpg"), "big"), 89_478_485))
    except OSError:
        pytest.skip("/proc/self/clear_refs not writable here; cannot reset the RSS high-water mark")
    assert peak < 40, f"probing an 8000x8000 JPEG raised peak RSS by {peak:.0f} MiB"
    bomb = probe(Entry(str(bad_root / "bad/bomb.png"), "bomb"), 89_478_485)
    assert bomb.decode_error.startswith("too-large") and bomb.width == 20000


def _as_nobody(fn) -> str:
    """Run fn() in a forked child that dropped root to user nobody (65534); returns what it returned (a str)."""
    Image.init()  # load PIL's plugins before the fork: nobody cannot read the interpreter's stdlib under /root
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, str(fn()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        out = fh.read()
    os.waitpid(pid, 0)
    return out


def test_unreadable_file_is_reported():
    """chmod 000 does not stop root, so as root the probe runs in a forked child that became user nobody."""
    base = Path(tempfile.mkdtemp(prefix="gate-unreadable-"))
    try:
        base.chmod(0o755)
        Image.fromarray(_noise(np.random.default_rng(1), 32, 32)).save(base / "secret.png")
        (base / "secret.png").chmod(0o000)
        def reason() -> str:
            return build_manifest(base, workers=1)[0].decode_error
        got = _as_nobody(reason) if os.geteuid() == 0 else reason()
        assert got.startswith("unreadable: Permission denied"), got
    finally:
        shutil.rmtree(base)


def test_missing_and_file_roots_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan(tmp_path / "nope")
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="a.png"):
        scan(tmp_path / "a.png")
    (tmp_path / "empty").mkdir()
    assert build_manifest(tmp_path / "empty") == []


def test_fingerprint_is_order_independent_and_covers_settings():
    a = fingerprint(["b" * 64, "a" * 64], {"resolution": 32})
    assert a == fingerprint(["a" * 64, "b" * 64], {"resolution": 32})
    assert a != fingerprint(["a" * 64, "b" * 64], {"resolution": 64})
    assert a != fingerprint(["a" * 64], {"resolution": 32})


def test_duplicates_keep_the_first_copy_by_relpath():
    rows = [("b/x.png", "h1"), ("a/x.png", "h1"), ("c.png", "h2"), ("z.png", "h1"), ("d.png", "h3"), ("e.png", "h2")]
    assert duplicates(rows) == {"b/x.png": "a/x.png", "z.png": "a/x.png", "e.png": "c.png"}
    assert duplicates([]) == {} and duplicates([("a", "h")]) == {}


def test_the_project_ledger_is_not_data(tmp_path):
    """A folder written by `transsrgan demo-data` holds the project's list of its files; the scan skips it."""
    from models.files import OutputFolder

    Image.fromarray(_noise(np.random.default_rng(2), 32, 32)).save(tmp_path / "a.png")
    with OutputFolder(tmp_path, "test") as out:
        out.write("b.txt", "x")
    assert (tmp_path / LEDGER).is_file()
    assert [e.relpath for e in build_manifest(tmp_path, workers=1)] == ["a.png", "b.txt"]


@pytest.mark.slow
def test_20k_small_images_under_a_minute_on_two_cores(tmp_path):
    from models.data.export import export_digits

    export_digits(tmp_path / "a")
    for k in "bcd":
        shutil.copytree(tmp_path / "a", tmp_path / k)
    entries = build_manifest(tmp_path, workers=2)      # its speed is measured in docs/data-gate.md, not asserted
    assert len(entries) == 20_000 and all(e.decodes for e in entries)
    assert len({e.sha256 for e in entries}) == len({e.sha256 for e in entries if e.relpath.startswith("a/")})
