"""The data-gate manifest: one record per entry under a data root (path, sha256, size, mode, stats), built in parallel.

Every file and symlink under the root gets exactly one record. Entries that are not even read (symlinks,
non-UTF-8 names, non-image suffixes) carry `scan_error`; files that are read carry `decode_error` when PIL
cannot decode them. The data gate (tasks/data_gate.py) turns these records into expectations; this module
only measures and never deletes or modifies a file.
"""

import errno
import hashlib
import io
import os
import stat
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from models.data.images import IMAGE_SUFFIXES, oriented_size
from models.files import LEDGER

STATS_SIDE = 64              # statistics are computed on a copy downscaled to about this side
IN_MEMORY_BYTES = 8 << 20    # files up to this size are read once (hash + decode from memory)
CHUNK = 256                  # files per process-pool task


@dataclass
class Entry:
    """One file or symlink under the data root; `path` is absolute, `relpath` relative to the root."""

    path: str
    relpath: str
    kind: str = "file"                  # file | symlink
    scan_error: str | None = None       # "code: detail" when the entry is not read at all
    decode_error: str | None = None     # "code: detail" when the file is read but is not a decodable image
    decodes: bool | None = None         # None: not attempted (scan_error)
    sha256: str | None = None
    bytes: int | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    channels: int | None = None
    mean: float | None = None           # intensity on the 0-255 scale after the training conversion (L)
    std: float | None = None
    extra: dict = field(default_factory=dict)

    def record(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return d


def display_path(p: str | bytes) -> str:
    """A str that Arrow/CSV can hold: undecodable bytes in a name become backslash escapes (b'\\xff' -> '\\xff')."""
    raw = os.fsencode(p)
    return raw.decode("utf-8", "backslashreplace")


def _is_utf8(p: str) -> bool:
    try:
        os.fsencode(p).decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _within(target: Path, root: Path) -> bool:
    try:
        target.relative_to(root)
        return True
    except ValueError:
        return False


def _symlink_entry(path: str, rel: str, root: Path) -> Entry:
    """Symlinks are never followed; the reason says where they point."""
    target = os.readlink(path)
    e = Entry(display_path(path), display_path(rel), kind="symlink")
    try:
        resolved = Path(path).resolve(strict=True)
    except RuntimeError:  # Python < 3.13 raises this for loops
        e.scan_error = f"symlink-loop: {display_path(target)} (not followed)"
        return e
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            e.scan_error = f"symlink-loop: {display_path(target)} (not followed)"
        else:
            e.scan_error = f"symlink-broken: {display_path(target)} (not followed)"
        return e
    if not _within(resolved, root):
        e.scan_error = f"symlink-outside-root: points to {display_path(str(resolved))} (not followed)"
    elif resolved.is_dir() and _within(Path(path).parent.resolve(), resolved):
        # a link to its own folder or an ancestor: following it would walk the same tree forever
        e.scan_error = f"symlink-loop: points to {display_path(str(resolved))}, a folder above it (not followed)"
    else:
        e.scan_error = f"symlink: points to {display_path(str(resolved))} inside the root (not followed; " \
                       "the target is checked on its own)"
    return e


def scan(root: str | Path, exclude: Path | None = None) -> tuple[list[Entry], list[Entry]]:
    """Walk root without following links: (entries to probe, entries rejected by name/kind), both sorted.

    `exclude` (e.g. the gate's own output folder inside the root) is skipped.
    """
    root = Path(root).resolve()
    if not root.exists():
        raise FileNotFoundError(f"data.source: path does not exist: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"data.source: expected a folder of images, got a file: {root}")
    todo: list[Entry] = []
    rejected: list[Entry] = []
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        if exclude is not None and Path(dirpath) == exclude:
            dirs[:] = []
            continue
        for name in sorted(dirs):
            full = os.path.join(dirpath, name)
            if os.path.islink(full):  # os.walk lists links to folders (and link loops) among dirs
                rejected.append(_symlink_entry(full, os.path.relpath(full, root), root))
        dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(dirpath, d))
                         and (exclude is None or Path(dirpath, d) != exclude))
        for name in sorted(files):
            if name == LEDGER:   # the project's list of the files it wrote there: bookkeeping, not data
                continue
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if os.path.islink(full):
                rejected.append(_symlink_entry(full, rel, root))
                continue
            e = Entry(display_path(full), display_path(rel))
            mode = os.lstat(full).st_mode
            if not stat.S_ISREG(mode):
                e.scan_error = "not-a-file: a device, socket or pipe (not read)"
            elif not _is_utf8(full):
                e.scan_error = "non-utf8-name: the file name is not valid UTF-8; rename it to use it " \
                               "(the path is shown with \\x escapes)"
            elif Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                e.scan_error = f"unsupported-suffix: {Path(name).suffix or '(none)'} is not one of " \
                               f"{', '.join(IMAGE_SUFFIXES)}"
            if e.scan_error:
                rejected.append(e)
            else:
                todo.append(e)
    key = lambda e: e.relpath  # noqa: E731
    return sorted(todo, key=key), sorted(rejected, key=key)


def _to_gray(img: Image.Image) -> np.ndarray:
    """float64 (H, W) on 0-255, converted the way training converts (alpha on white, 16-bit scaled by max)."""
    if img.mode in ("RGBA", "LA", "P", "PA"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() or 1.0
        return arr * (255.0 / hi)
    return np.asarray(img.convert("L"), dtype=np.float64)


def probe(e: Entry, max_pixels: int) -> Entry:
    """Hash, header and downscaled decode of one file; errors land in e.decode_error, never raise."""
    path = e.path  # probed entries have UTF-8 names, so the display path is the real path
    e.decodes = False
    try:
        size = os.stat(path).st_size
        e.bytes = size
        if size == 0:
            e.decode_error = "empty-file: 0 bytes"
            return e
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            if size <= IN_MEMORY_BYTES:
                data = fh.read()
                h.update(data)
                src: io.BytesIO | str = io.BytesIO(data)
            else:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
                src = path
        e.sha256 = h.hexdigest()
    except PermissionError as exc:
        e.decode_error = f"unreadable: {exc.strerror}"
        return e
    except OSError as exc:
        e.decode_error = f"unreadable: {exc}"
        return e
    # data.max_pixels is applied to the header below (and the message gives the size), so PIL's own bomb
    # check, which refuses at open without saying the size, is off while probing and restored afterwards.
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(src) as img:   # lazy: reads the header only
            e.format, e.mode = img.format, img.mode
            e.width, e.height = oriented_size(img)
            e.channels = len(img.getbands())
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                e.decode_error = (f"animated: {frames} frames; only still images train (save the frame you "
                                  "want as a still image)")
                return e
            if e.width * e.height > max_pixels:
                e.decode_error = (f"too-large: {e.width}x{e.height} = {e.width * e.height} pixels > "
                                  f"data.max_pixels ({max_pixels}); not decoded")
                return e
            # JPEG decodes at 1/2..1/8 scale (DCT scaling) so an 8000x8000 photo never fills memory;
            # other formats decode fully (bounded by max_pixels) and are reduced before any float copy.
            img.draft(img.mode, (STATS_SIDE, STATS_SIDE))
            img.load()
            factor = max(1, min(img.size) // STATS_SIDE)
            small = img.reduce(factor) if factor > 1 and img.mode not in ("P", "PA") else img
            gray = _to_gray(small)
            e.mean, e.std = float(gray.mean()), float(gray.std())
            e.decodes = True
    except Image.UnidentifiedImageError:
        e.decode_error = "decode-error: not an image PIL recognises (UnidentifiedImageError)"
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data; all mean "does not decode"
        e.decode_error = f"decode-error: {type(exc).__name__}: {exc}"
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    return e


def _probe_chunk(args: tuple[list[Entry], int]) -> list[Entry]:
    entries, max_pixels = args
    return [probe(e, max_pixels) for e in entries]


def _chunks(items: list[Entry], n: int) -> Iterator[list[Entry]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def build_manifest(root: str | Path, workers: int = 0, max_pixels: int = 89_478_485,
                   exclude: Path | None = None) -> list[Entry]:
    """All entries under root, sorted by relpath: probed files plus those rejected by scan()."""
    todo, rejected = scan(root, exclude)
    workers = workers or min(os.cpu_count() or 1, 8)
    jobs = [(c, max_pixels) for c in _chunks(todo, CHUNK)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            probed = [e for chunk in pool.map(_probe_chunk, jobs) for e in chunk]
    else:
        probed = [e for job in jobs for e in _probe_chunk(job)]
    return sorted(probed + rejected, key=lambda e: e.relpath)


def duplicates(rows: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Exact copies among (relpath, sha256) rows: {relpath: kept relpath} for every copy but the first by relpath.

    One copy of each content trains; the others are duplicates, which are not broken files: the gate reports them
    and counts them against data.max_duplicate_fraction, not data.max_bad_fraction.
    """
    kept: dict[str, str] = {}
    copies: dict[str, str] = {}
    for rel, sha in sorted(rows):
        if sha in kept:
            copies[rel] = kept[sha]
        else:
            kept[sha] = rel
    return copies


def fingerprint(hashes: list[str], settings: dict) -> str:
    """sha256 over the sorted file hashes and the settings that decide validity (order-independent)."""
    h = hashlib.sha256()
    for key in sorted(settings):
        h.update(f"{key}={settings[key]!r}\n".encode())
    for digest in sorted(hashes):
        h.update(digest.encode() + b"\n")
    return h.hexdigest()
