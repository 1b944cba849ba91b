"""`transsrgan bench quality`: TransSRGAN against the DCGAN baseline at equal wall-clock training budget.

Both models train through the same trainer (DFAGD on config.spark by default, or the reference trainer with
engine="local" and as many torch threads as DFAGD uses cores), on the same data, resolution, global batch,
discriminator, loss and optimiser settings: only model.arch (the generator) differs. Each gets `minutes` of
training, in round-robin slices (A, B, A, B, ...) so both see the same background load; each slice's clock
starts at the trainer's first should_stop() call, i.e. after Spark's workers are up, so start-up costs count
for neither. A few EMA-generator snapshots are taken during the budget and evaluated afterwards (cheap n,
KID/PRDC only: no 2048x2048 sqrtm) for the metric curves over time; the final generators are evaluated with
models.metrics.evaluate_images on the same n against the same fixed real subset. Returns the `bench quality`
JSON dict (plus details); the caller logs to MLflow.
"""

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models import count_params
from models.config import Config, EvalConfig, resolve_config
from models.data import ImageSet, load_dataset
from models.files import atomic_path
from models.grid import sample, to_uint8
from models.metrics import EvalResult, evaluate_images
from models.metrics.evaluate import real_subset
from models.step import GANState, build_state
from models.trainer import LocalGradSource, train

MODELS = ("transsrgan", "dcgan")
ENGINES = ("spark", "local")
SAMPLE_SEED = 0           # noise seed of every evaluated / plotted sample
CURVE_METRICS = ("kid", "prdc")   # unbiased KID needs no sqrtm: cheap enough for several points per model
# Metrics the verdict is judged on (base names; public names carry the extractor without standard weights).
TARGET = {"fid": "lower", "kid": "lower", "recall": "no_worse", "coverage": "no_worse"}
Clock = Callable[[], float]       # seconds, monotonic (time.perf_counter; tests pass a fake one)


@dataclass
class TrainedModel:
    """One model's budgeted run: final state, throughput and EMA snapshots taken during the budget."""

    name: str
    config: Config
    state: GANState
    train_s: float                                   # seconds of training: the clock at the last stop check
    snapshots: list[tuple[float, int, nn.Module]] = field(default_factory=list)   # (t_s, step, G_ema copy)
    log_times: list[tuple[float, dict[str, float]]] = field(default_factory=list)  # (t_s, trainer metrics)
    marks: list[float] = field(default_factory=list)  # snapshot times still to take

    @property
    def iterations(self) -> int:
        return self.state.step

    @property
    def images_per_s(self) -> float:
        """Real images consumed per second by G updates: iterations x global batch / train_s."""
        return self.iterations * self.config.train.batch_size / max(self.train_s, 1e-9)


def quality_configs(preset: str = "quality32", overrides: dict[str, Any] | None = None) -> dict[str, Config]:
    """{'transsrgan': cfg, 'dcgan': cfg}: one resolved config with only model.arch differing."""
    over = {"train.steps": 10**9, "train.sample_every": 0, "train.checkpoint_every": 0, **(overrides or {})}
    over.pop("model.arch", None)
    return {name: resolve_config(preset, {**over, "model.arch": name}) for name in MODELS}


def generated(G: nn.Module, n: int, config: Config) -> np.ndarray:
    """uint8 (n, C, H, W) from fixed noise."""
    mc = config.model
    return to_uint8(sample(G, n, SAMPLE_SEED, mc.z_dim, mc.num_classes)).transpose(0, 3, 1, 2).copy()


def train_for_budget(config: Config, budget_s: float, data: ImageSet, *, engine: str = "spark", spark=None,
                     snapshots: int = 2, print_fn: Callable[[str], None] | None = print,
                     clock: Clock = time.perf_counter) -> TrainedModel:
    """Train config until budget_s wall seconds of training have passed (checked before every iteration).

    snapshots: EMA-generator copies taken at evenly spaced times inside the budget (the final one is the result).
    """
    run = start_run(config, budget_s, snapshots)
    advance(run, budget_s, data, engine=engine, spark=spark, print_fn=print_fn, clock=clock)
    return run


def start_run(config: Config, budget_s: float, snapshots: int = 2) -> TrainedModel:
    """A fresh, seeded run with snapshot times at budget_s * k / (snapshots + 1)."""
    if budget_s <= 0:
        raise ValueError(f"budget: expected > 0 seconds, got {budget_s}")
    run = TrainedModel(config.model.arch, config, build_state(config), 0.0)
    run.marks = [budget_s * (i + 1) / (snapshots + 1) for i in range(snapshots)]
    return run


def advance(run: TrainedModel, until_s: float, data: ImageSet, *, engine: str = "spark", spark=None,
            print_fn: Callable[[str], None] | None = print, clock: Clock = time.perf_counter) -> None:
    """Continue training until run.train_s >= until_s (the run's own clock: seconds of training so far).

    This call's time starts at the trainer's first should_stop(), i.e. after DFAGD's workers are up. Every check
    reads `clock` once and that one reading is the stop decision, the snapshot time and run.train_s, so
    snapshot times <= train_s and train_s >= until_s hold by construction, and train_s never goes backwards.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {ENGINES}, got {engine!r}")
    state, before, start = run.state, run.train_s, []
    if print_fn is not None:   # the trainer's ETA assumes train.steps, which a time budget does not use
        say, print_fn = print_fn, lambda m: say(m.split(" ETA ")[0])

    def elapsed() -> float:
        now = clock()
        if not start:          # the first reading starts this call's time: elapsed = before exactly
            start.append(now)
        return before + (now - start[0])

    def should_stop() -> bool:
        t = elapsed()
        while run.marks and t >= run.marks[0]:
            run.marks.pop(0)
            run.snapshots.append((t, state.step, copy.deepcopy(state.G_ema)))
        run.train_s = t
        return t >= until_s

    def on_log(_s: GANState, metrics: dict[str, float]) -> None:
        run.log_times.append((elapsed(), dict(metrics, step=float(state.step))))

    if engine == "spark":
        from spark_training.dfagd import train_dfagd

        train_dfagd(run.config, state=state, on_log=on_log, should_stop=should_stop, print_fn=print_fn,
                    spark=spark, data=data)
    else:
        old = torch.get_num_threads()
        torch.set_num_threads(run.config.train.threads
                              or run.config.spark.workers * run.config.spark.threads_per_worker)
        try:
            train(state, LocalGradSource(data, run.config), on_log=on_log, should_stop=should_stop,
                  print_fn=print_fn)
        finally:
            torch.set_num_threads(old)


def evaluate_run(run: TrainedModel, real: np.ndarray, eval_cfg: EvalConfig, *, fingerprint: str | None,
                 curve_n: int) -> tuple[EvalResult, list[dict[str, float]]]:
    """The final EMA generator on eval_cfg.n_samples; the snapshots on curve_n (KID and PRDC only)."""
    final = evaluate_images(generated(run.state.G_ema, eval_cfg.n_samples, run.config), real, config=eval_cfg,
                            fingerprint=fingerprint, seed=SAMPLE_SEED)
    curve: list[dict[str, float]] = []
    cheap = EvalConfig(**{**eval_cfg.to_dict(), "metrics": CURVE_METRICS, "n_samples": curve_n})
    for t, step, G in run.snapshots:
        res = evaluate_images(generated(G, curve_n, run.config), real, config=cheap, fingerprint=fingerprint,
                              seed=SAMPLE_SEED)
        curve.append({"t_s": round(t, 2), "step": step, "n": curve_n, **res.metrics})
    curve.append({"t_s": round(run.train_s, 2), "step": run.iterations, "n": eval_cfg.n_samples,
                  **{k: v for k, v in final.metrics.items()}})
    return final, curve


def verdict(metrics: dict[str, dict[str, float]], standard_weights: bool) -> dict[str, Any]:
    """Per target metric: which model is better, and whether TransSRGAN meets the target overall (better on the
    Frechet distance and KID, no worse on recall and coverage)."""
    from models.metrics.registry import public_name

    out: dict[str, Any] = {}
    met = True
    for base, rule in TARGET.items():
        key = public_name(base, standard_weights)
        t, d = metrics["transsrgan"].get(key), metrics["dcgan"].get(key)
        if t is None or d is None:
            out[key] = "missing"
            met = False
            continue
        t_better = t < d if rule == "lower" else t > d
        out[key] = "transsrgan" if t_better else ("tie" if t == d else "dcgan")
        met &= t_better if rule == "lower" else t >= d
    out["target_met"] = met
    return out


def bench_quality(configs: dict[str, Config], minutes: float, data: ImageSet, *, data_name: str,
                  engine: str = "spark", fingerprint: str | None = None, curve_points: int = 2, curve_n: int = 64,
                  slices: int = 0, print_fn: Callable[[str], None] | None = print, clock: Clock = time.perf_counter
                  ) -> tuple[dict[str, Any], dict[str, TrainedModel]]:
    """Train every config for `minutes`, evaluate all on the same n; returns (the JSON dict, runs).

    slices: the budget is trained in this many round-robin slices per model (default: one per minute), so that
    both models see the same background load on a shared machine; DFAGD's worker start-up per slice is not
    counted in the budget.
    """
    say = print_fn or (lambda _m: None)
    first = next(iter(configs.values()))
    ev = first.eval
    for name, cfg in configs.items():
        if (cfg.model.resolution, cfg.model.channels, cfg.train.batch_size, cfg.eval) != \
                (first.model.resolution, first.model.channels, first.train.batch_size, ev):
            raise ValueError(f"{name}: resolution, channels, global batch and eval settings must equal the others'")
    if curve_points and curve_n <= ev.prdc_k:
        raise ValueError(f"curve_n: expected > eval.prdc_k ({ev.prdc_k}), got {curve_n}")
    real = real_subset(data.images, ev.n_samples)
    if len(real) < ev.n_samples:
        raise ValueError(f"n: {ev.n_samples} real images requested, the data has only {len(real)}")
    budget_s = minutes * 60.0
    slices = slices or max(1, round(minutes))
    say(f"bench quality: {', '.join(configs)} for {minutes:g} min each on {len(data)} images "
        f"({first.model.resolution}px, {first.model.channels} ch), global batch {first.train.batch_size}, "
        f"engine {engine}" + (f" ({first.spark.workers} workers on {first.spark.master})" if engine == "spark" else ""))
    runs = {name: start_run(cfg, budget_s, curve_points) for name, cfg in configs.items()}
    if engine == "spark":
        from spark_training.session import spark_session

        with spark_session(first.spark, "transsrgan-bench-quality") as spark:
            interleave(runs, budget_s, slices, data, engine, spark, print_fn, say, clock=clock)
    else:
        interleave(runs, budget_s, slices, data, engine, None, print_fn, say, clock=clock)
    models: dict[str, Any] = {}
    results: dict[str, EvalResult] = {}
    for name, run in runs.items():
        say(f"  evaluating {name} on n={ev.n_samples} (+{len(run.snapshots)} curve points on n={curve_n}) ...")
        results[name], curve = evaluate_run(run, real, ev, fingerprint=fingerprint, curve_n=curve_n)
        models[name] = {"iterations": run.iterations, "params": count_params(run.state.G),
                        "params_d": count_params(run.state.D), "images_per_s": round(run.images_per_s, 3),
                        "s_per_iter": round(run.train_s / max(run.iterations, 1), 4),
                        "train_s": round(run.train_s, 2), "metrics": results[name].metrics, "curve": curve}
    any_result = next(iter(results.values()))
    result = {"data": data_name, "minutes": minutes, "primary_metric": any_result.primary_metric_name,
              "models": models, "n": ev.n_samples, "curve_n": curve_n, "engine": engine,
              "workers": first.spark.workers, "master": first.spark.master if engine == "spark" else "local",
              "preset": first.preset, "resolution": first.model.resolution, "channels": first.model.channels,
              "global_batch": first.train.batch_size, "feature_extractor": any_result.extractor, "slices": slices,
              "higher_is_better": any_result.higher_is_better,
              "verdict": verdict({k: v["metrics"] for k, v in models.items()}, any_result.standard_weights)}
    return result, runs


def interleave(runs: dict[str, TrainedModel], budget_s: float, slices: int, data: ImageSet, engine: str, spark,
               print_fn: Callable[[str], None] | None, say: Callable[[str], None], *,
               clock: Clock = time.perf_counter) -> None:
    """Round-robin slices of budget_s / slices per model, so both see the same load on a shared machine."""
    for i in range(slices):
        # the last slice ends at budget_s itself (budget_s * k / k can miss it by one rounding step)
        until = budget_s if i + 1 == slices else budget_s * (i + 1) / slices
        for name, run in runs.items():
            advance(run, until, data, engine=engine, spark=spark, print_fn=print_fn, clock=clock)
            say(f"  {name}: {run.iterations} iterations after {run.train_s:.0f}s of training "
                f"(slice {i + 1}/{slices})")


def load_data(config: Config) -> ImageSet:
    return load_dataset(config.data.source, config.model.resolution, config.model.channels, config.data.limit)


PARAM_ROWS = (("generator params", "params", "{:,}"), ("discriminator params", "params_d", "{:,}"),
              ("iterations (G updates)", "iterations", "{:,}"), ("train seconds", "train_s", "{:.0f}"),
              ("s/iter", "s_per_iter", "{:.3f}"), ("images/s", "images_per_s", "{:.1f}"))


def markdown(result: dict[str, Any]) -> str:
    """Side-by-side table: metrics (best in bold), parameters, iterations, throughput; then the verdict."""
    names = list(result["models"])
    hib = result.get("higher_is_better", {})
    lines = [f"### Quality at equal budget: {result['minutes']:g} min each on `{result['data']}` "
             f"({result['resolution']}px, preset `{result['preset']}`, engine {result['engine']}, "
             f"{result['workers']} workers, global batch {result['global_batch']}, n = {result['n']})", "",
             "| | " + " | ".join(names) + " | better |", "|---|" + "---:|" * len(names) + "---|"]
    keys = list(result["models"][names[0]]["metrics"])
    for k in keys:
        vals = [result["models"][m]["metrics"].get(k) for m in names]
        best = (max if hib.get(k, False) else min)(v for v in vals if v is not None)
        cells = [("**{:.4g}**" if v == best else "{:.4g}").format(v) if v is not None else "-" for v in vals]
        mark = " (primary)" if k == result["primary_metric"] else ""
        lines.append(f"| {k}{mark} | " + " | ".join(cells) + f" | {'higher' if hib.get(k, False) else 'lower'} |")
    for label, key, fmt in PARAM_ROWS:
        lines.append(f"| {label} | " + " | ".join(fmt.format(result["models"][m][key]) for m in names) + " | |")
    v = result.get("verdict", {})
    lines += ["", f"Feature extractor: `{result['feature_extractor']}`. Target: TransSRGAN better on the Frechet "
              f"distance and KID, no worse on recall and coverage: **{'met' if v.get('target_met') else 'not met'}**."]
    lines += [f"- {k}: {w}" for k, w in v.items() if k != "target_met"]
    return "\n".join(lines) + "\n"


def save_figure(result: dict[str, Any], runs: dict[str, TrainedModel], real: np.ndarray, path: str | Path,
                grid_n: int = 64) -> Path:
    """Real grid next to each model's final samples (fixed noise); below, KID and loss_d against training time."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from models.grid import make_grid

    path = Path(path)
    cols = 1 + len(runs)
    fig = Figure(figsize=(4.2 * cols, 8.4), dpi=100)
    FigureCanvasAgg(fig)
    top = fig.subplots(2, cols)
    shown = np.random.default_rng(0).permutation(len(real))[:grid_n]     # data may be sorted by label: shuffle
    spread = real[shown]
    panels = [("real", spread)] + [(f"{n} ({result['models'][n]['iterations']} it)",
                                           generated(r.state.G_ema, grid_n, r.config)) for n, r in runs.items()]
    for ax, (title, images) in zip(top[0], panels):
        g = make_grid(np.ascontiguousarray(images.transpose(0, 2, 3, 1)))
        g = g[..., 0] if g.shape[-1] == 1 else g
        ax.imshow(g, cmap="gray" if g.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    kd = next((k for k in result["higher_is_better"] if k in ("kid", "kd_inception_random")), None)
    ax_m, ax_l = top[1][0], top[1][1]
    for name in runs:
        curve = result["models"][name]["curve"]
        if kd:
            ax_m.plot([c["t_s"] for c in curve if kd in c], [c[kd] for c in curve if kd in c], "o-", label=name)
        lt = runs[name].log_times
        ax_l.plot([t for t, _ in lt], [m.get("loss_d", np.nan) for _, m in lt], lw=1, label=name)
    ax_m.set_title(f"{kd or 'kid'} (EMA G) vs training time")
    ax_l.set_title("loss_d vs training time")
    for ax in (ax_m, ax_l):
        ax.set_xlabel("seconds")
        ax.grid(alpha=0.3)
        ax.legend()
    for ax in top[1][2:]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
