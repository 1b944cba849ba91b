"""Models: TransSRGAN, the DCGAN baseline, losses and the single-step GAN math (torch and numpy only)."""

from torch import nn

from models.config import Config, ModelConfig
from models.dcgan import DCGANGenerator
from models.discriminator import Discriminator
from models.transsrgan import TransSRGenerator, init_weights

GENERATORS = {"transsrgan": TransSRGenerator, "dcgan": DCGANGenerator}


def build_generator(config: ModelConfig) -> nn.Module:
    config.validate()
    g = GENERATORS[config.arch](config)
    init_weights(g)
    return g


def build_discriminator(config: ModelConfig) -> nn.Module:
    config.validate()
    d = Discriminator(config)
    init_weights(d)
    return d


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["Config", "ModelConfig", "build_generator", "build_discriminator", "count_params"]
