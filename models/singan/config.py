"""SinGANConfig: the paper's reference settings (Shaham et al. 2019, official code defaults) plus tiny/demo presets."""

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from models.config import ConfigError, load_config_file

ADVERSARIAL = ("wgan", "lsgan")
PENALTIES = ("gp", "zero_gp", "none")
DEFAULT_IMAGE = "skimage:hubble_deep_field"


def _check(cond: bool, name: str, expected: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"singan.{name}: expected {expected}, got {value!r}")


@dataclass
class SinGANConfig:
    preset: str = "full"
    # The training image: a file path, or "skimage:NAME" for one of scikit-image's bundled photos.
    image: str = DEFAULT_IMAGE
    channels: int = 3                 # 3 = RGB (grayscale inputs are replicated), 1 = luminance
    # The pyramid (official adjust_scales2image): the finest side <= max_size, the coarsest short side = min_size.
    scale_factor: float = 0.75        # nominal; the exact factor is adjusted so the coarsest side hits min_size
    min_size: int = 25
    max_size: int = 250
    # Per-scale G and D: num_layers 3x3 convs (conv-BN-LeakyReLU(0.2) blocks, then the output conv).
    num_layers: int = 5
    kernel_size: int = 3
    channels_base: int = 32           # width at the coarsest scales ...
    channels_double_every: int = 4    # ... doubled every this many scales ...
    channels_max: int = 128           # ... capped here
    # Losses
    adversarial: Literal["wgan", "lsgan"] = "wgan"
    penalty: Literal["gp", "zero_gp", "none"] = "gp"
    penalty_weight: float = 0.1       # lambda_grad of the official code
    alpha: float = 10.0               # weight of the reconstruction MSE
    noise_amp_factor: float = 0.1     # noise_amp_n = this x RMSE(real_n, upsampled reconstruction); 1 at the coarsest
    # Optimisation (Adam per scale, fresh at every scale)
    iters_per_scale: int = 2000
    d_steps: int = 3
    g_steps: int = 3
    lr_g: float = 5e-4
    lr_d: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.999)
    lr_decay_at: float = 0.8          # the learning rate is multiplied by lr_gamma after this fraction of iterations
    lr_gamma: float = 0.1
    # Run
    seed: int = 0
    log_every: int = 100              # iterations between progress lines / on_log calls (0 = only a scale's end)
    threads: int = 0                  # torch threads; 0 = leave torch's default
    device: Literal["cpu", "cuda", "auto"] = "cpu"

    def validate(self) -> "SinGANConfig":
        _check(self.preset in PRESETS, "preset", f"one of {sorted(PRESETS)}", self.preset)
        _check(bool(self.image), "image", "a file path or 'skimage:NAME'", self.image)
        _check(self.channels in (1, 3), "channels", "1 (luminance) or 3 (RGB)", self.channels)
        _check(0 < self.scale_factor < 1, "scale_factor", "in (0, 1)", self.scale_factor)
        _check(self.kernel_size >= 1 and self.kernel_size % 2 == 1, "kernel_size", "an odd number >= 1",
               self.kernel_size)
        _check(self.num_layers >= 2, "num_layers", ">= 2 (head and output conv)", self.num_layers)
        shrink = self.receptive_pad * 2
        _check(self.min_size > shrink, "min_size",
               f"> {shrink} (the discriminator's valid convs shrink each side by 2 x num_layers x kernel_size//2)",
               self.min_size)
        _check(self.max_size >= self.min_size, "max_size", f">= min_size ({self.min_size})", self.max_size)
        _check(self.channels_base >= 1, "channels_base", ">= 1", self.channels_base)
        _check(self.channels_max >= self.channels_base, "channels_max", f">= channels_base ({self.channels_base})",
               self.channels_max)
        _check(self.channels_double_every >= 1, "channels_double_every", ">= 1", self.channels_double_every)
        _check(self.adversarial in ADVERSARIAL, "adversarial", f"one of {ADVERSARIAL}", self.adversarial)
        _check(self.penalty in PENALTIES, "penalty", f"one of {PENALTIES}", self.penalty)
        _check(self.penalty_weight >= 0, "penalty_weight", ">= 0", self.penalty_weight)
        _check(self.alpha >= 0, "alpha", ">= 0", self.alpha)
        _check(self.noise_amp_factor >= 0, "noise_amp_factor", ">= 0", self.noise_amp_factor)
        _check(self.iters_per_scale >= 1, "iters_per_scale", ">= 1", self.iters_per_scale)
        _check(self.d_steps >= 1, "d_steps", ">= 1", self.d_steps)
        _check(self.g_steps >= 1, "g_steps", ">= 1", self.g_steps)
        _check(self.lr_g > 0, "lr_g", "> 0", self.lr_g)
        _check(self.lr_d > 0, "lr_d", "> 0", self.lr_d)
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", "two numbers in [0, 1)",
               self.betas)
        _check(0 < self.lr_decay_at <= 1, "lr_decay_at", "in (0, 1]", self.lr_decay_at)
        _check(0 < self.lr_gamma <= 1, "lr_gamma", "in (0, 1]", self.lr_gamma)
        _check(self.log_every >= 0, "log_every", ">= 0", self.log_every)
        _check(self.threads >= 0, "threads", ">= 0", self.threads)
        _check(self.device in ("cpu", "cuda", "auto"), "device", "cpu, cuda or auto", self.device)
        return self

    @property
    def receptive_pad(self) -> int:
        """Zero padding the generator adds around its input: its valid convs remove exactly this much per side."""
        return self.num_layers * (self.kernel_size // 2)

    def channels_at(self, scale: int) -> int:
        """Width of scale `scale` (0 = coarsest): 32 doubled every 4 scales, capped at 128."""
        return min(self.channels_base * 2 ** (scale // self.channels_double_every), self.channels_max)

    @property
    def decay_iter(self) -> int:
        """The iteration after which the learning rate is multiplied by lr_gamma (1600 of 2000)."""
        return int(round(self.lr_decay_at * self.iters_per_scale))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def flat(self) -> dict[str, Any]:
        """Keys prefixed 'singan.' for MLflow params."""
        return {f"singan.{k}": v for k, v in self.to_dict().items()}


# Presets list what differs from the reference settings (the dataclass defaults = "full").
PRESETS: dict[str, dict[str, Any]] = {
    # Seconds, for tests: a 3-scale pyramid of ~12..20 px, 2 iterations per scale.
    "tiny": {"min_size": 12, "max_size": 20, "channels_base": 8, "channels_max": 16, "channels_double_every": 2,
             "iters_per_scale": 2, "log_every": 1},
    # The README's SinGAN job: max side 128 and fewer iterations; under 10 minutes on 2 CPU cores (docs/singan.md).
    # Deviations from the paper, for time: widths stay 32 (channels_max) and 100 iterations per scale.
    "demo": {"max_size": 128, "channels_max": 32, "iters_per_scale": 100, "log_every": 25},
    "full": {},
}


def singan_config_from_dict(values: dict[str, Any]) -> SinGANConfig:
    """Rebuild from to_dict() output (checkpoints, MLflow); unknown keys are an error naming the key."""
    cfg = SinGANConfig()
    _merge(cfg, values)
    return cfg.validate()


def resolve_singan_config(preset: str = "demo", overrides: dict[str, Any] | None = None,
                          config_file: str | Path | None = None) -> SinGANConfig:
    """Preset, then a JSON/TOML file (flat, or under a [singan] table), then explicit overrides."""
    if preset not in PRESETS:
        raise ConfigError(f"singan.preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    cfg = SinGANConfig(preset=preset)
    _merge(cfg, PRESETS[preset])
    if config_file:
        values = load_config_file(config_file)
        _merge(cfg, values.get("singan", values))
    if overrides:
        _merge(cfg, {k.removeprefix("singan."): v for k, v in overrides.items()})
    return cfg.validate()


def _merge(cfg: SinGANConfig, values: dict[str, Any]) -> None:
    known = {f.name for f in fields(cfg)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"singan.{key}: unknown field; expected one of {sorted(known)}")
        if isinstance(getattr(cfg, key), tuple) and isinstance(value, list):
            value = tuple(value)
        setattr(cfg, key, value)
