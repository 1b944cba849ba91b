"""Models: TransSRGAN, the DCGAN baseline, losses and the single-step GAN math (torch and numpy only).

torch is imported lazily, so `from models.config import ...` (the CLI, flow parameters) stays cheap.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from models.config import ModelConfig

__all__ = ["build_generator", "build_discriminator", "count_params"]


def build_generator(config: "ModelConfig") -> "nn.Module":
    from models.dcgan import DCGANGenerator
    from models.transsrgan import TransSRGenerator, init_icnr, init_weights

    config.validate()
    g = {"transsrgan": TransSRGenerator, "dcgan": DCGANGenerator}[config.arch](config)
    init_weights(g)
    if config.icnr:          # after init_weights, so icnr=False draws exactly the random numbers it always did
        init_icnr(g)
    return g


def build_discriminator(config: "ModelConfig") -> "nn.Module":
    from models.discriminator import Discriminator
    from models.transsrgan import init_weights

    config.validate()
    d = Discriminator(config)
    init_weights(d)
    return d


def count_params(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())
