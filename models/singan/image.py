"""Loading the one training image: a file, a PIL image, an array, or a bundled scikit-image photo.

Conversion (documented in docs/singan.md):
- Transparency (RGBA, LA, P/PA with a transparent colour) is composited on a white background.
- 16-bit and 32-bit integer images are scaled by their maximum to 0..255.
- channels=3: grayscale is replicated to three identical channels, so every SinGAN is RGB and SIFID's
  Inception features see the input they expect; channels=1: colour is converted to luminance (PIL "L",
  ITU-R 601-2) and kept single-channel.
The result is a float tensor (1, C, H, W) in [-1, 1] at the file's own size; the pyramid resizes it.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.config import BUNDLED, SKIMAGE_PREFIX
from models.config import DEFAULT_SINGAN_IMAGE as DEFAULT_IMAGE


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Any PIL mode -> 'RGB' (channels=3) or 'L' (channels=1) as documented above."""
    if channels not in (1, 3):
        raise ValueError(f"channels: expected 1 or 3, got {channels}")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
    elif img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() or 1.0
        img = Image.fromarray((arr * (255.0 / hi)).round().astype(np.uint8))
    return img.convert("RGB" if channels == 3 else "L")


def pil_to_tensor(img: Image.Image, channels: int) -> torch.Tensor:
    """PIL image -> (1, C, H, W) float in [-1, 1]."""
    arr = np.asarray(to_mode(img, channels), dtype=np.float32)          # (H, W, 3) or (H, W)
    arr = arr[..., None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())[None] / 127.5 - 1.0


def array_to_tensor(array: np.ndarray, channels: int) -> torch.Tensor:
    """uint8 (H, W), (H, W, 1|3|4) -> (1, C, H, W) in [-1, 1], with the same conversions as files."""
    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise ValueError(f"image: expected a uint8 array, got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ValueError(f"image: expected an (H, W), (H, W, 3) or (H, W, 4) array, got shape {a.shape}")
    return pil_to_tensor(Image.fromarray(a), channels)


def load_bundled(name: str) -> np.ndarray:
    """A scikit-image bundled photo as uint8 (H, W[, 3]); only names shipped in the wheel (offline)."""
    if name not in BUNDLED:
        raise ValueError(f"image: expected one of {['skimage:' + b for b in BUNDLED]} or a file path, "
                         f"got 'skimage:{name}'")
    import skimage.data  # heavy; only when asked for

    return getattr(skimage.data, name)()


def load_image(source: str | Path | Image.Image | np.ndarray = DEFAULT_IMAGE, channels: int = 3) -> torch.Tensor:
    """The training image as (1, C, H, W) in [-1, 1]; source is a path, 'skimage:NAME', a PIL image or an array."""
    if isinstance(source, Image.Image):
        return pil_to_tensor(source, channels)
    if isinstance(source, np.ndarray):
        return array_to_tensor(source, channels)
    text = str(source)
    if text.startswith(SKIMAGE_PREFIX):
        return array_to_tensor(load_bundled(text[len(SKIMAGE_PREFIX):]), channels)
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"singan.image: file not found: {path} (or use 'skimage:NAME', e.g. {DEFAULT_IMAGE})")
    try:
        with Image.open(path) as img:
            img.load()
            return pil_to_tensor(img, channels)
    except OSError as exc:
        raise OSError(f"singan.image: cannot decode {path}: {exc}") from exc


def image_name(source: str | Path) -> str:
    """A short stable name for the image (MLflow tags, one registered version per image)."""
    text = str(source)
    return text[len(SKIMAGE_PREFIX):] if text.startswith(SKIMAGE_PREFIX) else Path(text).stem
