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


# ---------------------------------------------------------------- ICNR, truncation, interpolation

def test_icnr_starts_every_pixelshuffle_as_nearest_neighbour_upsampling():
    from models.transsrgan import UpsampleBlock

    cfg = tiny_model(resolution=32, icnr=True)
    G = build_generator(cfg)
    blocks = [m for m in G.modules() if isinstance(m, UpsampleBlock)]
    assert len(blocks) == cfg.upsample_blocks == 3
    for blk in blocks:
        y = blk.shuffle(blk.conv(torch.randn(2, blk.conv.in_channels, 5, 5)))       # (2, c, 10, 10)
        for dy, dx in ((0, 1), (1, 0), (1, 1)):                                   # every 2x2 cell is one value
            assert torch.equal(y[..., dy::2, dx::2], y[..., 0::2, 0::2])
    plain = build_generator(tiny_model(resolution=32))
    y = blocks[0].shuffle(plain.upsample[0].conv(torch.randn(2, cfg.dim, 5, 5)))
    assert not torch.equal(y[..., 1::2, 1::2], y[..., 0::2, 0::2])


def test_icnr_changes_only_the_upsampling_convs():
    """model.icnr draws its numbers after the usual init: every other weight is the same, and icnr=False is the
    initialisation of before (the demo stays byte-identical)."""
    torch.manual_seed(0)
    a = build_generator(tiny_model(icnr=False)).state_dict()
    torch.manual_seed(0)
    b = build_generator(tiny_model(icnr=True)).state_dict()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed == {f"upsample.{i}.conv.weight" for i in range(tiny_model().upsample_blocks)}
    dcgan = tiny_model(arch="dcgan", icnr=True)                 # no PixelShuffle: the flag changes nothing
    torch.manual_seed(0)
    c = build_generator(dcgan).state_dict()
    torch.manual_seed(0)
    d = build_generator(dcgan.model_copy(update={"icnr": False})).state_dict()
    assert all(torch.equal(c[k], d[k]) for k in c)


def _trained_ish_generator():
    """A generator whose token input has a non-zero mean over z (as after training), so truncation matters."""
    torch.manual_seed(3)
    G = build_generator(tiny_model(resolution=16)).eval()
    with torch.no_grad():
        G.to_tokens.bias.normal_(0.0, 0.5)
    return G


def test_truncation_one_is_todays_sample_and_smaller_psi_narrows_the_samples():
    from models.grid import sample

    G = _trained_ish_generator()
    z_dim = G.config.z_dim
    g = torch.Generator().manual_seed(5)               # what sample() drew before truncation existed
    with torch.no_grad():
        before = G(torch.randn(32, z_dim, generator=g))
    assert torch.equal(sample(G, 32, 5, z_dim), before)
    assert torch.equal(sample(G, 32, 5, z_dim, truncation=1.0), before)
    stds = [sample(G, 32, 5, z_dim, truncation=psi).std(dim=0).mean().item() for psi in (1.0, 0.7, 0.4, 0.1)]
    assert stds == sorted(stds, reverse=True) and stds[-1] < 0.5 * stds[0], stds
    assert torch.equal(sample(G, 32, 5, z_dim, truncation=0.4), sample(G, 32, 5, z_dim, truncation=0.4))
    for bad in (0.0, 1.5, float("nan"), -0.5):
        with pytest.raises(ValueError, match="truncation"):
            sample(G, 2, 0, z_dim, truncation=bad)


def test_interpolation_grid_ends_at_the_plain_samples_of_its_seeds():
    from models.grid import interpolate, interpolation_seeds, sample

    G = _trained_ish_generator()
    z_dim, rows, steps = G.config.z_dim, 3, 5
    grid = interpolate(G, rows, steps, 10, z_dim).view(rows, steps, *G(torch.randn(1, z_dim)).shape[1:])
    assert interpolation_seeds(10, rows) == [(10, 11), (12, 13), (14, 15)]
    for i, (a, b) in enumerate(interpolation_seeds(10, rows)):
        torch.testing.assert_close(grid[i, 0], sample(G, 1, a, z_dim)[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(grid[i, -1], sample(G, 1, b, z_dim)[0], rtol=0, atol=1e-6)
        assert not torch.allclose(grid[i, 2], grid[i, 0]) and not torch.allclose(grid[i, 2], grid[i, -1])
    half = interpolate(G, 1, 2, 10, z_dim, truncation=0.5)
    torch.testing.assert_close(half[0], sample(G, 1, 10, z_dim, truncation=0.5)[0], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="steps"):
        interpolate(G, 1, 1, 0, z_dim)


def test_slerp_keeps_the_norm_of_unit_vectors_and_hits_its_end_points():
    from models.grid import slerp

    z0, z1 = torch.nn.functional.normalize(torch.randn(4, 16), dim=1), torch.nn.functional.normalize(torch.randn(4, 16), dim=1)
    path = slerp(z0, z1, torch.linspace(0, 1, 7))                                  # (4, 7, 16)
    assert torch.equal(path[:, 0], z0) and torch.equal(path[:, -1], z1)
    torch.testing.assert_close(path.norm(dim=2), torch.ones(4, 7))
    same = slerp(z0, z0, torch.tensor([0.0, 0.5, 1.0]))                            # parallel: no 0/0
    torch.testing.assert_close(same, z0[:, None].expand(-1, 3, -1))
