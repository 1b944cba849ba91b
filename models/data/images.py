"""Users' own images: a folder (recursive) or a validated manifest, center-cropped and resized to the training size."""

import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def find_images(root: str | Path) -> list[Path]:
    """Image files under root, sorted; symlinks are not followed (see the data gate for the report)."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data.source: path does not exist: {root}")
    if root.is_file():
        return [root]
    found = []
    for dirpath, _dirs, files in os.walk(root, followlinks=False):
        for name in files:
            p = Path(dirpath) / name
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_symlink():
                found.append(p)
    return sorted(found)


def to_array(img: Image.Image, resolution: int, channels: int) -> np.ndarray:
    """Center crop to a square, resize, convert; returns uint8 (channels, resolution, resolution)."""
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


def _load_one(args: tuple[str, int, int]) -> np.ndarray:
    path, resolution, channels = args
    with Image.open(path) as img:
        img.draft("RGB" if channels == 3 else "L", (resolution * 2, resolution * 2))
        return to_array(img, resolution, channels)


def load_paths(paths: Iterable[str | Path], resolution: int, channels: int, workers: int = 0) -> np.ndarray:
    """uint8 (N, channels, res, res); decoding errors name the file."""
    paths = [str(p) for p in paths]
    jobs = [(p, resolution, channels) for p in paths]
    workers = workers or min(os.cpu_count() or 1, 8)
    try:
        if workers > 1 and len(jobs) > 256:
            with ProcessPoolExecutor(workers) as pool:
                arrays = list(pool.map(_load_one, jobs, chunksize=64))
        else:
            arrays = [_load_one(j) for j in jobs]
    except OSError as exc:
        raise OSError(f"data: cannot decode an image ({exc}); run `transsrgan validate` to quarantine bad files") from exc
    if not arrays:
        return np.zeros((0, channels, resolution, resolution), np.uint8)
    return np.stack(arrays)
