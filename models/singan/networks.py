"""Per-scale generator and discriminator: fully convolutional stacks of 3x3 conv-BN-LeakyReLU(0.2) blocks."""

import torch
import torch.nn.functional as F
from torch import nn

from models.config import SinGANConfig


class ConvBlock(nn.Sequential):
    """conv(k x k, no padding) -> BatchNorm -> LeakyReLU(0.2)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int):
        super().__init__(nn.Conv2d(c_in, c_out, kernel_size), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2))


def _body(c_img: int, width: int, cfg: SinGANConfig) -> nn.Sequential:
    # num_layers - 1 blocks; the caller adds the output conv (as the official code: head, 3 body blocks, tail).
    blocks = [ConvBlock(c_img, width, cfg.kernel_size)]
    blocks += [ConvBlock(width, width, cfg.kernel_size) for _ in range(cfg.num_layers - 2)]
    return nn.Sequential(*blocks)


def init_weights(module: nn.Module) -> None:
    """The official init: conv weights N(0, 0.02), BN weights N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class ScaleGenerator(nn.Module):
    """G_n(z, prev) = tanh(convs(pad(z + prev))) + prev, where z is already scaled by noise_amp.

    The input is zero-padded once by num_layers x kernel_size//2 and the convs are unpadded, so the output
    has the input's size and works at any size (the official padd_size=0 layout).
    """

    def __init__(self, cfg: SinGANConfig, width: int):
        super().__init__()
        self.pad = cfg.receptive_pad
        self.body = _body(cfg.channels, width, cfg)
        self.out = nn.Conv2d(width, cfg.channels, cfg.kernel_size)
        init_weights(self)

    def forward(self, z: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        x = F.pad(z + prev, [self.pad] * 4)          # (B, C, H+2p, W+2p)
        x = self.body(x)                              # (B, width, H+2, W+2)
        return torch.tanh(self.out(x)) + prev         # (B, C, H, W)


class ScaleDiscriminator(nn.Module):
    """Markovian patch critic: (B, C, H, W) -> (B, 1, H-2p, W-2p) scores, receptive field 11x11 at 5 layers."""

    def __init__(self, cfg: SinGANConfig, width: int):
        super().__init__()
        self.body = _body(cfg.channels, width, cfg)
        self.out = nn.Conv2d(width, 1, cfg.kernel_size)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


def build_scale(cfg: SinGANConfig, scale: int) -> tuple[ScaleGenerator, ScaleDiscriminator]:
    width = cfg.channels_at(scale)
    return ScaleGenerator(cfg, width), ScaleDiscriminator(cfg, width)


def freeze(module: nn.Module) -> nn.Module:
    """A finished scale: eval mode (BatchNorm uses its running statistics) and no gradients."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
