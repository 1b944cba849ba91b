"""DiffAugment (train.augment) and lazy regularisation (train.reg_every): settings, the transforms, determinism,
and the partition-average identity DFAGD relies on with both on."""

import pytest
import torch

from models.augment import DRAWS, augment, policy
from models.config import ConfigError, resolve_config
from models.data import ImageSet, load_dataset
from models.losses import d_adversarial, gradient_penalty
from models.step import G_PHASE, build_state, d_loss, draw_noise, get_flat, phase_seed
from models.trainer import LocalGradSource, train
from spark_training.dfagd import shard
from spark_training.exchange import mean_of
from spark_training.worker import PartitionWorker

ALL = ("color", "translation", "cutout")


@pytest.fixture(scope="module")
def digits16():
    return load_dataset("digits", 16, 1, limit=256)


def cfg(**over):
    return resolve_config("tiny", {"train.log_every": 0, "train.sample_every": 0, "train.checkpoint_every": 0,
                                   "train.steps": 3, "train.loss": "ns", "train.penalty": "r1", **over})


# -- settings -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("given,stored", [("", ""), ("cutout, translation", "translation,cutout"),
                                          ("color,cutout,translation", "color,translation,cutout")])
def test_augment_setting_is_stored_in_the_order_applied(given, stored):
    assert resolve_config("tiny", {"train.augment": given}).train.augment == stored


@pytest.mark.parametrize("key,value", [("train.augment", "flip"), ("train.augment", "cutout,cutout"),
                                       ("train.augment", "translation,"), ("train.augment", 1),
                                       ("train.reg_every", 0), ("train.reg_every", 2.0)])
def test_bad_settings_get_one_line_naming_the_setting(key, value):
    with pytest.raises(ConfigError) as err:
        resolve_config("tiny", {key: value})
    assert str(err.value).startswith(key + ":") and "\n" not in str(err.value)


# -- the transforms -------------------------------------------------------------------------------------------
def test_translation_moves_the_image_and_fills_with_zero():
    x = torch.full((1, 1, 16, 16), -1.0)
    x[0, 0, 8, 8] = 1.0
    s = 2                                                  # 16 / 8
    for k in range(2 * s + 1):                             # every shift in [-2, 2] is reachable
        u = torch.zeros(1, DRAWS)
        u[0, 3], u[0, 4] = (k + 0.5) / (2 * s + 1), 0.0    # rows by k - 2, columns by -2
        y = augment(x, ("translation",), u)
        assert y[0, 0, 8 + k - s, 8 - s] == 1.0 and (y == 1.0).sum() == 1
        assert (y[0, 0, :, -s:] == 0).all()                # what moved in from the right is 0


def test_cutout_zeroes_a_square_of_half_the_side_clipped_at_the_border():
    x = torch.ones(2, 1, 16, 16)
    u = torch.zeros(2, DRAWS)
    u[0, 5:7] = 8.5 / 17                                   # centre (8, 8): the whole 8x8 square inside
    y = augment(x, ("cutout",), u)                         # sample 1: centre (0, 0), a quarter of it inside
    assert (y[0] == 0).sum() == 64 and (y[0, 0, 4:12, 4:12] == 0).all()
    assert (y[1] == 0).sum() == 16 and (y[1, 0, :4, :4] == 0).all()


def test_color_keeps_grayscale_shape_and_acts_per_sample():
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    u = torch.rand(3, DRAWS)
    y = augment(x, ("color",), u)
    assert y.shape == x.shape and not torch.equal(x, y)
    u[:, :3] = torch.tensor([0.5, 0.5, 0.5])               # no brightness, saturation x1, contrast x1
    assert torch.allclose(augment(x, ("color",), u), x, atol=1e-6)


def test_a_slice_of_the_batch_is_augmented_as_in_the_whole_batch():
    x = torch.randn(8, 3, 16, 16, requires_grad=True)
    u = torch.rand(8, DRAWS)
    whole = augment(x, ALL, u)
    for a, b in ((0, 3), (3, 8)):
        assert torch.equal(augment(x[a:b], ALL, u[a:b]), whole[a:b])
    (g,) = torch.autograd.grad(whole.square().sum(), x)   # differentiable: a gradient reaches the input
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_policy_of_the_setting():
    assert policy("") == () and policy("cutout,translation") == ("translation", "cutout")


# -- the draws ------------------------------------------------------------------------------------------------
def test_augmentation_draws_leave_z_eps_and_labels_as_they_were_and_slice_like_z():
    g = torch.Generator().manual_seed(phase_seed(3, 5, 0))
    z, eps, labels = torch.randn(16, 8, generator=g), torch.rand(16, generator=g), torch.randint(0, 10, (16,), generator=g)
    whole = draw_noise(3, 5, 0, 16, 8, 10)
    assert torch.equal(whole.z, z) and torch.equal(whole.eps, eps) and torch.equal(whole.labels, labels)
    part = draw_noise(3, 5, 0, 16, 8, 10, start=4, stop=12)
    assert torch.equal(part.aug, whole.aug[4:12]) and (part.step, part.phase) == (5, 0)
    assert not torch.equal(draw_noise(3, 5, 1, 16, 8, 10).aug, whole.aug)     # another phase, other draws


# -- lazy regularisation --------------------------------------------------------------------------------------
def test_reg_every_1_is_the_loss_as_before_and_k_skips_then_weights_the_penalty(digits16):
    state = build_state(cfg())
    real, labels = digits16.batch(list(range(16)))
    for step in (0, 1):
        noise = draw_noise(0, step, 0, 16, state.config.model.z_dim, 0)
        with torch.no_grad():
            fake = state.G(noise.z, None)
        adv = d_adversarial("ns", state.D(real, None), state.D(fake, None))
        gp = gradient_penalty("r1", state.D, real, fake, noise.eps)
        one, s1 = d_loss(state.G, state.D, real, None, noise, cfg().train)
        w = cfg().train.gp_weight
        assert torch.equal(one, adv + w * gp) and torch.equal(s1["gradient_penalty"], gp.detach())
        lazy, s2 = d_loss(state.G, state.D, real, None, noise, cfg(**{"train.reg_every": 2}).train)
        if step == 0:                                      # D update 0: the penalty, weighted x2
            assert torch.allclose(lazy, adv + w * (2 * gp), atol=0, rtol=1e-6)
            assert torch.allclose(s2["gradient_penalty"], 2 * gp.detach())
        else:                                              # D update 1: none
            assert torch.equal(lazy, adv + 0.0) and s2["gradient_penalty"] == 0


def test_lazy_regularisation_counts_d_updates_across_n_critic(digits16):
    tc = cfg(**{"train.reg_every": 3, "train.n_critic": 2}).train
    state = build_state(cfg())
    real, _ = digits16.batch(list(range(16)))
    penalised = []
    for step in range(3):
        for k in range(2):
            _, s = d_loss(state.G, state.D, real, None, draw_noise(0, step, k, 16, 32, 0), tc)
            penalised.append(bool(s["gradient_penalty"] != 0))
    assert penalised == [True, False, False, True, False, False]      # D updates 0 and 3 of 0..5


# -- DFAGD's identity with both on ----------------------------------------------------------------------------
@pytest.mark.parametrize("phase", [0, G_PHASE])
@pytest.mark.parametrize("over", [{"train.augment": "color,translation,cutout"},
                                  {"train.augment": "translation,cutout", "train.reg_every": 2,
                                   "train.penalty": "gp", "train.loss": "wgan"}])
def test_partition_average_matches_the_global_batch_with_augmentation(digits16, phase, over):
    c = cfg(**{"data.partitions": 2, "spark.workers": 2, **over})
    state = build_state(c)
    ref = LocalGradSource(digits16, c)
    for step in (2, 3):                                    # with reg_every 2: one update with the penalty, one without
        want = (ref.d_grad(state, step, 0) if phase == 0 else ref.g_grad(state, step))[0]
        grads = []
        for _, parts in shard(digits16, c):
            pw = PartitionWorker(c.to_dict(), len(digits16), {p: ImageSet(x, y, "t") for p, (x, y) in parts.items()})
            pw.set_weights(get_flat(state.G), get_flat(state.D))
            grads.append(pw.gradient(step, phase)[0].clone())
        assert torch.allclose(mean_of(grads), want, atol=1e-6, rtol=1e-4)


def test_augmented_training_repeats_bitwise_and_differs_from_plain(digits16):
    def run(**over):
        c = cfg(**over)
        return get_flat(train(build_state(c), LocalGradSource(digits16, c), print_fn=None).G)

    on = {"train.augment": "translation,cutout", "train.reg_every": 2}
    assert torch.equal(run(**on), run(**on))
    assert not torch.equal(run(**on), run())
