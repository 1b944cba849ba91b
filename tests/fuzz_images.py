"""A seeded image-corpus fuzzer: small valid PNG/JPEG/WEBP files and mutants that lie, break, or are no files at all."""

# make_corpus(root, seed) writes the same bytes for the same seed. Every entry is a Case (its path relative to the
# root and the mutation class that made it); snapshot(root) hashes every entry so a test can show that a run
# left all of them byte-identical.

import hashlib
import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IHDR_AT = len(PNG_SIGNATURE)               # the IHDR chunk: length (4), type (4), data (13), CRC (4)
HUGE_SIZES = ((30_000, 30_000), (65_535, 65_535), (2**31 - 1, 1), (1, 2**31 - 1), (100_000, 100_000))
# (bit depth, colour type) pairs: the valid ones of the PNG spec, then a few that no decoder accepts
PNG_MODES = ((1, 0), (2, 0), (4, 0), (8, 0), (16, 0), (8, 2), (16, 2), (1, 3), (2, 3), (4, 3), (8, 3), (8, 4),
             (16, 4), (8, 6), (16, 6), (3, 2), (8, 5), (32, 0), (0, 0))
SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}


@dataclass(frozen=True)
class Case:
    """One entry of a corpus: its path under the root and what made it ("valid" for untouched images)."""

    relpath: str
    kind: str


# ---------------------------------------------------------------- valid images

def valid_image(rng: np.random.Generator, fmt: str) -> bytes:
    """A small image with texture (intensity std well above the gate's min_std): 16..40 px a side."""
    w, h = (int(v) for v in rng.integers(16, 41, size=2))
    y, x = np.mgrid[0:h, 0:w]
    base = (x * rng.integers(3, 9) + y * rng.integers(3, 9) + rng.integers(0, 40, (h, w))) % 256   # (h, w)
    modes = {"PNG": ("L", "RGB", "RGBA", "P", "LA", "I;16"), "JPEG": ("L", "RGB"), "WEBP": ("RGB", "RGBA")}[fmt]
    mode = modes[int(rng.integers(len(modes)))]
    if mode == "I;16":
        img = Image.fromarray((base * 257).astype(np.uint16))
    else:
        rgb = np.stack([base, np.roll(base, 3, axis=1), 255 - base], axis=-1).astype(np.uint8)   # (h, w, 3)
        img = Image.fromarray(rgb).convert(mode)
    buf = io.BytesIO()
    if fmt == "JPEG" and rng.random() < 0.3:          # a phone photo: EXIF says "rotate 90 degrees"
        exif = Image.Exif()
        exif[0x0112] = 6
        img.save(buf, format="JPEG", quality=90, exif=exif)
    else:
        img.save(buf, format=fmt, **({"quality": 85} if fmt != "PNG" else {}))
    return buf.getvalue()


# ---------------------------------------------------------------- byte mutations (format-aware where needed)

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _with_ihdr(png: bytes, width: int, height: int, depth: int | None = None, colour: int | None = None) -> bytes:
    """The PNG with its IHDR fields replaced and a correct CRC, so only the lie itself is wrong."""
    data = bytearray(png[IHDR_AT + 8:IHDR_AT + 21])   # width, height, depth, colour, compression, filter, interlace
    data[0:8] = struct.pack(">II", width, height)
    if depth is not None:
        data[8], data[9] = depth, colour
    return png[:IHDR_AT] + _png_chunk(b"IHDR", bytes(data)) + png[IHDR_AT + 25:]


def bitflip(rng: np.random.Generator, data: bytes, fmt: str) -> bytes:
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 17))):
        i = int(rng.integers(len(out)))
        out[i] ^= 1 << int(rng.integers(8))
    return bytes(out)


def truncate(rng: np.random.Generator, data: bytes, fmt: str) -> bytes:
    return data[:int(rng.integers(1, len(data)))]


def truncate_header(rng: np.random.Generator, data: bytes, fmt: str) -> bytes:
    return data[:int(rng.integers(1, min(64, len(data))))]


def png_huge(rng: np.random.Generator, data: bytes, fmt: str) -> bytes:
    w, h = HUGE_SIZES[int(rng.integers(len(HUGE_SIZES)))]
    return _with_ihdr(data, w, h)


def png_size_lie(rng: np.random.Generator, data: bytes, fmt: str) -> bytes:
    w, h = struct.unpack(">II", data[IHDR_AT + 8:IHDR_AT + 16])
    choices = ((w * 2, h), (w, h * 3), (w + 1, h), (max(1, w // 2), h), (0, h), (w, 0), (2000, 2000), (9000, 9000))
    return _with_ihdr(data, *choices[int(rng.integers(len(choices)))])


def png_mode_lie(rng: np.random.Generator, data: bytes, fmt: str) -> bytes:
    w, h = struct.unpack(">II", data[IHDR_AT + 8:IHDR_AT + 16])
    depth, colour = PNG_MODES[int(rng.integers(len(PNG_MODES)))]
    return _with_ihdr(data, w, h, depth, colour)


def jpeg_header_lie(rng: np.random.Generator, data: bytes, fmt: str) -> bytes:
    """SOF0/SOF2: precision (1 byte), height (2), width (2), components (1): one of them lies."""
    at = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
    if at < 0:
        return bitflip(rng, data, fmt)
    out = bytearray(data)
    field = int(rng.integers(4))
    if field == 0:
        out[at + 4] = (12, 16, 0, 255)[int(rng.integers(4))]
    elif field == 1:
        out[at + 5:at + 9] = struct.pack(">HH", *((65_535, 65_535), (0, 16), (16, 0), (9000, 9000))[int(rng.integers(4))])
    elif field == 2:
        h, w = struct.unpack(">HH", data[at + 5:at + 9])
        out[at + 5:at + 9] = struct.pack(">HH", min(h * 2, 65_535), w)
    else:
        out[at + 9] = (3 if data[at + 9] == 1 else 1) if rng.random() < 0.5 else 4
    return bytes(out)


def webp_header_lie(rng: np.random.Generator, data: bytes, fmt: str) -> bytes:
    """The RIFF size, or the VP8/VP8L frame's width and height, lie."""
    out = bytearray(data)
    if rng.random() < 0.4:
        out[4:8] = struct.pack("<I", (0xFFFF_FFFF, 4, len(data) * 4)[int(rng.integers(3))])
        return bytes(out)
    vp8, vp8l = data.find(b"VP8 "), data.find(b"VP8L")
    if vp8l >= 0:                                      # 0x2f, then 14-bit (width-1) and 14-bit (height-1)
        out[vp8l + 9:vp8l + 13] = b"\xff\xff\xff\x0f"
    elif vp8 >= 0:                                     # frame tag (3), start code (3), 14-bit width, 14-bit height
        out[vp8 + 14:vp8 + 18] = struct.pack("<HH", 0x3FFF, 0x3FFF)
    else:
        return bitflip(rng, data, fmt)
    return bytes(out)


MUTATORS: dict[str, tuple[tuple[str, ...], Callable[[np.random.Generator, bytes, str], bytes]]] = {
    "bitflip": (("PNG", "JPEG", "WEBP"), bitflip),
    "truncate": (("PNG", "JPEG", "WEBP"), truncate),
    "truncate-header": (("PNG", "JPEG", "WEBP"), truncate_header),
    "png-huge-ihdr": (("PNG",), png_huge),
    "png-size-lie": (("PNG",), png_size_lie),
    "png-mode-lie": (("PNG",), png_mode_lie),
    "jpeg-header-lie": (("JPEG",), jpeg_header_lie),
    "webp-header-lie": (("WEBP",), webp_header_lie),
}


# ---------------------------------------------------------------- entries that are not plain image files

def _other_format(rng: np.random.Generator) -> bytes:
    img = Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=("GIF", "BMP", "TIFF")[int(rng.integers(3))])
    return buf.getvalue()


def _animated(rng: np.random.Generator) -> bytes:
    frames = [Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)) for _ in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format=("PNG", "GIF", "WEBP")[int(rng.integers(3))], save_all=True,
                   append_images=frames[1:])
    return buf.getvalue()


def _write(root: Path, rel: str, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def make_corpus(root: str | Path, seed: int, n_valid: int = 12, n_mutants: int = 36,
                big_side: int = 0) -> list[Case]:
    """Write a corpus under root (created; must be empty) and return its entries; same seed, same bytes.

    n_valid valid images, n_mutants byte mutants of them, and one of each special entry: a FIFO, a 0-byte file,
    a non-image in disguise, another format, an animated image, links (inside, outside, dangling), a non-UTF-8
    name, an unsupported suffix, a folder named like an image. big_side > 0 adds a decodable big_side^2 PNG.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cases: list[Case] = []
    bases: list[tuple[str, bytes]] = []
    for i in range(n_valid):
        fmt = ("PNG", "JPEG", "WEBP")[i % 3]
        data = valid_image(rng, fmt)
        rel = f"valid/{i:03d}{SUFFIX[fmt]}" if i % 4 else f"valid/deep/er/{i:03d}{SUFFIX[fmt]}"
        _write(root, rel, data)
        bases.append((fmt, data))
        cases.append(Case(rel, "valid"))
    names = [k for k, (formats, _) in MUTATORS.items() if any(fmt in formats for fmt, _ in bases)]
    for i in range(n_mutants):
        kind = names[i % len(names)]
        formats, mutate = MUTATORS[kind]
        pool = [b for b in bases if b[0] in formats]
        fmt, data = pool[int(rng.integers(len(pool)))]
        suffix = SUFFIX[fmt] if rng.random() < 0.8 else (".png", ".jpg", ".jpeg", ".webp")[int(rng.integers(4))]
        rel = f"mutants/{i:03d}-{kind}{suffix}"
        _write(root, rel, mutate(rng, data, fmt))
        cases.append(Case(rel, kind if suffix == SUFFIX[fmt] else f"{kind}+wrong-ext"))

    special = root / "special"
    special.mkdir()
    os.mkfifo(special / "fifo.png")
    cases.append(Case("special/fifo.png", "fifo"))
    for rel, kind, data in (
        ("special/empty.png", "empty", b""),
        ("special/text.png", "not-an-image", b"this is not an image\n" * int(rng.integers(1, 20))),
        ("special/random.jpg", "not-an-image", rng.bytes(int(rng.integers(1, 4096)))),
        ("special/other-format.png", "other-format", _other_format(rng)),
        ("special/animated.png", "animated", _animated(rng)),
        ("special/notes.txt", "unsupported-suffix", b"notes"),
        ("special/no-suffix", "unsupported-suffix", bases[0][1]),
        ("special/folder.png/inside.png", "valid", valid_image(rng, "PNG")),
    ):
        _write(root, rel, data)
        cases.append(Case(rel, kind))
    os.symlink(root / cases[0].relpath, special / "link-inside.png")
    os.symlink("/etc/hostname", special / "link-outside.png")
    os.symlink(special / "gone.png", special / "link-dangling.png")
    os.symlink(root / "valid", special / "link-folder")
    cases += [Case("special/link-inside.png", "symlink"), Case("special/link-outside.png", "symlink"),
              Case("special/link-dangling.png", "symlink"), Case("special/link-folder", "symlink")]
    with open(os.fsencode(special) + b"/bad-\xff-name.png", "wb") as fh:
        fh.write(bases[0][1])
    cases.append(Case("special/bad-\\xff-name.png", "non-utf8-name"))
    if big_side:
        img = Image.new("L", (big_side, big_side), 128)     # decodes to big_side^2 bytes; compresses to little
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        _write(root, "special/big.png", buf.getvalue())
        cases.append(Case("special/big.png", "big"))
    return sorted(cases, key=lambda c: c.relpath)


# ---------------------------------------------------------------- what a run may not change

def display_rel(rel: str) -> str:
    """A relative path as the manifest shows it: undecodable bytes as backslash escapes."""
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


def _walk(root: str | Path) -> dict[str, bytes]:
    """display relpath -> full path (bytes) of every file, link and special file under root; links not followed."""
    root = os.fsencode(Path(root))
    found = {}
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, name)
            found[os.path.relpath(full, root).decode("utf-8", "backslashreplace")] = full
    return found


def entries(root: str | Path) -> set[str]:
    """Every entry the data gate must account for, as display relpaths (the manifest's relpath column)."""
    return set(_walk(root))


def snapshot(root: str | Path) -> dict[str, str]:
    """display relpath -> sha256 of a regular file, 'link -> target', or the mode of a special file (never opened)."""
    out = {}
    for rel, full in _walk(root).items():
        st = os.lstat(full)
        if os.path.islink(full):
            out[rel] = f"link -> {os.readlink(full)!r}"
        elif not os.path.isfile(full):
            out[rel] = f"special {st.st_mode:o}"
        else:
            with open(full, "rb") as fh:
                out[rel] = hashlib.sha256(fh.read()).hexdigest()
    return out
