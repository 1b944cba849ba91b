"""TransSRGAN generator: latent tokens -> Transformer encoder -> latent feature matrix -> PixelShuffle upsampler."""

import math

import torch
from torch import nn

from models.config import ModelConfig


def norm_groups(channels: int, most: int = 8) -> int:
    """The largest divisor of `channels` up to `most`: 8 for every multiple of 8 and `channels` below 8 (as
    min(8, channels) always gave), and a divisor rather than an error for other widths (e.g. a cost-matched DCGAN)."""
    return max(g for g in range(1, min(most, channels) + 1) if channels % g == 0)


def make_norm(kind: str, channels: int) -> nn.Module:
    """Per-sample norms only: batch statistics would make a sharded batch differ from the whole one."""
    if kind == "group":
        return nn.GroupNorm(norm_groups(channels), channels)
    if kind == "instance":
        return nn.GroupNorm(channels, channels)
    return nn.Identity()


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.heads
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))                      # (B, nh, T, T)
        y = att.softmax(dim=-1) @ v                                                   # (B, nh, T, hs)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class EncoderBlock(nn.Module):
    """Pre-norm Transformer encoder block: x + MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class UpsampleBlock(nn.Module):
    """Super-resolution style x2: conv to 4*c_out channels, PixelShuffle(2), norm, activation."""

    def __init__(self, c_in: int, c_out: int, norm: str):
        super().__init__()
        self.conv = nn.Conv2d(c_in, 4 * c_out, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.norm = make_norm(norm, c_out)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.shuffle(self.conv(x))))  # (B, c_out, 2H, 2W)


class TransSRGenerator(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.grid = c.token_grid
        self.tokens = c.token_grid * c.token_grid
        self.label = nn.Embedding(c.num_classes, c.z_dim) if c.num_classes else None
        self.to_tokens = nn.Linear(c.z_dim, self.tokens * c.dim)
        self.pos = nn.Parameter(torch.zeros(1, self.tokens, c.dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*[EncoderBlock(c.dim, c.heads, c.mlp_ratio) for _ in range(c.depth)])
        self.ln_f = nn.LayerNorm(c.dim)
        ups, ch = [], c.dim
        for i in range(c.upsample_blocks):
            out = max(32, c.g_channels >> i)
            ups.append(UpsampleBlock(ch, out, c.g_norm))
            ch = out
        self.upsample = nn.Sequential(*ups)
        self.to_image = nn.Conv2d(ch, c.channels, 3, padding=1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.label is not None and labels is not None:
            z = z * self.label(labels)
        B = z.shape[0]
        x = self.to_tokens(z).view(B, self.tokens, -1) + self.pos          # (B, h*w, d)
        x = self.ln_f(self.blocks(x))                                       # (B, h*w, d)
        x = x.transpose(1, 2).reshape(B, -1, self.grid, self.grid)          # (B, d, h, w) latent feature matrix
        x = self.upsample(x)                                                # (B, c, res, res)
        return torch.tanh(self.to_image(x))                                 # (B, channels, res, res) in [-1, 1]


def icnr_(conv: nn.Conv2d, scale: int = 2, std: float = 0.02) -> None:
    """ICNR (Aitken et al., 2017): draw one sub-kernel per output channel of PixelShuffle(scale) and repeat it for
    all scale^2 sub-pixels, so the shuffled output starts as nearest-neighbour upsampling: no checkerboard at step 0.

    PixelShuffle sends input channel c * scale^2 + k to sub-pixel k of output channel c, hence repeat_interleave.
    """
    r2 = scale * scale
    out, c_in, kh, kw = conv.weight.shape                                   # (r2 * c_out, c_in, k, k)
    sub = torch.empty(out // r2, c_in, kh, kw)
    nn.init.normal_(sub, 0.0, std)
    with torch.no_grad():
        conv.weight.copy_(sub.repeat_interleave(r2, dim=0))
        if conv.bias is not None:
            conv.bias.copy_(conv.bias.view(-1, r2)[:, :1].expand(-1, r2).reshape(-1))


def init_icnr(module: nn.Module) -> None:
    """ICNR for the conv of every UpsampleBlock in `module` (a no-op for generators without PixelShuffle)."""
    for m in module.modules():
        if isinstance(m, UpsampleBlock):
            icnr_(m.conv, scale=m.shuffle.upscale_factor)


def init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
