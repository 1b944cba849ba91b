"""The reference single-process trainer; DFAGD reuses its loop and swaps in a distributed gradient source."""

import time
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from models.config import Config
from models.data import ImageSet, PartitionedSampler, check_labels
from models.step import (
    G_PHASE,
    GANState,
    Nets,
    apply_update,
    compute_nets,
    d_loss,
    draw_noise,
    ema_update,
    flat_grad,
    g_loss,
    params_of,
)

METRIC_NAMES = ("loss_d", "loss_g", "gradient_penalty", "grad_norm_d", "grad_norm_g", "s_per_iter", "images_per_s")


class DivergenceError(RuntimeError):
    """Too many consecutive non-finite updates; the last good checkpoint is kept."""


class GradSource(Protocol):
    """Where averaged gradients come from: this process (reference) or Spark workers (DFAGD)."""

    def d_grad(self, state: GANState, step: int, k: int) -> tuple[torch.Tensor, dict[str, float]]: ...
    def g_grad(self, state: GANState, step: int) -> tuple[torch.Tensor, dict[str, float]]: ...


class LocalGradSource:
    """Computes the whole global batch in this process: the math DFAGD must reproduce."""

    def __init__(self, data: ImageSet, config: Config):
        self.data, self.config = data, config
        check_labels(data.labels, config.model.num_classes, data.source)
        tc = config.train
        self.sampler = PartitionedSampler(len(data), config.partitions, tc.batch_size, tc.seed)
        self._nets: tuple[nn.Module, nn.Module, Nets] | None = None

    def nets(self, state: GANState) -> Nets:
        """The state's G and D prepared once (channels_last, compiled per train.compile); rebuilt for another state."""
        if self._nets is None or self._nets[0] is not state.G or self._nets[1] is not state.D:
            self._nets = (state.G, state.D, compute_nets(state.G, state.D, self.config.train))
        return self._nets[2]

    def d_grad(self, state: GANState, step: int, k: int) -> tuple[torch.Tensor, dict[str, float]]:
        c, tc = self.config, self.config.train
        real, labels = self.data.batch(self.sampler.batch_indices(step * tc.n_critic + k))
        noise = draw_noise(tc.seed, step, k, tc.batch_size, c.model.z_dim, c.model.num_classes)
        nets = self.nets(state)
        loss, stats = d_loss(nets.G, nets.D, real, labels, noise, tc, nets.D_penalty)
        return flat_grad(loss, params_of(state.D)), {k_: float(v) for k_, v in stats.items()}

    def g_grad(self, state: GANState, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        c, tc = self.config, self.config.train
        noise = draw_noise(tc.seed, step, G_PHASE, tc.batch_size, c.model.z_dim, c.model.num_classes)
        nets = self.nets(state)
        loss, stats = g_loss(nets.G, nets.D, noise, tc)
        return flat_grad(loss, params_of(state.G)), {k_: float(v) for k_, v in stats.items()}


def train_iteration(state: GANState, source: GradSource) -> dict[str, float] | None:
    """n_critic D updates then one G update; returns the step's metrics, or None if the step was cut short.

    An update whose gradient or loss is not finite is not applied, and the rest of the iteration (later D
    updates, the G update, the EMA) is skipped: no update ever uses a weight or statistic derived from a NaN.
    The step counter still advances, so the next step draws fresh data and noise instead of repeating the bad
    batch; updates applied earlier in the same iteration were computed from finite values and are kept.
    """
    tc = state.config.train
    step = state.step
    stats: dict[str, float] = {}
    state.step += 1
    for k in range(tc.n_critic):
        grad, s = source.d_grad(state, step, k)
        if not _apply(state.D, state.opt_d, grad, s, tc.clip_norm_d, stats, "grad_norm_d"):
            return None
    grad, s = source.g_grad(state, step)
    if not _apply(state.G, state.opt_g, grad, s, tc.clip_norm_g, stats, "grad_norm_g"):
        return None
    if tc.ema_decay > 0:
        ema_update(state.G_ema, state.G, tc.ema_decay, step, tc.ema_start)
    else:
        state.G_ema.load_state_dict(state.G.state_dict())
    return stats


def _apply(module, optimizer, grad: torch.Tensor, s: dict[str, float], clip_norm: float | None,
           stats: dict[str, float], norm_key: str) -> bool:
    """One update unless its loss statistics are non-finite (apply_update refuses non-finite gradients)."""
    if not all(map(_finite, s.values())):
        return False
    norm, applied = apply_update(module, optimizer, grad, clip_norm)
    stats.update(s, **{norm_key: norm})
    return applied


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def format_progress(step: int, total: int, m: dict[str, float], elapsed: float, budget_s: float = 0.0) -> str:
    """One progress line. budget_s > 0 (train.max_minutes): the ETA is the budget's rest where that comes first."""
    eta = (total - step) * m.get("s_per_iter", 0.0)
    until = f"ETA {hms(eta)}"
    if budget_s > 0 and budget_s - elapsed < eta:
        until = f"ETA {hms(max(0.0, budget_s - elapsed))} (train.max_minutes)"
    return (f"step {step:>6}/{total} | loss_d {m.get('loss_d', float('nan')):+.4f} "
            f"loss_g {m.get('loss_g', float('nan')):+.4f} gp {m.get('gradient_penalty', float('nan')):.4f} | "
            f"{m.get('s_per_iter', 0):.3f} s/it {m.get('images_per_s', 0):.0f} img/s | "
            f"elapsed {hms(elapsed)} {until}")


def hms(seconds: float) -> str:
    """'1h02m03s' or '2m03s': durations in progress lines."""
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


Callback = Callable[[GANState, dict[str, float]], None]


class TimeBudget:
    """train.max_minutes as a `should_stop`: true from the first call `minutes` after the first call (the trainer
    checks before every step, so the clock starts at its first step, after DFAGD's workers are up, and the step
    that crosses the budget is finished). `reached` says whether it stopped training."""

    def __init__(self, minutes: float, clock: Callable[[], float] = time.perf_counter):
        self.budget_s, self.clock = 60.0 * minutes, clock
        self.start: float | None = None
        self.reached = False

    def __call__(self) -> bool:
        now = self.clock()
        if self.start is None:
            self.start = now
        self.reached = now - self.start >= self.budget_s
        return self.reached


def train(state: GANState, source: GradSource, *, steps: int | None = None,
          on_log: Callback | None = None, on_sample: Callback | None = None,
          on_checkpoint: Callback | None = None, should_stop: Callable[[], bool] | None = None,
          print_fn: Callable[[str], None] | None = print) -> GANState:
    """Train from state.step to `steps` (default train.steps); callbacks get the state and latest metrics.

    A step with a non-finite loss or gradient applies nothing from the bad update on (see train_iteration);
    after train.max_bad_steps such steps in a row, DivergenceError.
    """
    tc = state.config.train
    total = tc.steps if steps is None else steps
    bad = 0
    t_start = t_window = time.perf_counter()
    window_steps = 0
    acc: dict[str, float] = {}
    latest: dict[str, float] = {}
    while state.step < total:
        if should_stop and should_stop():
            break
        stats = train_iteration(state, source)
        step = state.step
        last = step == total
        if stats is None:
            bad += 1
            if print_fn:
                print_fn(f"step {step}: non-finite loss or gradient; the update was not applied and the "
                         f"rest of the step was skipped ({bad}/{tc.max_bad_steps} in a row)")
            if bad >= tc.max_bad_steps:
                raise DivergenceError(f"training diverged: {bad} consecutive non-finite steps up to step {step} "
                                      f"(train.max_bad_steps={tc.max_bad_steps}); no non-finite update was applied, "
                                      f"so the weights are those of the last good update")
        else:
            bad = 0
            window_steps += 1
            for k, v in stats.items():
                acc[k] = acc.get(k, 0.0) + v
        if window_steps and ((tc.log_every and step % tc.log_every == 0) or last):
            now = time.perf_counter()
            s_per_iter = (now - t_window) / window_steps
            latest = {k: v / window_steps for k, v in acc.items()}
            latest.update(s_per_iter=s_per_iter, images_per_s=tc.batch_size / max(s_per_iter, 1e-9))
            state.history.append({"step": float(step), **latest})
            if print_fn:
                print_fn(format_progress(step, total, latest, now - t_start, 60.0 * (tc.max_minutes or 0.0)))
            if on_log:
                on_log(state, latest)
            acc, window_steps, t_window = {}, 0, time.perf_counter()
        # weights are never touched by a bad step, so samples and checkpoints stay on schedule through one
        if on_sample and ((tc.sample_every and step % tc.sample_every == 0) or last):
            on_sample(state, latest)
        if on_checkpoint and ((tc.checkpoint_every and step % tc.checkpoint_every == 0) or last):
            on_checkpoint(state, latest)
    return state
