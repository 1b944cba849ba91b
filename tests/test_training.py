"""The reference trainer: one step, clipping, determinism, checkpoints, and the partition-average identity DFAGD relies on."""

import copy

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.config import resolve_config
from models.data import ImageSet, PartitionedSampler, load_dataset
from models.step import apply_update, build_state, d_loss, draw_noise, flat_grad, get_flat, params_of
from models.trainer import DivergenceError, LocalGradSource, TimeBudget, train, train_iteration


@pytest.fixture(scope="module")
def digits16():
    return load_dataset("digits", 16, 1, limit=256)


def cfg(**over):
    return resolve_config("tiny", {"train.log_every": 0, "train.sample_every": 0, **over})


def test_one_step_is_finite_and_changes_parameters(digits16):
    c = cfg()
    state = build_state(c)
    before_g, before_d = get_flat(state.G).clone(), get_flat(state.D).clone()
    stats = train_iteration(state, LocalGradSource(digits16, c))
    assert stats is not None and all(np.isfinite(v) for v in stats.values())
    assert {"loss_d", "loss_g", "gradient_penalty", "grad_norm_d", "grad_norm_g"} <= set(stats)
    assert not torch.equal(before_g, get_flat(state.G))
    assert not torch.equal(before_d, get_flat(state.D))
    assert state.step == 1


def test_clipping_bounds_the_applied_gradient():
    lin = torch.nn.Linear(10, 10)
    opt = torch.optim.SGD(lin.parameters(), lr=1.0)
    before = get_flat(lin).clone()
    huge = torch.full((110,), 100.0)
    norm, applied = apply_update(lin, opt, huge, clip_norm=0.5)
    assert applied and norm == pytest.approx(huge.norm().item())
    assert (get_flat(lin) - before).norm().item() <= 0.5 + 1e-4


def test_non_finite_gradient_is_not_applied():
    lin = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=1.0)
    before = get_flat(lin).clone()
    _, applied = apply_update(lin, opt, torch.tensor([1.0, float("nan"), 0.0, 0.0]), clip_norm=None)
    assert not applied and torch.equal(before, get_flat(lin))


def test_divergence_stops_after_max_bad_steps(digits16):
    c = cfg(**{"train.max_bad_steps": 2, "train.lr_d": 1e30, "train.lr_g": 1e30, "train.clip_norm_d": None,
               "train.clip_norm_g": None, "train.steps": 50})
    state = build_state(c)
    with torch.no_grad():
        for p in state.D.parameters():
            p.fill_(float("inf"))
    with pytest.raises(DivergenceError, match="max_bad_steps=2"):
        train(state, LocalGradSource(digits16, c), print_fn=None)


class NaNAt:
    """A gradient source that returns a NaN gradient for one phase ('d' or 'g') at the given steps."""

    def __init__(self, inner, steps: set[int], phase: str):
        self.inner, self.steps, self.phase = inner, steps, phase

    def _poison(self, grad, step, phase):
        if step in self.steps and phase == self.phase:
            grad = grad.clone()
            grad[0] = float("nan")
        return grad

    def d_grad(self, state, step, k):
        grad, s = self.inner.d_grad(state, step, k)
        return self._poison(grad, step, "d"), s

    def g_grad(self, state, step):
        grad, s = self.inner.g_grad(state, step)
        return self._poison(grad, step, "g"), s


def _flat_state(state):
    opt = [t.clone() for o in (state.opt_g, state.opt_d) for st in o.state_dict()["state"].values()
           for t in st.values()]
    return [get_flat(state.G), get_flat(state.D), get_flat(state.G_ema), *opt]


@pytest.mark.parametrize("phase", ["d", "g"])
def test_a_nan_step_applies_nothing_from_the_bad_update_on(digits16, phase):
    c = cfg(**{"train.steps": 4, "train.n_critic": 2, "train.ema_start": 0, "train.ema_decay": 0.9})
    clean_1 = train(build_state(c), LocalGradSource(digits16, c), steps=1, print_fn=None)
    lines: list[str] = []
    state = train(build_state(c), NaNAt(LocalGradSource(digits16, c), {1}, phase), steps=2, print_fn=lines.append)
    assert state.step == 2 and any("step 2: non-finite" in ln for ln in lines)
    after = _flat_state(state)
    if phase == "d":     # the first D update of step 1 is bad: nothing of step 1 is applied
        for a, b in zip(after, _flat_state(clean_1)):
            assert torch.equal(a, b)
    else:                # both D updates of step 1 applied; G, its Adam state and the EMA untouched
        assert torch.equal(after[0], get_flat(clean_1.G)) and torch.equal(after[2], get_flat(clean_1.G_ema))
        assert not torch.equal(after[1], get_flat(clean_1.D))
    train(state, NaNAt(LocalGradSource(digits16, c), {1}, phase), print_fn=None)     # goes on to the end
    assert state.step == 4 and all(torch.isfinite(t).all() for t in _flat_state(state))


def test_checkpoints_stay_on_schedule_through_a_bad_step(digits16):
    c = cfg(**{"train.steps": 4, "train.checkpoint_every": 2})
    saved: list[int] = []
    train(build_state(c), NaNAt(LocalGradSource(digits16, c), {1, 3}, "d"), print_fn=None,
          on_checkpoint=lambda s, m: saved.append(s.step))
    assert saved == [2, 4]


def test_same_seed_same_weights(digits16):
    runs = []
    for _ in range(2):
        c = cfg(**{"train.steps": 3})
        state = train(build_state(c), LocalGradSource(digits16, c), print_fn=None)
        runs.append(get_flat(state.G_ema))
    assert torch.equal(runs[0], runs[1])
    other = cfg(**{"train.steps": 3, "train.seed": 1})
    assert not torch.equal(runs[0], get_flat(train(build_state(other), LocalGradSource(digits16, other), print_fn=None).G))


def test_checkpoint_round_trip_resumes_exactly(digits16, tmp_path):
    c = cfg(**{"train.steps": 4})
    full = train(build_state(c), LocalGradSource(digits16, c), print_fn=None)

    half = train(build_state(c), LocalGradSource(digits16, c), steps=2, print_fn=None)
    save_checkpoint(half, tmp_path / "ckpt.pt")
    assert not list(tmp_path.glob("*.tmp"))
    resumed = load_checkpoint(tmp_path / "ckpt.pt")
    assert resumed.step == 2 and resumed.config.to_dict() == c.to_dict()
    resumed = train(resumed, LocalGradSource(digits16, resumed.config), print_fn=None)
    for a, b in ((full.G, resumed.G), (full.D, resumed.D), (full.G_ema, resumed.G_ema)):
        assert torch.allclose(get_flat(a), get_flat(b), atol=1e-6)


def test_checkpoint_is_plain_tensors(tmp_path, digits16):
    c = cfg()
    save_checkpoint(build_state(c), tmp_path / "c.pt")
    torch.load(tmp_path / "c.pt", weights_only=True)   # raises if anything but tensors/containers were pickled


def test_time_budget_starts_at_the_first_step_and_finishes_the_step_that_crosses_it(digits16):
    """train.max_minutes through the trainer's should_stop: a clock that advances 1 s per reading and a budget of
    3 s stop training after exactly 3 steps (readings at 0, 1, 2 train; 3 is past), before train.steps."""
    readings = iter(range(100))
    budget = TimeBudget(3 / 60, clock=lambda: float(next(readings)))
    c = cfg(**{"train.steps": 50, "train.max_minutes": 3 / 60})
    state = train(build_state(c), LocalGradSource(digits16, c), should_stop=budget, print_fn=None)
    assert state.step == 3 and budget.reached and budget.start == 0.0
    unbounded = TimeBudget(10.0, clock=lambda: 0.0)
    state = train(build_state(cfg(**{"train.steps": 2})), LocalGradSource(digits16, c), should_stop=unbounded,
                  print_fn=None)
    assert state.step == 2 and not unbounded.reached   # train.steps came first


def test_progress_eta_is_the_time_budgets_rest_when_that_comes_first():
    from models.trainer import format_progress

    m = {"s_per_iter": 0.5, "loss_d": 1.0, "loss_g": 2.0, "images_per_s": 64.0}
    assert format_progress(100, 3000, m, 60.0).endswith("elapsed 1m00s ETA 24m10s")     # 2,900 steps x 0.5 s
    assert format_progress(100, 3000, m, 60.0, budget_s=330.0).endswith("ETA 4m30s (train.max_minutes)")
    assert format_progress(2900, 3000, m, 60.0, budget_s=330.0).endswith("ETA 0m50s")   # the steps end first
    assert format_progress(100, 3000, m, 400.0, budget_s=330.0).endswith("ETA 0m00s (train.max_minutes)")


@pytest.mark.parametrize("value", [0, -1.0, "ten"])
def test_max_minutes_must_be_a_positive_number(value):
    from models.config import ConfigError

    with pytest.raises(ConfigError, match="train.max_minutes"):
        cfg(**{"train.max_minutes": value})


def test_progress_line(digits16, capsys):
    c = cfg(**{"train.steps": 2, "train.log_every": 1})
    train(build_state(c), LocalGradSource(digits16, c))
    out = capsys.readouterr().out
    assert "step      2/2" in out and "s/it" in out and "img/s" in out and "ETA" in out


def test_whole_batch_gradient_equals_mean_of_partition_gradients(digits16):
    """The identity DFAGD is built on: per-sample losses and noise drawn per global batch."""
    c = cfg(**{"train.batch_size": 16, "data.partitions": 4})
    state = build_state(c)
    tc, mc = c.train, c.model
    sampler = PartitionedSampler(len(digits16), 4, 16, tc.seed)
    whole, _ = LocalGradSource(digits16, c).d_grad(state, step=3, k=0)
    parts = []
    for p in range(4):
        real, labels = digits16.batch(sampler.global_indices(3 * tc.n_critic, p))
        noise = draw_noise(tc.seed, 3, 0, 16, mc.z_dim, mc.num_classes, start=4 * p, stop=4 * (p + 1))
        loss, _ = d_loss(state.G, state.D, real, labels, noise, tc)
        parts.append(flat_grad(loss, params_of(state.D)))
    assert torch.allclose(whole, torch.stack(parts).mean(0), atol=1e-5, rtol=1e-4)


def test_sampler_is_stateless_and_covers_each_partition():
    s = PartitionedSampler(n_items=10, partitions=2, batch_size=4, seed=7)
    # partition 0 holds 5 images and gives 2 per update: updates 0-2 walk its first epoch, then the next begins
    stream = np.concatenate([s.local_indices(t, 0) for t in range(5)])
    assert sorted(stream[:5].tolist()) == [0, 1, 2, 3, 4]
    assert sorted(stream[5:10].tolist()) == [0, 1, 2, 3, 4]
    assert not np.array_equal(stream[:5], stream[5:10])          # each epoch has its own permutation
    again = PartitionedSampler(10, 2, 4, 7)
    assert np.array_equal(s.batch_indices(5), again.batch_indices(5))
    assert set(s.global_indices(0, 1).tolist()) <= set(range(5, 10))
    with pytest.raises(ValueError, match="batch_size"):
        PartitionedSampler(10, 3, 4, 0)


def test_ema_tracks_generator(digits16):
    c = cfg(**{"train.steps": 2, "train.ema_start": 100})
    state = train(build_state(c), LocalGradSource(digits16, c), print_fn=None)
    assert torch.equal(get_flat(state.G), get_flat(state.G_ema))   # before ema_start: verbatim copy
    c2 = cfg(**{"train.steps": 3, "train.ema_start": 0, "train.ema_decay": 0.9})
    s2 = train(build_state(c2), LocalGradSource(digits16, c2), print_fn=None)
    assert not torch.equal(get_flat(s2.G), get_flat(s2.G_ema))


def test_trainer_learns_from_a_plain_imageset():
    """An unlabelled ImageSet of any source trains, and the critic's update depends on its images."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (64, 1, 16, 16), dtype=np.uint8)
    c = cfg(**{"train.steps": 1})
    init = build_state(c)

    def run(data: ImageSet):
        state = train(copy.deepcopy(init), LocalGradSource(data, c), print_fn=None)
        return state.step, get_flat(state.D), get_flat(state.G)

    step, d, g = run(ImageSet(images, None, "random"))
    again = run(ImageSet(images.copy(), None, "random"))
    inverted = run(ImageSet(255 - images, None, "inverted"))
    assert step == 1 and torch.isfinite(d).all() and torch.isfinite(g).all()
    assert torch.equal(d, again[1]) and torch.equal(g, again[2])   # same images, same update
    assert not torch.equal(d, inverted[1])                         # other images, another critic update
    assert not torch.equal(d, get_flat(init.D))
