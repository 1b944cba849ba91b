"""SinGANState: the trained pyramid (per-scale G and D, noise amplitudes, the fixed reconstruction noise)."""

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from models.config import SinGANConfig
from models.singan.pyramid import build_pyramid, resize, scale_sizes


@dataclass
class SinGANState:
    config: SinGANConfig
    image: torch.Tensor                   # (1, C, H, W) in [-1, 1]: the finest real (long side <= max_size)
    sizes: list[tuple[int, int]]          # (H, W) per scale, coarsest first
    z_rec: torch.Tensor                   # (1, 1, h0, w0): the fixed reconstruction noise at the coarsest scale
    Gs: nn.ModuleList = field(default_factory=nn.ModuleList)   # trained scales, frozen, coarsest first
    Ds: nn.ModuleList = field(default_factory=nn.ModuleList)
    noise_amps: list[float] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    reals: list[torch.Tensor] = field(default_factory=list)    # derived from image; not checkpointed

    def __post_init__(self) -> None:
        if not self.reals:
            self.reals = build_pyramid(self.image, self.sizes)

    @property
    def num_scales(self) -> int:
        return len(self.sizes)

    @property
    def trained_scales(self) -> int:
        return len(self.Gs)

    @property
    def done(self) -> bool:
        return self.trained_scales == self.num_scales

    @property
    def device(self) -> torch.device:
        return self.image.device

    def iters_at(self, scale: int) -> int:
        """Training iterations of scale `scale` (config.iters_at for this pyramid's number of scales)."""
        return self.config.iters_at(scale, self.num_scales)

    def iters_before(self, scale: int) -> int:
        """Iterations of all scales coarser than `scale`: a global step is iters_before(n) + the iteration."""
        return sum(self.iters_at(m) for m in range(scale))

    @property
    def total_iters(self) -> int:
        return self.iters_before(self.num_scales)

    def summary(self) -> dict[str, Any]:
        return {"num_scales": self.num_scales, "trained_scales": self.trained_scales,
                "sizes": [list(s) for s in self.sizes], "noise_amps": list(self.noise_amps),
                "channels_per_scale": [self.config.channels_at(n) for n in range(self.num_scales)],
                "iters_per_scale": [self.iters_at(n) for n in range(self.num_scales)]}


def resolve_device(cfg: SinGANConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("singan.device: expected an available CUDA device, got 'cuda' (torch sees none)")
    return torch.device(cfg.device)


def init_state(image: torch.Tensor, cfg: SinGANConfig) -> SinGANState:
    """A fresh, untrained pyramid for `image` (1, C, H, W) in [-1, 1]; sizes follow from its shape."""
    cfg.validate()
    if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != cfg.channels:
        raise ValueError(f"image: expected shape (1, {cfg.channels}, H, W) (singan.channels={cfg.channels}), "
                         f"got {tuple(image.shape)}")
    device = resolve_device(cfg)
    sizes = scale_sizes(image.shape[2], image.shape[3], cfg)
    finest = resize(image.float(), sizes[-1]).clamp(-1, 1).to(device)
    g = torch.Generator().manual_seed(cfg.seed)
    z_rec = torch.randn((1, 1, *sizes[0]), generator=g).to(device)
    return SinGANState(config=cfg, image=finest, sizes=sizes, z_rec=z_rec)


def draw_noise(scale: int, n: int, size: tuple[int, int], channels: int,
               generator: torch.Generator | list[torch.Generator], device: torch.device) -> torch.Tensor:
    """(n, C, H, W) standard normal; at the coarsest scale one channel replicated to C (official code).

    A list of n generators draws each sample from its own stream (samples independent of batching).
    """
    c = 1 if scale == 0 else channels
    if isinstance(generator, list):
        z = torch.cat([torch.randn((1, c, *size), generator=g) for g in generator]).to(device)
    else:
        z = torch.randn((n, c, *size), generator=generator).to(device)
    return z.expand(n, channels, *size) if c != channels else z


def rec_noise(state: SinGANState, scale: int, n: int = 1, size: tuple[int, int] | None = None) -> torch.Tensor:
    """The reconstruction noise: the fixed z_rec at the coarsest scale, zeros elsewhere."""
    c = state.config.channels
    if scale == 0:
        return state.z_rec.expand(n, c, *state.z_rec.shape[-2:])
    h, w = size or state.sizes[scale]
    return torch.zeros((n, c, h, w), device=state.device)
