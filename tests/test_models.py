"""TransSRGAN / DCGAN / discriminator shapes and the loss and penalty math."""

import pytest
import torch
from torch import nn

from models import build_discriminator, build_generator
from models.config import ConfigError, ModelConfig
from models.losses import d_adversarial, g_adversarial, gradient_penalty


def tiny_model(**kw) -> ModelConfig:
    base = dict(z_dim=16, token_grid=4, dim=32, depth=1, heads=2, g_channels=32, d_channels=8,
                d_max_channels=32, dcgan_channels=32)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("arch", ["transsrgan", "dcgan"])
@pytest.mark.parametrize("resolution", [16, 32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_at_every_resolution(arch, resolution, channels):
    cfg = tiny_model(arch=arch, resolution=resolution, channels=channels)
    G, D = build_generator(cfg), build_discriminator(cfg)
    x = G(torch.randn(3, cfg.z_dim))
    assert x.shape == (3, channels, resolution, resolution)
    assert x.abs().max() <= 1.0
    assert D(x).shape == (3,)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("depth,token_grid,heads", [(0, 4, 2), (2, 8, 4), (1, 16, 1)])
def test_transsrgan_options(residual, depth, token_grid, heads):
    cfg = tiny_model(resolution=32, depth=depth, token_grid=token_grid, heads=heads, d_residual=residual)
    G, D = build_generator(cfg), build_discriminator(cfg)
    assert len(G.blocks) == depth
    assert len(G.upsample) == cfg.upsample_blocks
    assert D(G(torch.randn(2, cfg.z_dim))).shape == (2,)


def test_conditional_labels_change_output():
    cfg = tiny_model(num_classes=10)
    G, D = build_generator(cfg), build_discriminator(cfg)
    z = torch.randn(2, cfg.z_dim)
    a, b = G(z, torch.tensor([0, 0])), G(z, torch.tensor([1, 1]))
    assert not torch.allclose(a, b)
    assert D(a, torch.tensor([0, 1])).shape == (2,)


def test_no_batch_norm_anywhere():
    for arch in ("transsrgan", "dcgan"):
        cfg = tiny_model(arch=arch)
        for m in list(build_generator(cfg).modules()) + list(build_discriminator(cfg).modules()):
            assert not isinstance(m, nn.modules.batchnorm._BatchNorm)


@pytest.mark.parametrize("field,value", [("resolution", 48), ("token_grid", 3), ("heads", 5), ("channels", 2)])
def test_bad_model_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=f"model.{field}"):
        tiny_model(**{field: value}).validate()


class LinearCritic(nn.Module):
    """D(x) = w . x + b: its input gradient is w everywhere, so penalties have closed forms."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x, labels=None):
        return x.flatten(1) @ self.w.flatten() + 0.5


def test_gradient_penalty_matches_closed_form_on_linear_critic():
    torch.manual_seed(0)
    w = torch.randn(1, 4, 4) * 0.3
    D = LinearCritic(w)
    real, fake, eps = torch.randn(5, 1, 4, 4), torch.randn(5, 1, 4, 4), torch.rand(5)
    norm = w.norm().item()
    assert gradient_penalty("gp", D, real, fake, eps).item() == pytest.approx((norm - 1) ** 2, rel=1e-5)
    assert gradient_penalty("dragan", D, real, fake, eps).item() == pytest.approx((norm - 1) ** 2, rel=1e-5)
    assert gradient_penalty("r1", D, real, fake, eps).item() == pytest.approx(norm ** 2, rel=1e-5)
    assert gradient_penalty("none", D, real, fake, eps).item() == 0.0


def test_gradient_penalty_is_differentiable_wrt_critic():
    D = LinearCritic(torch.full((1, 2, 2), 2.0))      # ||w|| = 4 -> gp = 9, d gp / d w = 2 (||w|| - 1) w / ||w||
    gp = gradient_penalty("gp", D, torch.zeros(3, 1, 2, 2), torch.ones(3, 1, 2, 2), torch.rand(3))
    (grad,) = torch.autograd.grad(gp, D.w)
    assert torch.allclose(grad, 2 * 3 * D.w.detach() / 4)


def test_adversarial_losses():
    r, f = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 1.0])
    assert d_adversarial("wgan", r, f).item() == pytest.approx(-0.5 - 1.0)
    assert d_adversarial("hinge", r, f).item() == pytest.approx(0.5 + 1.0)
    assert g_adversarial("wgan", f).item() == pytest.approx(0.5)
    ns = d_adversarial("ns", r, f).item()
    assert ns == pytest.approx(torch.nn.functional.softplus(-r).mean().item() + torch.nn.functional.softplus(f).mean().item())
    with pytest.raises(ValueError, match="train.loss"):
        d_adversarial("nope", r, f)
