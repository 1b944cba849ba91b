"""DCGAN baseline generator (transposed convs); it shares the discriminator, losses and trainer with TransSRGAN."""

import math

import torch
from torch import nn

from models.config import ModelConfig
from models.transsrgan import make_norm


class DCGANGenerator(nn.Module):
    """z -> 4x4 feature map -> ConvTranspose(4, stride 2) blocks -> tanh image (Radford et al., 2016)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.label = nn.Embedding(c.num_classes, c.z_dim) if c.num_classes else None
        ch = c.dcgan_channels
        self.ch0 = ch
        self.project = nn.Linear(c.z_dim, ch * 4 * 4)
        self.norm0 = make_norm(c.g_norm, ch)
        layers: list[nn.Module] = []
        for _ in range(int(math.log2(c.resolution // 4))):
            out = max(32, ch // 2)
            layers += [nn.ConvTranspose2d(ch, out, 4, stride=2, padding=1), make_norm(c.g_norm, out), nn.ReLU()]
            ch = out
        self.body = nn.Sequential(*layers)
        self.to_image = nn.Conv2d(ch, c.channels, 3, padding=1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.label is not None and labels is not None:
            z = z * self.label(labels)
        x = self.project(z).view(z.shape[0], self.ch0, 4, 4)     # (B, ch, 4, 4)
        x = self.body(torch.relu(self.norm0(x)))                  # (B, c, res, res)
        return torch.tanh(self.to_image(x))
