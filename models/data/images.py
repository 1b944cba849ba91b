"""Users' own images: a folder (recursive) or a validated manifest, center-cropped and resized to the training size."""

import os
import stat
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
EXIF_ORIENTATION = 0x0112
TRANSPOSED = (5, 6, 7, 8)     # EXIF orientations that rotate by 90 degrees: width and height swap
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")   # one channel once alpha is composited


class ImageReadError(ValueError):
    """A file that cannot be read as an image; the message starts with its path and gives the reason."""


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as the image is meant to be seen: after its EXIF orientation, as phones save photos."""
    w, h = img.size
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block means no orientation, as in every viewer
        orientation = 1
    return (h, w) if orientation in TRANSPOSED else (w, h)


def upright(img: Image.Image) -> Image.Image:
    """The image turned by its EXIF orientation (a no-op without one); the gate, training and evaluation agree."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - see oriented_size
        return img


def channels_of(mode: str) -> int:
    """1 for gray modes (with or without alpha, any bit depth), else 3: how evaluation infers the fakes' format."""
    return 1 if mode in GRAY_MODES else 3


def is_regular_file(path: str | Path) -> bool:
    """True for a regular file (symlinks followed); FIFOs, sockets and devices are never opened (a FIFO blocks)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def find_images(root: str | Path) -> list[Path]:
    """Regular image files under root, sorted; symlinks are not followed (the data gate reports what is left out)."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data.source: path does not exist: {root}")
    if root.is_file():
        return [root]
    found = []
    for dirpath, _dirs, files in os.walk(root, followlinks=False):
        for name in files:
            p = Path(dirpath) / name
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_symlink() and is_regular_file(p):
                found.append(p)
    return sorted(found)


def to_array(img: Image.Image, resolution: int, channels: int) -> np.ndarray:
    """Upright (EXIF orientation), center crop to a square, resize, convert; uint8 (channels, resolution, resolution)."""
    img = upright(img)
    if img.mode in ("RGBA", "LA", "P", "PA"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))  # alpha composited on white, documented
        img = Image.alpha_composite(bg, img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() or 1.0
        img = Image.fromarray((arr * (255.0 / hi)).astype(np.uint8))
    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    img.draft(img.mode, (resolution, resolution))
    img = img.resize((resolution, resolution), Image.BICUBIC, reducing_gap=3.0)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def _load_one(args: tuple[str, int, int]) -> np.ndarray | str:
    """uint8 (channels, res, res), or the reason the file is not an image ("code: detail"); never raises."""
    path, resolution, channels = args
    if not is_regular_file(path):
        return "not-a-file: missing, or a device, socket or pipe (not read)"
    try:
        with Image.open(path) as img:
            img.draft("RGB" if channels == 3 else "L", (resolution * 2, resolution * 2))
            return to_array(img, resolution, channels)
    except Image.DecompressionBombError as exc:
        return f"too-large: {exc}"
    except Image.UnidentifiedImageError:
        return "decode-error: not an image PIL recognises (UnidentifiedImageError)"
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data; all mean "does not decode"
        return f"decode-error: {type(exc).__name__}: {exc}"


def load_each(paths: list[str], resolution: int, channels: int, workers: int = 0) -> list[np.ndarray | str]:
    """Per path: uint8 (channels, res, res), or why the file is not an image ("code: detail"); never raises."""
    jobs = [(p, resolution, channels) for p in paths]
    workers = workers or min(os.cpu_count() or 1, 8)
    if workers > 1 and len(jobs) > 256:
        with ProcessPoolExecutor(workers) as pool:
            return list(pool.map(_load_one, jobs, chunksize=64))
    return [_load_one(j) for j in jobs]


def load_paths(paths: Iterable[str | Path], resolution: int, channels: int, workers: int = 0) -> np.ndarray:
    """uint8 (N, channels, res, res) of files that were checked before (a manifest); ImageReadError names a bad one."""
    paths = [str(p) for p in paths]
    arrays = load_each(paths, resolution, channels, workers)
    for path, arr in zip(paths, arrays):
        if isinstance(arr, str):
            raise ImageReadError(f"{path}: {arr}; run `transsrgan validate` on its folder to quarantine bad files")
    if not arrays:
        return np.zeros((0, channels, resolution, resolution), np.uint8)
    return np.stack(arrays)
