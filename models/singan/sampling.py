"""Sampling through the pyramid: random samples at any size, the reconstruction, coarser/finer start scales."""

import torch

from models.singan.pyramid import resize, sample_sizes
from models.singan.state import SinGANState, draw_noise, rec_noise


@torch.no_grad()
def run_pyramid(state: SinGANState, *, stop: int | None = None, n: int = 1, start_scale: int = 0,
                sizes: list[tuple[int, int]] | None = None,
                generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
    """Apply G_0 .. G_{stop-1}; returns the (n, C, H, W) output of scale stop-1 (not upsampled).

    Scales below `start_scale` use the reconstruction noise (fixed at the coarsest, zeros elsewhere), the
    others fresh noise from `generator` (or one generator per sample): start_scale=0 gives fully random samples, start_scale=stop the
    deterministic reconstruction. Each scale's input is the previous output resized to its size.
    """
    stop = state.trained_scales if stop is None else stop
    sizes = sizes or state.sizes
    if not 1 <= stop <= state.trained_scales:
        raise ValueError(f"stop: expected 1..{state.trained_scales} (trained scales), got {stop}")
    if start_scale > 0 and sizes[:start_scale] != state.sizes[:start_scale]:
        raise ValueError("start_scale: the reconstruction noise exists only at the training size; "
                         f"expected start_scale=0 for a {sizes[-1]} sample, got {start_scale}")
    generator = generator or torch.Generator()
    c, dev = state.config.channels, state.device
    prev = torch.zeros((n, c, *sizes[0]), device=dev)
    x = prev
    for k in range(stop):
        prev = resize(x, sizes[k]) if k else prev
        z = rec_noise(state, k, n, sizes[k]) if k < start_scale else draw_noise(k, n, sizes[k], c, generator, dev)
        x = state.Gs[k](state.noise_amps[k] * z, prev)   # (n, C, H_k, W_k)
    return x


def reconstruct(state: SinGANState) -> torch.Tensor:
    """The reconstruction of the training image, (1, C, H, W); deterministic."""
    return run_pyramid(state, start_scale=state.trained_scales)


def sample(state: SinGANState, n: int, seed: int = 0, *, scale_h: float = 1.0, scale_w: float = 1.0,
           start_scale: int = 0, batch_size: int = 16) -> torch.Tensor:
    """n random samples (n, C, H', W') in [-1, 1]; sample i depends only on (seed, i), not on n or
    batch_size (up to float rounding of batched convs); the same call always gives the same images.

    scale_h/scale_w resize the whole pyramid (e.g. 1 x 2 gives a panorama, 2 x 2 a larger texture);
    start_scale > 0 keeps the training image's coarse structure (less variation); only at the training size.
    """
    if n < 1:
        raise ValueError(f"n: expected >= 1, got {n}")
    if not 0 <= start_scale < max(state.trained_scales, 1):
        raise ValueError(f"start_scale: expected 0..{state.trained_scales - 1}, got {start_scale}")
    sizes = sample_sizes(state.sizes, scale_h, scale_w)
    gens = [torch.Generator().manual_seed((seed * 1_000_003 + i) % 2**63) for i in range(n)]
    out = [run_pyramid(state, n=len(gens[i:i + batch_size]), start_scale=start_scale, sizes=sizes,
                       generator=gens[i:i + batch_size]) for i in range(0, n, batch_size)]
    return torch.cat(out).clamp(-1, 1)


def sample_at_size(state: SinGANState, n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """n random samples of exactly height x width (any aspect ratio)."""
    h, w = state.sizes[-1]
    x = sample(state, n, seed, scale_h=height / h, scale_w=width / w)
    return resize(x, (height, width)).clamp(-1, 1)
