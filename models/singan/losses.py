"""SinGAN's adversarial losses (WGAN-GP default, zero-centred GP, LSGAN) and the reconstruction loss."""

import torch
import torch.nn.functional as F
from torch import nn

from models.config import SinGANConfig


def gradient_penalty(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, cfg: SinGANConfig,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """weight x mean over pixels of (||grad_x D(x_hat)||_c - target)^2 at x_hat = eps*real + (1-eps)*fake.

    As in the official calc_gradient_penalty, the norm is taken over channels at every pixel (dim=1), the
    patch critic's natural unit; target 1 for "gp" (WGAN-GP), 0 for "zero_gp" (zero-centred GP).
    """
    if cfg.penalty == "none" or cfg.penalty_weight == 0:
        return real.new_zeros(())
    eps = torch.rand((), generator=generator).to(real.device)
    x_hat = (eps * real + (1 - eps) * fake.detach()).requires_grad_(True)
    out = D(x_hat)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)   # (B, C, H, W)
    norm = grad.norm(2, dim=1)                                            # (B, H, W)
    target = 1.0 if cfg.penalty == "gp" else 0.0
    return cfg.penalty_weight * ((norm - target) ** 2).mean()


def d_loss(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, cfg: SinGANConfig,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Critic loss on one real image and a detached fake; returns (loss, stats)."""
    d_real, d_fake = D(real), D(fake.detach())
    if cfg.adversarial == "wgan":
        adv = d_fake.mean() - d_real.mean()
    else:  # lsgan: real -> 1, fake -> 0
        adv = F.mse_loss(d_real, torch.ones_like(d_real)) + F.mse_loss(d_fake, torch.zeros_like(d_fake))
    gp = gradient_penalty(D, real, fake, cfg, generator)
    loss = adv + gp
    return loss, {"loss_d": loss.detach(), "gradient_penalty": gp.detach(),
                  "d_real": d_real.mean().detach(), "d_fake": d_fake.mean().detach()}


def g_adv_loss(D: nn.Module, fake: torch.Tensor, cfg: SinGANConfig) -> torch.Tensor:
    out = D(fake)
    if cfg.adversarial == "wgan":
        return -out.mean()
    return F.mse_loss(out, torch.ones_like(out))


def reconstruction_loss(rec: torch.Tensor, real: torch.Tensor, cfg: SinGANConfig) -> torch.Tensor:
    """alpha x MSE(G_n(z_rec_n, rec_{n+1} up), real_n)."""
    return cfg.alpha * F.mse_loss(rec, real)
