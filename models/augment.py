"""Differentiable augmentation of every image the discriminator sees (DiffAugment, Zhao et al. 2020).

The same kind of transform is applied to real and generated images, in D's update and in G's, and gradients flow
through it to G. Each transform is per sample and draws nothing itself: its uniform numbers come in `u`, which
models.step.draw_noise draws for the whole global batch from (seed, step, phase) and slices like z, so a batch
split over DFAGD's partitions is augmented exactly as the whole batch is in one process.
"""

import torch

from models.config import AUGMENTATIONS

DRAWS = 7               # uniforms per image: 3 colour, 2 translation, 2 cutout (each kind reads its own columns)
TRANSLATION = 1 / 8     # largest shift, as a fraction of the image side (the paper's)
CUTOUT = 1 / 2          # side of the zeroed square, as a fraction of the image side (the paper's)


def policy(augment: str) -> tuple[str, ...]:
    """train.augment ("" or e.g. "translation,cutout", already validated) -> the kinds, in the order applied."""
    kinds = {k.strip() for k in augment.split(",") if k.strip()}
    return tuple(k for k in AUGMENTATIONS if k in kinds)


def augment(x: torch.Tensor, kinds: tuple[str, ...], u: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W) in [-1, 1]; u (B, DRAWS) uniforms in [0, 1): x with each kind applied per sample."""
    u = u.to(device=x.device, dtype=torch.float32)
    for kind in kinds:
        x = _KINDS[kind](x, u)
    return x


def _color(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Brightness +-0.5, saturation x[0, 2), contrast x[0.5, 1.5); saturation does nothing to a grayscale image."""
    x = x + (u[:, 0] - 0.5).view(-1, 1, 1, 1).to(x.dtype)
    mean = x.mean(dim=1, keepdim=True)                                       # (B, 1, H, W)
    x = mean + (x - mean) * (2 * u[:, 1]).view(-1, 1, 1, 1).to(x.dtype)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)                               # (B, 1, 1, 1)
    return mean + (x - mean) * (u[:, 2] + 0.5).view(-1, 1, 1, 1).to(x.dtype)


def _translation(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Shift by an integer in [-s, s] rows and columns, s = side/8 rounded; what moves in is 0."""
    b, _, h, w = x.shape
    s = int(h * TRANSLATION + 0.5)
    if s == 0:
        return x
    shift = (u[:, 3:5] * (2 * s + 1)).floor().long().clamp(max=2 * s) - s        # (B, 2): rows, columns
    padded = torch.nn.functional.pad(x, (s, s, s, s))                             # (B, C, H+2s, W+2s)
    rows = torch.arange(h, device=x.device) + s - shift[:, :1]                   # (B, H)
    cols = torch.arange(w, device=x.device) + s - shift[:, 1:]                   # (B, W)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)   # (B, H, W, C) -> (B, C, H, W)


def _cutout(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Set a square of side/2 to 0; its centre is anywhere in the image, so it may be clipped by the border."""
    b, _, h, w = x.shape
    size_h, size_w = int(h * CUTOUT + 0.5), int(w * CUTOUT + 0.5)
    top = (u[:, 5] * (h + 1 - size_h % 2)).floor().long() - size_h // 2           # (B,)
    left = (u[:, 6] * (w + 1 - size_w % 2)).floor().long() - size_w // 2
    r = torch.arange(h, device=x.device).view(1, h, 1) - top.view(b, 1, 1)
    c = torch.arange(w, device=x.device).view(1, 1, w) - left.view(b, 1, 1)
    inside = (r >= 0) & (r < size_h) & (c >= 0) & (c < size_w)                   # (B, H, W)
    return x * (~inside).unsqueeze(1).to(x.dtype)


_KINDS = {"color": _color, "translation": _translation, "cutout": _cutout}
assert set(_KINDS) == set(AUGMENTATIONS)


class Augmented:
    """D applied to augmented images: net(augment(x), labels). The gradient penalty differentiates it with
    respect to the un-augmented x, as DiffAugment's and StyleGAN2-ADA's R1 do."""

    def __init__(self, net, kinds: tuple[str, ...], u: torch.Tensor):
        self.net, self.kinds, self.u = net, kinds, u

    def __call__(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return self.net(augment(x, self.kinds, self.u), labels)
