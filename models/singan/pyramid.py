"""The scale pyramid: sizes from the image shape (official adjust_scales2image), resizing between scales."""

import math

import torch
import torch.nn.functional as F

from models.config import ConfigError, SinGANConfig

_EPS = 1e-6  # float slack so that 25.000000001 does not ceil to 26


def _ceil(x: float) -> int:
    return max(1, math.ceil(x - _EPS))


def scale_sizes(height: int, width: int, cfg: SinGANConfig) -> list[tuple[int, int]]:
    """(H, W) of every scale, coarsest first, finest last; the finest has max side <= max_size.

    As in the official code: the image is first shrunk so its long side is at most max_size; the number of
    scales is ceil(log_r(min_size / short side)) + 1 - ceil(log_r(max_size / long side)) (r = scale_factor,
    both measured on the original image); the exact factor is then adjusted so the coarsest short side is
    min_size. Non-square images keep their aspect ratio at every scale.
    """
    if height < 1 or width < 1:
        raise ConfigError(f"image: expected a non-empty image, got {height}x{width}")
    short, long_ = min(height, width), max(height, width)
    if short < cfg.min_size:
        raise ConfigError(f"singan.min_size: expected <= the image's short side ({short} px of {height}x{width}), "
                          f"got {cfg.min_size}")
    r0 = cfg.scale_factor
    s1 = min(cfg.max_size / long_, 1.0)
    top_h, top_w = _ceil(height * s1), _ceil(width * s1)
    num_scales = math.ceil(math.log(cfg.min_size / short, r0) - _EPS) + 1
    scale2stop = math.ceil(math.log(min(cfg.max_size, long_) / long_, r0) - _EPS)
    stop = max(num_scales - scale2stop, 0)
    top_short = min(top_h, top_w)
    if top_short < cfg.min_size:
        raise ConfigError(f"singan.max_size: shrinking {height}x{width} to a long side of {cfg.max_size} leaves a "
                          f"short side of {top_short} < min_size ({cfg.min_size}); expected a larger max_size, a "
                          f"smaller min_size or a less elongated image, got {cfg.max_size}")
    if stop == 0 or top_short <= cfg.min_size:
        return [(top_h, top_w)]
    r = (cfg.min_size / top_short) ** (1.0 / stop)
    return [(_ceil(top_h * r ** (stop - i)), _ceil(top_w * r ** (stop - i))) for i in range(stop + 1)]


def effective_scale_factor(sizes: list[tuple[int, int]]) -> float:
    """The factor actually used between consecutive scales (short side ratio, coarse / fine)."""
    if len(sizes) < 2:
        return 1.0
    return (min(sizes[0]) / min(sizes[-1])) ** (1.0 / (len(sizes) - 1))


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, H, W), bicubic; antialiased when shrinking (like the official imresize)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=shrinking)


def build_pyramid(image: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """(1, C, H, W) in [-1, 1] -> one real image per scale, coarsest first, each resized from the original."""
    return [resize(image, s).clamp(-1, 1) for s in sizes]


def sample_sizes(sizes: list[tuple[int, int]], scale_h: float = 1.0, scale_w: float = 1.0) -> list[tuple[int, int]]:
    """The pyramid of a sample scale_h x taller and scale_w x wider than the training image (any aspect ratio)."""
    if scale_h <= 0 or scale_w <= 0:
        raise ValueError(f"scale_h/scale_w: expected > 0, got {(scale_h, scale_w)}")
    return [(max(1, round(h * scale_h)), max(1, round(w * scale_w))) for h, w in sizes]
