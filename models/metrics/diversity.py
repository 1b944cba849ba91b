"""Weight-free mode-collapse signal: mean MS-SSIM over random pairs of generated images (lower = more diverse)."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from models.metrics.registry import MetricInputs, register_metric

# Wang et al. 2003 scale weights; small images use the first `scales` of them, renormalised to sum to 1.
MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
K1, K2, DATA_RANGE = 0.01, 0.03, 255.0


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]                         # (1, 1, size, size)


def window_and_scales(side: int) -> tuple[int, int]:
    """11x11 window and 5 scales need side >= 176; smaller images get a 7x7 (or side-sized) window and as many
    scales as keep the coarsest image at least one window wide: 32 px -> 7x7, 3 scales; 16 px -> 7x7, 2."""
    win = 11 if side >= 176 else min(7, side)
    scales = max(1, min(len(MS_WEIGHTS), int(math.floor(math.log2(side / win))) + 1))
    return win, scales


def ms_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a, b float64 (B, C, H, W) in [0, 255] -> (B,) MS-SSIM; channels averaged; cs and ssim clamped at 0."""
    win, scales = window_and_scales(min(a.shape[-2:]))
    w = torch.tensor(MS_WEIGHTS[:scales], dtype=torch.float64)
    w = w / w.sum()
    c = a.shape[1]
    kernel = _gaussian_window(win, 1.5).repeat(c, 1, 1, 1)               # (C, 1, win, win)
    c1, c2 = (K1 * DATA_RANGE) ** 2, (K2 * DATA_RANGE) ** 2
    values = []
    for s in range(scales):
        mu_a, mu_b = F.conv2d(a, kernel, groups=c), F.conv2d(b, kernel, groups=c)   # 'valid', as in the paper
        saa = F.conv2d(a * a, kernel, groups=c) - mu_a ** 2
        sbb = F.conv2d(b * b, kernel, groups=c) - mu_b ** 2
        sab = F.conv2d(a * b, kernel, groups=c) - mu_a * mu_b
        cs = ((2 * sab + c2) / (saa + sbb + c2)).mean(dim=(2, 3))         # (B, C)
        if s == scales - 1:
            lum = ((2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1)).mean(dim=(2, 3))
            values.append(torch.relu(lum * cs))
        else:
            values.append(torch.relu(cs))
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
    stacked = torch.stack(values)                                        # (scales, B, C)
    return torch.prod(stacked ** w[:, None, None], dim=0).mean(dim=1)    # (B,)


def mean_pairwise_msssim(images: np.ndarray, pairs: int = 1000, seed: int = 0, batch_size: int = 256) -> float:
    """uint8 (N, C, H, W) -> mean MS-SSIM over `pairs` random pairs (i != j); 1.0 means every sample is identical."""
    n = len(images)
    if n < 2:
        raise ValueError(f"msssim_diversity needs at least 2 generated images, got {n}")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, pairs)
    j = (i + rng.integers(1, n, pairs)) % n                              # never pairs an image with itself
    total = 0.0
    with torch.inference_mode():
        for s in range(0, pairs, batch_size):
            a = torch.from_numpy(images[i[s:s + batch_size]]).double()
            b = torch.from_numpy(images[j[s:s + batch_size]]).double()
            total += float(ms_ssim(a, b).sum())
    return total / pairs


@register_metric("msssim_diversity", higher_is_better={"msssim_diversity": False}, features=None)
def msssim_diversity(inputs: MetricInputs) -> dict[str, float]:
    return {"msssim_diversity": mean_pairwise_msssim(inputs.fake_images, inputs.config.diversity_pairs,
                                                     seed=inputs.seed)}
