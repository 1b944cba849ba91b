"""Image grids and deterministic sampling from a generator."""

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from models.files import atomic_path


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C)."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 (N, H, W, C) -> one uint8 (rows*H', cols*W', C) mosaic with `pad` px of black between tiles."""
    n, h, w, c = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / nrow))
    out = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = images[i]
    return out


def save_png(array: np.ndarray, path: str | Path, scale: int = 1) -> Path:
    """uint8 (H, W, C) -> a PNG at `path`, each pixel `scale` x `scale`; written atomically (models.files)."""
    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")          # the temporary name has no .png suffix to infer it from
    return Path(path)


@torch.no_grad()
def sample(G: nn.Module, n: int, seed: int, z_dim: int, num_classes: int = 0, batch_size: int = 256) -> torch.Tensor:
    """The same (seed, n) gives the same images: z is drawn from a private generator, not the global RNG."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, z_dim, generator=g)
    labels = torch.arange(n) % num_classes if num_classes else None
    was_training = G.training
    G.eval()
    out = torch.cat([G(z[i:i + batch_size], None if labels is None else labels[i:i + batch_size])
                     for i in range(0, n, batch_size)])
    G.train(was_training)
    return out
