"""GAN losses (WGAN, hinge, non-saturating) and gradient penalties (WGAN-GP, R1, DRAGAN), all means over the batch."""

import torch
import torch.nn.functional as F
from torch import nn


def d_adversarial(kind: str, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    if kind == "wgan":
        return fake_scores.mean() - real_scores.mean()
    if kind == "hinge":
        return F.relu(1.0 - real_scores).mean() + F.relu(1.0 + fake_scores).mean()
    if kind == "ns":
        return F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()
    raise ValueError(f"train.loss: expected wgan, hinge or ns, got {kind!r}")


def g_adversarial(kind: str, fake_scores: torch.Tensor) -> torch.Tensor:
    if kind in ("wgan", "hinge"):
        return -fake_scores.mean()
    if kind == "ns":
        return F.softplus(-fake_scores).mean()
    raise ValueError(f"train.loss: expected wgan, hinge or ns, got {kind!r}")


def _input_grad_norm(D: nn.Module, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    scores = D(x, labels)
    (grad,) = torch.autograd.grad(scores.sum(), x, create_graph=True)
    return grad.flatten(1).norm(2, dim=1)                          # (B,)


def gradient_penalty(kind: str, D: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     eps: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample penalty averaged over the batch (so a sharded batch averages to the same value).

    eps (B,) in [0, 1) is drawn by the caller so that DFAGD shards reproduce the global draw:
    - gp:     (||grad D(eps*real + (1-eps)*fake)|| - 1)^2      (Gulrajani et al., 2017)
    - r1:     ||grad D(real)||^2                                (Mescheder et al., 2018; weight/2 is the caller's)
    - dragan: (||grad D(real + 0.5*std(real)*u)|| - 1)^2, u = 2*eps-1 per sample  (Kodali et al., 2017)
    """
    if kind == "none":
        return real.new_zeros(())
    e = eps.view(-1, *([1] * (real.dim() - 1)))
    if kind == "gp":
        x = e * real + (1 - e) * fake.detach()
        return ((_input_grad_norm(D, x, labels) - 1) ** 2).mean()
    if kind == "r1":
        return (_input_grad_norm(D, real, labels) ** 2).mean()
    if kind == "dragan":
        std = real.flatten(1).std(dim=1).view_as(e)
        x = real + 0.5 * std * (2 * e - 1)
        return ((_input_grad_norm(D, x, labels) - 1) ** 2).mean()
    raise ValueError(f"train.penalty: expected gp, r1, dragan or none, got {kind!r}")
