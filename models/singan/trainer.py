"""Coarse-to-fine SinGAN training: one scale at a time, earlier scales frozen; reports through callbacks."""

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from models.config import SinGANConfig
from models.singan.image import load_image
from models.singan.losses import d_loss, g_adv_loss, reconstruction_loss
from models.singan.networks import build_scale, freeze
from models.singan.pyramid import resize
from models.singan.sampling import run_pyramid
from models.singan.state import SinGANState, draw_noise, init_state, rec_noise
from models.trainer import hms

METRIC_NAMES = ("loss_d", "loss_g", "loss_rec", "gradient_penalty", "grad_norm_d", "grad_norm_g", "s_per_iter")

Callback = Callable[[SinGANState, dict[str, float]], None]


def noise_amp_for(real: torch.Tensor, rec_prev: torch.Tensor, factor: float) -> float:
    """noise_amp_n = factor x RMSE(real_n, upsampled reconstruction of scale n-1)."""
    return factor * math.sqrt(F.mse_loss(rec_prev, real).item())


def _grad_norm(module: torch.nn.Module) -> float:
    sq = [p.grad.detach().pow(2).sum() for p in module.parameters() if p.grad is not None]
    return float(torch.stack(sq).sum().sqrt()) if sq else 0.0


def _prev_random(state: SinGANState, n: int, g: torch.Generator) -> torch.Tensor:
    """A random sample of scales 0..n-1, upsampled to scale n (zeros at the coarsest)."""
    if n == 0:
        return torch.zeros_like(state.reals[0])
    return resize(run_pyramid(state, stop=n, generator=g), state.sizes[n])


def _prev_rec(state: SinGANState, n: int) -> torch.Tensor:
    """The reconstruction of scales 0..n-1, upsampled to scale n (zeros at the coarsest)."""
    if n == 0:
        return torch.zeros_like(state.reals[0])
    return resize(run_pyramid(state, stop=n, start_scale=n), state.sizes[n])


def _relative_cost(state: SinGANState, n: int, m: int) -> float:
    """Rough cost of one iteration at scale m relative to scale n: pixels x width^2."""
    (hn, wn), (hm, wm) = state.sizes[n], state.sizes[m]
    cn, cm = state.config.channels_at(n), state.config.channels_at(m)
    return (hm * wm * cm * cm) / (hn * wn * cn * cn)


def format_progress(state: SinGANState, n: int, it: int, m: dict[str, float], eta_scale: float,
                    eta_total: float) -> str:
    cfg = state.config
    h, w = state.sizes[n]
    return (f"scale {n + 1}/{state.num_scales} ({h}x{w}, {cfg.channels_at(n)} ch) iter {it:>5}/{state.iters_at(n)}"
            f" | loss_d {m['loss_d']:+.4f} loss_g {m['loss_g']:+.4f} rec {m['loss_rec']:.4f} "
            f"gp {m['gradient_penalty']:.4f} | {m['s_per_iter']:.3f} s/it | "
            f"scale ETA {hms(eta_scale)} total ETA ~{hms(eta_total)}")


def train_scale(state: SinGANState, *, on_log: Callback | None = None, should_stop: Callable[[], bool] | None = None,
                print_fn: Callable[[str], None] | None = print) -> dict[str, float] | None:
    """Train the next scale n = state.trained_scales, freeze and append it; returns its last metrics.

    If should_stop() turns true mid-scale, the partial scale is dropped (state unchanged) and None returned.
    """
    cfg, n, dev = state.config, state.trained_scales, state.device
    iters = state.iters_at(n)
    decay_iter, bn_freeze_iter = round(cfg.lr_decay_at * iters), round(cfg.bn_freeze_at * iters)
    G, D = build_scale(cfg, n)
    if n > 0 and cfg.channels_at(n) == cfg.channels_at(n - 1):   # init from the previous scale
        G.load_state_dict(state.Gs[n - 1].state_dict())
        D.load_state_dict(state.Ds[n - 1].state_dict())
    G, D = G.to(dev).train(), D.to(dev).train()
    real = state.reals[n]                                            # (1, C, H_n, W_n)
    rec_prev = _prev_rec(state, n)
    amp = 1.0 if n == 0 else noise_amp_for(real, rec_prev, cfg.noise_amp_factor)
    z_rec = rec_noise(state, n)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=cfg.betas)
    sched_d = torch.optim.lr_scheduler.MultiStepLR(opt_d, [decay_iter], cfg.lr_gamma)
    sched_g = torch.optim.lr_scheduler.MultiStepLR(opt_g, [decay_iter], cfg.lr_gamma)
    g = torch.Generator().manual_seed(cfg.seed * 1000 + n + 1)   # noise of scale n; the global RNG is untouched
    acc: dict[str, float] = {}
    latest: dict[str, float] = {}
    window, t_window = 0, time.perf_counter()
    for it in range(1, iters + 1):
        if should_stop and should_stop():
            return None
        if it == bn_freeze_iter + 1:
            G.eval()   # BatchNorm on its running statistics from now on, as when sampling; weights still train
        z = amp * draw_noise(n, 1, state.sizes[n], cfg.channels, g, dev)   # one noise map per iteration
        for _ in range(cfg.d_steps):
            prev = _prev_random(state, n, g)
            with torch.no_grad():
                fake = G(z, prev)
            opt_d.zero_grad(set_to_none=True)
            loss, stats = d_loss(D, real, fake, cfg, g)
            loss.backward()
            opt_d.step()
        grad_d = _grad_norm(D)
        for _ in range(cfg.g_steps):   # the same (z, prev) as the last D step; fake recomputed after each update
            opt_g.zero_grad(set_to_none=True)
            adv = g_adv_loss(D, G(z, prev), cfg)
            rec = reconstruction_loss(G(amp * z_rec, rec_prev), real, cfg) if cfg.alpha > 0 else adv.new_zeros(())
            (adv + rec).backward()
            opt_g.step()
        D.zero_grad(set_to_none=True)   # G's backward also filled D's grads; they are never applied
        sched_d.step()
        sched_g.step()
        step = {"loss_d": float(stats["loss_d"]), "gradient_penalty": float(stats["gradient_penalty"]),
                "loss_g": float(adv.detach()), "loss_rec": float(rec.detach()), "grad_norm_d": grad_d, "grad_norm_g": _grad_norm(G)}
        for k, v in step.items():
            acc[k] = acc.get(k, 0.0) + v
        window += 1
        if (cfg.log_every and it % cfg.log_every == 0) or it == iters:
            now = time.perf_counter()
            latest = {k: v / window for k, v in acc.items()}
            latest["s_per_iter"] = (now - t_window) / window
            latest.update(scale=float(n), iter=float(it), noise_amp=amp, step=float(state.iters_before(n) + it))
            state.history.append(dict(latest))
            if print_fn:
                eta_scale = (iters - it) * latest["s_per_iter"]
                rest = sum(_relative_cost(state, n, m) * state.iters_at(m) for m in range(n + 1, state.num_scales))
                print_fn(format_progress(state, n, it, latest, eta_scale, eta_scale + rest * latest["s_per_iter"]))
            if on_log:
                on_log(state, latest)
            acc, window, t_window = {}, 0, time.perf_counter()
    state.Gs.append(freeze(G))
    state.Ds.append(freeze(D))
    state.noise_amps.append(amp)
    return latest


def fit(cfg: SinGANConfig, *, state: SinGANState | None = None, on_log: Callback | None = None,
        on_scale_end: Callback | None = None, should_stop: Callable[[], bool] | None = None,
        print_fn: Callable[[str], None] | None = print) -> SinGANState:
    """Train a SinGAN pyramid coarse to fine and return it: a fresh one on cfg.image when `state` is None, else
    the remaining scales of `state` (e.g. a checkpoint's; it must have been built with cfg).

    on_log(state, metrics) gets window-averaged METRIC_NAMES plus scale, iter, step, noise_amp;
    on_scale_end(state, metrics) runs after each scale is frozen (a natural checkpoint point);
    should_stop() turning true ends training after dropping the unfinished scale.
    """
    if state is None:
        state = init_state(load_image(cfg.image, cfg.channels), cfg.validate())
        if print_fn:
            print_fn(f"SinGAN on {cfg.image}: {state.num_scales} scales, "
                     f"{' -> '.join(f'{h}x{w}' for h, w in state.sizes)}")
    elif state.config != cfg:
        raise ValueError("state: expected a pyramid built with the given config; continue a checkpoint with "
                         "fit(state.config, state=state)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    while not state.done:
        if should_stop and should_stop():
            break
        n = state.trained_scales
        if print_fn:
            h, w = state.sizes[n]
            print_fn(f"scale {n + 1}/{state.num_scales}: {h}x{w}, {cfg.channels_at(n)} channels, "
                     f"{state.iters_at(n)} iterations")
        t_scale = time.perf_counter()
        metrics = train_scale(state, on_log=on_log, should_stop=should_stop, print_fn=print_fn)
        if metrics is None:
            break
        metrics = {**metrics, "scale_seconds": time.perf_counter() - t_scale}
        if print_fn:
            print_fn(f"scale {n + 1}/{state.num_scales} done in {hms(metrics['scale_seconds'])}: "
                     f"noise_amp {state.noise_amps[-1]:.4f}, elapsed {hms(time.perf_counter() - t0)}")
        if on_scale_end:
            on_scale_end(state, metrics)
    return state
