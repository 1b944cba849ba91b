"""CNN discriminator of strided conv blocks, optionally residual; no batch norm (the gradient penalty is per sample)."""

import math

import torch
from torch import nn

from models.config import ModelConfig


class DownBlock(nn.Module):
    """Plain: one 4x4 stride-2 conv (DCGAN style). Residual: 3x3 conv, 4x4 stride-2 conv, avg-pooled 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int, residual: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_in, 3, padding=1) if residual else None
        self.conv2 = nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)
        self.act = nn.LeakyReLU(0.2)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(c_in, c_out, 1)) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv1(x)) if self.conv1 is not None else x
        h = self.act(self.conv2(h))                               # (B, c_out, H/2, W/2)
        if self.shortcut is not None:
            h = (h + self.shortcut(x)) / math.sqrt(2)
        return h


class Discriminator(nn.Module):
    """Downsamples to 4x4, then a linear critic; outputs one unbounded score per image."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        n_blocks = int(math.log2(c.resolution // 4))
        self.stem = nn.Conv2d(c.channels, c.d_channels, 3, padding=1)
        blocks, ch = [], c.d_channels
        for _ in range(n_blocks):
            out = min(ch * 2, c.d_max_channels)
            blocks.append(DownBlock(ch, out, c.d_residual))
            ch = out
        self.blocks = nn.Sequential(*blocks)
        self.act = nn.LeakyReLU(0.2)
        self.label = nn.Embedding(c.num_classes, ch) if c.num_classes else None
        self.head = nn.Linear(ch * 4 * 4, 1)
        self.features = ch

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.blocks(self.act(self.stem(x)))                   # (B, ch, 4, 4)
        out = self.head(h.flatten(1)).squeeze(1)                  # (B,)
        if self.label is not None and labels is not None:         # projection discriminator term
            out = out + (self.label(labels) * h.sum(dim=(2, 3))).sum(dim=1)
        return out
