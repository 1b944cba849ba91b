"""Image grids and deterministic sampling from a generator."""

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
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


def noise(n: int, z_dim: int, seed: int) -> torch.Tensor:
    """(n, z_dim) standard normal from a private generator: the same (n, z_dim, seed) always gives the same z."""
    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))


def check_truncation(psi: float) -> float:
    if not 0 < psi <= 1:                     # also refuses nan
        raise ValueError(f"truncation: expected a number in (0, 1] (1 = off), got {psi}")
    return psi


def truncate(z: torch.Tensor, psi: float) -> torch.Tensor:
    """The truncation trick by scaling toward the mean latent: z' = mean + psi (z - mean), mean = 0 for N(0, I).

    TransSRGAN's first layer is linear in z (to_tokens, and the label embedding multiplies z), so this is also
    StyleGAN's form, scaling the first latent (the token matrix) toward its mean over z. psi = 1 returns z itself:
    no truncation, bit for bit the samples without it.
    """
    check_truncation(psi)
    return z if psi == 1 else z * psi


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (B, D), (B, D), (T,) -> (B, T, D); t = 0 gives z0 and t = 1 gives z1 exactly.

    For Gaussian z, slerp keeps the norm near sqrt(D), where the generator was trained; a straight line between
    two samples passes through low-norm latents it has rarely seen (White, 2016).
    """
    cos = (F.normalize(z0, dim=1) * F.normalize(z1, dim=1)).sum(dim=1).clamp(-1.0, 1.0)   # (B,)
    omega = torch.arccos(cos)[:, None, None]                                              # (B, 1, 1)
    t = t[None, :, None]                                                                  # (1, T, 1)
    s = torch.sin(omega)
    parallel = s.abs() < 1e-6                                   # (anti)parallel pairs: a straight line instead
    w0 = torch.where(parallel, 1 - t, torch.sin((1 - t) * omega) / torch.where(parallel, 1.0, s))
    w1 = torch.where(parallel, t, torch.sin(t * omega) / torch.where(parallel, 1.0, s))
    out = w0 * z0[:, None] + w1 * z1[:, None]                                             # (B, T, D)
    out = torch.where(t == 0, z0[:, None], out)                 # the end points are the seeds' own z, whatever
    return torch.where(t == 1, z1[:, None], out)                # the round-off of the weights


@torch.no_grad()
def generate(G: nn.Module, z: torch.Tensor, labels: torch.Tensor | None = None,
             batch_size: int = 256) -> torch.Tensor:
    """G(z) in eval mode, in batches; the training mode is restored afterwards."""
    was_training = G.training
    G.eval()
    out = torch.cat([G(z[i:i + batch_size], None if labels is None else labels[i:i + batch_size])
                     for i in range(0, len(z), batch_size)])
    G.train(was_training)
    return out


def sample(G: nn.Module, n: int, seed: int, z_dim: int, num_classes: int = 0, batch_size: int = 256,
           truncation: float = 1.0) -> torch.Tensor:
    """The same (seed, n, truncation) gives the same images: z is drawn from a private generator, not the global
    RNG. Class-conditional generators cycle labels 0..num_classes-1."""
    z = truncate(noise(n, z_dim, seed), truncation)
    labels = torch.arange(n) % num_classes if num_classes else None
    return generate(G, z, labels, batch_size)


def interpolation_seeds(seed: int, rows: int) -> list[tuple[int, int]]:
    """The seed pair of each row of an interpolation grid: (seed, seed + 1), (seed + 2, seed + 3), ..."""
    return [(seed + 2 * i, seed + 2 * i + 1) for i in range(rows)]


def interpolate(G: nn.Module, rows: int, steps: int, seed: int, z_dim: int, num_classes: int = 0,
                truncation: float = 1.0, batch_size: int = 256) -> torch.Tensor:
    """(rows * steps, C, H, W), row-major: row i walks by slerp from the z of seed a to the z of seed b
    (interpolation_seeds), so its first and last images are sample(G, 1, a) and sample(G, 1, b), truncated
    alike. Class-conditional generators use label 0 throughout, as sample(G, 1, ...) does."""
    if steps < 2:
        raise ValueError(f"steps: expected at least 2, got {steps}")
    pairs = interpolation_seeds(seed, rows)
    z0 = torch.cat([noise(1, z_dim, a) for a, _ in pairs])                     # (rows, z_dim)
    z1 = torch.cat([noise(1, z_dim, b) for _, b in pairs])
    z = slerp(z0, z1, torch.linspace(0.0, 1.0, steps)).reshape(rows * steps, z_dim)
    labels = torch.zeros(len(z), dtype=torch.long) if num_classes else None
    return generate(G, truncate(z, truncation), labels, batch_size)
