"""SinGAN: pyramid sizes, noise amplitudes, frozen scales, deterministic reconstruction, sampling, checkpoints."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.config import ConfigError, SinGANConfig, resolve_config
from models.singan import (
    fit,
    init_state,
    load_singan,
    reconstruct,
    sample,
    sample_at_size,
    save_singan,
    scale_sizes,
)
from models.singan.pyramid import effective_scale_factor, resize
from models.singan.sampling import run_pyramid
from models.singan.trainer import train_scale


def singan(preset: str, **over) -> SinGANConfig:
    return resolve_config(preset, {f"singan.{k}": v for k, v in over.items()}).singan


def tiny(**over) -> SinGANConfig:
    return singan("tiny", **{"iters_per_scale": 1, "log_every": 0, **over})


def image(h: int = 24, w: int = 30, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool2d(torch.rand((1, 3, h + 2, w + 2), generator=g) * 2 - 1, 3, 1)   # smooth-ish (1, 3, h, w)
    return x.clamp(-1, 1)


@pytest.fixture(scope="module")
def trained():
    cfg = tiny()
    return fit(cfg, state=init_state(image(), cfg), print_fn=None)


# --- pyramid ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, n, coarsest, finest", [
    ((250, 250), 11, (25, 25), (250, 250)),      # square at max_size: factor adjusted to 0.794
    ((512, 512), 10, (25, 25), (250, 250)),      # shrunk to max_size first
    ((186, 248), 9, (25, 34), (186, 248)),       # landscape, already below max_size
    ((248, 186), 9, (34, 25), (248, 186)),       # portrait: the transpose
    ((872, 1000), 10, (25, 29), (218, 250)),     # the default image (Hubble deep field)
    ((300, 451), 8, (25, 38), (167, 250)),
])
def test_scale_sizes_reference_settings(shape, n, coarsest, finest):
    sizes = scale_sizes(*shape, SinGANConfig())
    assert len(sizes) == n and sizes[0] == coarsest and sizes[-1] == finest
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(sizes, sizes[1:], strict=False))
    aspect = shape[1] / shape[0]
    assert all(abs(w / h - aspect) < 0.1 * aspect for h, w in sizes)
    assert 0.75 <= effective_scale_factor(sizes) < 0.8


def test_scale_sizes_demo_caps_the_long_side_at_128():
    sizes = scale_sizes(872, 1000, singan("demo"))
    assert sizes[-1] == (112, 128) and min(sizes[0]) == 25 and len(sizes) == 7


def test_scale_sizes_errors_name_the_field():
    with pytest.raises(ConfigError, match="singan.min_size"):
        scale_sizes(20, 60, SinGANConfig())
    with pytest.raises(ConfigError, match="singan.max_size"):
        scale_sizes(30, 400, SinGANConfig())      # long side 250 leaves a short side of 19 < 25


def test_channels_double_every_four_scales_capped():
    assert [SinGANConfig().channels_at(n) for n in range(13)] == [32] * 4 + [64] * 4 + [128] * 5


@pytest.mark.parametrize("field, value", [("scale_factor", 1.0), ("min_size", 10), ("max_size", 20),
                                          ("penalty", "r1"), ("adversarial", "hinge"), ("iters_per_scale", 0),
                                          ("betas", (0.5, 1.0)), ("lr_decay_at", 0.0), ("channels", 4)])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"singan.{field}"):
        singan("full", **{field: value})


def test_reference_settings():
    c = singan("full")
    assert (c.scale_factor, c.min_size, c.max_size, c.num_layers, c.penalty_weight, c.alpha) == (0.75, 25, 250, 5,
                                                                                                 0.1, 10.0)
    assert (c.lr_g, c.betas, c.d_steps, c.g_steps, c.iters_per_scale, c.decay_iter) == (5e-4, (0.5, 0.999), 3, 3,
                                                                                        2000, 1600)


# --- training -----------------------------------------------------------------------------------------------

def test_noise_amp_is_one_tenth_of_the_reconstruction_rmse(trained):
    st = trained
    assert st.noise_amps[0] == 1.0
    for n in range(1, st.num_scales):
        x = torch.zeros((1, 3, *st.sizes[0]))
        with torch.no_grad():      # the reconstruction path by hand: fixed noise at 0, zeros above
            for k in range(n):
                x = resize(x, st.sizes[k])
                z = st.z_rec.expand(1, 3, -1, -1) if k == 0 else torch.zeros_like(x)
                x = st.Gs[k](st.noise_amps[k] * z, x if k else torch.zeros_like(x))
        rmse = F.mse_loss(resize(x, st.sizes[n]), st.reals[n]).sqrt().item()
        assert st.noise_amps[n] == pytest.approx(0.1 * rmse, rel=1e-5)


def test_reconstruction_is_deterministic(trained):
    torch.manual_seed(1)
    a = reconstruct(trained)
    torch.manual_seed(2)
    b = reconstruct(trained)
    assert a.shape == trained.image.shape and torch.equal(a, b)
    assert not torch.equal(sample(trained, 1, seed=0), sample(trained, 1, seed=1))


def test_one_iteration_changes_only_the_current_scale():
    cfg = tiny(lr_g=1e-3, lr_d=1e-3)
    st = init_state(image(), cfg)
    train_scale(st, print_fn=None)
    frozen = [p.clone() for p in st.Gs[0].parameters()] + [p.clone() for p in st.Ds[0].parameters()]
    frozen_buffers = [b.clone() for b in st.Gs[0].buffers()]
    train_scale(st, print_fn=None)
    assert all(torch.equal(a, b) for a, b in zip(frozen, [*st.Gs[0].parameters(), *st.Ds[0].parameters()],
                                                 strict=True))
    assert all(torch.equal(a, b) for a, b in zip(frozen_buffers, st.Gs[0].buffers(), strict=True))
    # scale 1 started as a copy of scale 0 (same width) and one iteration moved it
    assert cfg.channels_at(1) == cfg.channels_at(0)
    assert any(not torch.equal(a, b) for a, b in zip(st.Gs[0].parameters(), st.Gs[1].parameters(), strict=True))
    assert all(not p.requires_grad for G in st.Gs for p in G.parameters()) and not st.Gs[0].training


def test_a_scale_starts_from_the_previous_one_when_widths_match():
    st = init_state(image(), tiny(lr_g=1e-12, lr_d=1e-12))    # updates ~1e-12: scale n stays at its init
    for _ in range(st.num_scales):
        train_scale(st, print_fn=None)
    for n in range(1, st.num_scales):
        same_width = st.config.channels_at(n) == st.config.channels_at(n - 1)
        close = same_width and all(torch.allclose(a, b, atol=1e-8) for a, b in
                                   zip(st.Gs[n - 1].parameters(), st.Gs[n].parameters(), strict=True))
        assert close == same_width


@pytest.mark.parametrize("adversarial, penalty", [("wgan", "gp"), ("wgan", "zero_gp"), ("lsgan", "none")])
def test_loss_options_train(adversarial, penalty):
    logs = []
    st = init_state(image(), tiny(adversarial=adversarial, penalty=penalty, log_every=1))
    fit(st.config, state=st, on_log=lambda s, m: logs.append(m), print_fn=None)
    assert st.done and len(logs) == st.num_scales
    assert all(math.isfinite(v) for m in logs for v in m.values())
    assert {"loss_d", "loss_g", "loss_rec", "gradient_penalty", "s_per_iter", "scale", "noise_amp"} <= set(logs[0])


def test_fit_starts_from_the_configured_image_or_continues_a_state_of_the_same_config():
    cfg = tiny()                                                       # skimage:hubble_deep_field, 872x1000
    lines = []
    st = fit(cfg, print_fn=lines.append)
    assert st.done and st.sizes == scale_sizes(872, 1000, cfg)
    assert lines[0] == f"SinGAN on {cfg.image}: {st.num_scales} scales, " + " -> ".join(
        f"{h}x{w}" for h, w in st.sizes)
    gs = list(st.Gs)
    assert fit(cfg, state=st, print_fn=None) is st and list(st.Gs) == gs    # nothing left to train
    with pytest.raises(ValueError, match="state: expected a pyramid built with the given config"):
        fit(tiny(seed=1), state=st)


def test_progress_lines_and_stop():
    lines = []
    st = init_state(image(), tiny(iters_per_scale=2, log_every=1))
    fit(st.config, state=st, print_fn=lines.append, should_stop=lambda: st.trained_scales == 1)
    assert st.trained_scales == 1 and any("s/it" in ln and "ETA" in ln and "scale 1/" in ln for ln in lines)


# --- sampling and checkpoints ---------------------------------------------------------------------------------

def test_sampling_at_other_sizes(trained):
    h, w = trained.sizes[-1]
    assert sample(trained, 3, seed=0).shape == (3, 3, h, w)
    wide = sample(trained, 2, seed=0, scale_h=1.0, scale_w=2.0)
    assert wide.shape == (2, 3, h, 2 * w) and wide.abs().max() <= 1
    assert sample_at_size(trained, 1, 31, 17).shape == (1, 3, 31, 17)
    # sample i depends on (seed, i) only; batching changes conv algorithms, so up to float rounding
    assert torch.allclose(sample(trained, 3, seed=5), sample(trained, 3, seed=5, batch_size=2), atol=1e-6)
    assert torch.allclose(sample(trained, 3, seed=5)[:2], sample(trained, 2, seed=5), atol=1e-6)
    assert torch.equal(sample(trained, 2, seed=5), sample(trained, 2, seed=5))
    with pytest.raises(ValueError, match="start_scale"):
        sample(trained, 1, scale_w=2.0, start_scale=1)


def test_start_scale_fixes_the_coarse_scales(trained):
    n = trained.num_scales - 1
    coarse = [run_pyramid(trained, stop=n, start_scale=n, generator=torch.Generator().manual_seed(s))
              for s in (0, 1)]
    assert torch.equal(*coarse)
    a, b = sample(trained, 1, seed=0, start_scale=n), sample(trained, 1, seed=1, start_scale=n)
    assert a.shape == trained.image.shape and not torch.equal(a, b)


def test_checkpoint_round_trip_and_resume(tmp_path):
    st = init_state(image(), tiny())
    fit(st.config, state=st, print_fn=None, should_stop=lambda: st.trained_scales == 1)
    path = save_singan(st, tmp_path / "singan.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["singan.pt"]       # no temp file left behind
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "singan/1" and len(raw["G"]) == 1
    back = load_singan(path)
    assert back.config == st.config and back.sizes == st.sizes and back.noise_amps == st.noise_amps
    assert torch.equal(back.z_rec, st.z_rec) and torch.equal(back.image, st.image)
    fit(back.config, state=back, print_fn=None)                        # resumes at scale 2
    assert back.done
    save_singan(back, path)
    again = load_singan(path)
    assert torch.equal(reconstruct(again), reconstruct(back))
    assert torch.equal(sample(again, 2, seed=3), sample(back, 2, seed=3))


def test_init_state_rejects_wrong_channels():
    with pytest.raises(ValueError, match="singan.channels=1"):
        init_state(image(), tiny(channels=1))


def test_numpy_image_gives_same_state_as_tensor():
    arr = ((image().numpy()[0].transpose(1, 2, 0) + 1) * 127.5).round().astype(np.uint8)
    from models.singan import load_image

    x = load_image(arr)
    assert x.shape == (1, 3, 24, 30) and x.min() >= -1 and x.max() <= 1


# --- the demo's budget settings (bn_freeze_at, coarse_iters_factor) ----------------------------------------

@pytest.mark.parametrize("field, value", [("bn_freeze_at", 0.0), ("bn_freeze_at", 1.5), ("coarse_iters_factor", 0.5),
                                          ("coarse_iters_factor", 101)])
def test_budget_settings_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"singan.{field}"):
        singan("demo", **{field: value})


def test_budget_settings_are_off_in_the_paper_and_tiny_presets():
    for preset in ("full", "tiny"):
        c = singan(preset)
        assert (c.bn_freeze_at, c.coarse_iters_factor) == (1.0, 1.0)
        assert [c.iters_at(n, 5) for n in range(5)] == [c.iters_per_scale] * 5


def test_iterations_fall_geometrically_from_the_coarsest_to_the_finest():
    c = tiny(iters_per_scale=100, coarse_iters_factor=4.0)
    assert [c.iters_at(n, 5) for n in range(5)] == [400, 283, 200, 141, 100]
    assert c.iters_at(0, 1) == 100


def test_per_scale_iterations_and_global_steps():
    cfg = tiny(iters_per_scale=2, coarse_iters_factor=2.0, log_every=1)
    st = fit(cfg, state=init_state(image(), cfg), print_fn=None)
    iters = [st.iters_at(n) for n in range(st.num_scales)]
    assert iters[0] == 4 and iters[-1] == 2 and st.total_iters == sum(iters)
    assert [int(h["step"]) for h in st.history] == list(range(1, st.total_iters + 1))


def test_bn_freeze_puts_the_generator_on_running_statistics_for_the_last_iterations():
    cfg = tiny(iters_per_scale=4, bn_freeze_at=0.5)
    st = init_state(image(), cfg)
    seen = []
    orig = torch.nn.BatchNorm2d.forward

    def spy(self, x):
        seen.append(self.training)
        return orig(self, x)

    torch.nn.BatchNorm2d.forward = spy
    try:
        train_scale(st, print_fn=None)
    finally:
        torch.nn.BatchNorm2d.forward = orig
    # D stays in training mode; G switches after 2 of 4 iterations: 2 x (d_steps fakes + g_steps x (adv, rec))
    g_forwards = 2 * (cfg.d_steps + 2 * cfg.g_steps)
    assert True in seen and seen.count(False) == g_forwards * (cfg.num_layers - 1)
    g_bn = [m for m in st.Gs[0].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(not m.training for m in g_bn)
