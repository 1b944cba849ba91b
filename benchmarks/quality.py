"""`transsrgan bench quality`: TransSRGAN against two DCGANs at equal wall-clock budget, over several seeds.

The models: TransSRGAN, the project's DCGAN (model.dcgan_channels as configured) and a cost-matched DCGAN whose
generator has TransSRGAN's parameter count within 10 % (matched_dcgan_channels). All train through the same
trainer (DFAGD on config.spark by default, or the reference trainer with engine="local" and as many torch threads
as DFAGD uses cores), on the same data, resolution, global batch, discriminator, loss and optimiser settings:
only the generator differs. Each gets `minutes` of training per training seed, in round-robin slices (A, B, C,
A, B, C, ...) so the models of a seed see the same background load; each slice's clock starts at the trainer's
first should_stop() call, i.e. after Spark's workers are up, so start-up costs count for none. A few EMA
snapshots per run are evaluated afterwards on a cheap n (KID/PRDC and the domain's metrics; no 2048x2048 sqrtm)
for the curves; the final generators with models.metrics.evaluate_images on the same n against the same fixed
real subset, with floors and, on the digits, the digit metrics. benchmarks.quality_report turns the runs into
mean and sd per metric, the verdicts, the Markdown table and the figure; the caller logs to MLflow.

Recipes: before the seeds, `search_recipes` gives every model the same search budget (each recipe of RECIPES for
the same minutes, on a seed no benchmark run uses) and keeps the recipe with the best primary metric, so that no
model is judged with a recipe tuned for another (the presets' recipes were tuned for TransSRGAN).
"""

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from models import count_params
from models.config import Config, EvalConfig, resolve_config
from models.data import ImageSet, load_dataset
from models.grid import sample, to_uint8
from models.metrics import EvalResult, evaluate_images
from models.metrics.evaluate import real_subset, real_subsets  # noqa: F401 - real_subset: callers' one import
from models.step import GANState, build_state
from models.trainer import LocalGradSource, train

MODELS = ("transsrgan", "dcgan", "dcgan_matched")   # dcgan: the project's DCGAN; _matched: TransSRGAN's param count
ENGINES = ("spark", "local")
SAMPLE_SEED = 0           # noise seed of every evaluated / plotted sample
CURVE_METRICS = ("kid", "prdc")   # unbiased KID needs no sqrtm: cheap enough for several points per model
PARAM_TOLERANCE = 0.10    # the matched DCGAN's generator has TransSRGAN's parameter count within this fraction
Clock = Callable[[], float]       # seconds, monotonic (time.perf_counter; tests pass a fake one)
# What a recipe sets: the loss, its regulariser and the optimiser (train.*); never the data, batch or model size.
RECIPE_FIELDS = ("loss", "penalty", "gp_weight", "n_critic", "reg_every", "lr_g", "lr_d", "betas", "ema_decay",
                 "ema_start")
# The recipes the search tries for every model: three presets' (each tuned for TransSRGAN: quality32's NS + R1,
# the demo's faster NS + lazy R1, the thesis' WGAN-GP) and DCGAN's own from its paper (NS loss, no penalty, Adam
# lr 2e-4, beta1 0.5), with quality32's EMA so that every model is scored through the same kind of EMA generator.
RECIPES: dict[str, str | dict[str, Any]] = {
    "quality32": "quality32",
    "demo": "demo",
    "thesis_wgan_gp": "thesis32",
    "dcgan_paper": {"loss": "ns", "penalty": "none", "gp_weight": 0.0, "n_critic": 1, "reg_every": 1, "lr_g": 2e-4,
                    "lr_d": 2e-4, "betas": (0.5, 0.999), "ema_decay": 0.98, "ema_start": 20},
}
SEARCH_SEED_OFFSET = 1000   # the search trains on train.seed + this: a seed none of the benchmark's runs uses


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
    """{'transsrgan', 'dcgan', 'dcgan_matched'}: one resolved config; only model.arch differs, and for
    dcgan_matched also model.dcgan_channels (matched_dcgan_channels)."""
    over = {"train.steps": 10**9, "train.sample_every": 0, "train.checkpoint_every": 0, **(overrides or {})}
    over.pop("model.arch", None)
    configs = {name: resolve_config(preset, {**over, "model.arch": name}) for name in MODELS[:2]}
    configs["dcgan_matched"] = configs["dcgan"].updated(
        {"model.dcgan_channels": matched_dcgan_channels(configs["transsrgan"])})
    return configs


def recipe(name: str) -> dict[str, Any]:
    """RECIPES[name] as train.* overrides of every RECIPE_FIELDS key (a preset's are read from the preset)."""
    if name not in RECIPES:
        raise ValueError(f"recipe: expected one of {', '.join(RECIPES)}, got {name!r}")
    spec = RECIPES[name]
    train_cfg = resolve_config(spec).train if isinstance(spec, str) else None
    return {f"train.{k}": getattr(train_cfg, k) if train_cfg is not None else spec[k] for k in RECIPE_FIELDS}


def generator_params(model_cfg) -> int:
    """Parameter count of the generator model_cfg describes, built on the meta device (no memory, no init)."""
    from models.dcgan import DCGANGenerator
    from models.transsrgan import TransSRGenerator

    with torch.device("meta"):
        return count_params({"transsrgan": TransSRGenerator, "dcgan": DCGANGenerator}[model_cfg.arch](model_cfg))


def matched_dcgan_channels(config: Config) -> int:
    """The model.dcgan_channels whose DCGAN generator's parameter count is nearest to the TransSRGAN generator of
    `config` (a ValueError if even that is more than PARAM_TOLERANCE away)."""
    target = generator_params(config.model.model_copy(update={"arch": "transsrgan"}))
    dcgan = config.model.model_copy(update={"arch": "dcgan"})
    lo, hi = 1, 1
    while generator_params(dcgan.model_copy(update={"dcgan_channels": hi})) < target:   # the count grows with width
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if generator_params(dcgan.model_copy(update={"dcgan_channels": mid})) < target:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda c: abs(generator_params(dcgan.model_copy(update={"dcgan_channels": c})) - target))
    got = generator_params(dcgan.model_copy(update={"dcgan_channels": best}))
    if abs(got - target) > PARAM_TOLERANCE * target:
        raise ValueError(f"model.dcgan_channels: no width gives a DCGAN generator within {PARAM_TOLERANCE:.0%} of "
                         f"TransSRGAN's {target:,} parameters (nearest: {best} channels, {got:,})")
    return best


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
                 curve_n: int, floor_real: np.ndarray | None = None,
                 domain: str | None = None) -> tuple[EvalResult, list[dict[str, float]]]:
    """The final EMA generator on eval_cfg.n_samples (with floors, and the domain's metrics); the curve: every
    snapshot and the final generator again, all on curve_n, so that every point of a curve is measured at the
    same n (KID and PRDC of eval.metrics, or eval.metrics if it has neither; and the domain's)."""
    final = evaluate_images(generated(run.state.G_ema, eval_cfg.n_samples, run.config), real, config=eval_cfg,
                            fingerprint=fingerprint, seed=SAMPLE_SEED, floor_real=floor_real, domain=domain)
    curve: list[dict[str, float]] = []
    cheap_metrics = tuple(m for m in eval_cfg.metrics if m in CURVE_METRICS) or eval_cfg.metrics
    cheap = EvalConfig(**{**eval_cfg.to_dict(), "metrics": cheap_metrics, "n_samples": curve_n})
    for t, step, G in [*run.snapshots, (run.train_s, run.iterations, run.state.G_ema)]:
        res = evaluate_images(generated(G, curve_n, run.config), real, config=cheap, fingerprint=fingerprint,
                              seed=SAMPLE_SEED, domain=domain)
        curve.append({"t_s": round(t, 2), "step": step, "n": curve_n,
                      **{k: v for k, v in res.metrics.items() if k in res.higher_is_better}})
    return final, curve


def search_metric(eval_cfg: EvalConfig, domain: str | None) -> tuple[EvalConfig, str | None]:
    """The evaluation the recipe search scores with, and its metric: on a domain with its own primary (fd_digits
    on the digits) that one, with one cheap images-only metric beside it (eval.metrics cannot be empty); else
    eval.primary_metric alone (None: read its public name from the result, which depends on the weights found)."""
    from models.metrics.registry import DOMAINS

    if domain is not None:
        return (EvalConfig(**{**eval_cfg.to_dict(), "metrics": ("msssim_diversity",), "diversity_pairs": 8}),
                DOMAINS[domain].primary)
    return EvalConfig(**{**eval_cfg.to_dict(), "metrics": (eval_cfg.primary_metric,)}), None


def search_recipes(configs: dict[str, Config], minutes: float, data: ImageSet, real: np.ndarray, *,
                   recipes: tuple[str, ...] = tuple(RECIPES), seeds: int = 1, engine: str = "spark", spark=None,
                   domain: str | None = None, fingerprint: str | None = None, floor_real: np.ndarray | None = None,
                   print_fn: Callable[[str], None] | None = print, clock: Clock = time.perf_counter
                   ) -> dict[str, Any]:
    """Each model trains with each recipe for `minutes` once per search seed (the same search budget for every
    model: len(recipes) x seeds x minutes), all runs in round-robin slices so that they share the machine's load,
    on the seeds train.seed + SEARCH_SEED_OFFSET, +1, ...; each final EMA generator is scored on eval.n_samples
    by search_metric, and a recipe's score is the mean over the seeds (a recipe that collapses on one seed pays
    for it). Returns {"minutes", "seeds", "recipes", "metric", "higher_is_better", "models": {name: {"best",
    "scores": {recipe: mean}, "seed_scores": {recipe: [one per seed]}, "iterations": {recipe: mean G updates}}}};
    ties go to the recipe listed first."""
    if not recipes:
        raise ValueError("recipes: expected at least one")
    if seeds < 1:
        raise ValueError(f"search seeds: expected >= 1, got {seeds}")
    for name in recipes:
        recipe(name)                      # an unknown name fails before any training
    say = print_fn or (lambda _m: None)
    first = next(iter(configs.values()))
    search_seeds = [first.train.seed + SEARCH_SEED_OFFSET + i for i in range(seeds)]
    budget_s = minutes * 60.0
    group = {f"{name}/{r}/{seed}": start_run(cfg.updated({**recipe(r), "train.seed": seed}), budget_s, 0)
             for seed in search_seeds for name, cfg in configs.items() for r in recipes}
    say(f"  recipe search: {len(recipes)} recipe(s) x {minutes:g} min per model on seed(s) "
        f"{', '.join(map(str, search_seeds))}: {', '.join(recipes)}")
    # at least two rounds, so that no recipe trains only at the start or the end of the search's load
    interleave(group, budget_s, max(2, round(minutes)), data, engine, spark, print_fn, say, clock=clock)
    score_cfg, metric = search_metric(first.eval, domain)
    out: dict[str, Any] = {"minutes": minutes, "seeds": search_seeds, "recipes": list(recipes), "models": {}}
    hib = False
    for name in configs:
        seed_scores: dict[str, list[float]] = {}
        iterations: dict[str, float] = {}
        for r in recipes:
            runs = [group[f"{name}/{r}/{seed}"] for seed in search_seeds]
            seed_scores[r] = []
            for run in runs:
                res = evaluate_images(generated(run.state.G_ema, score_cfg.n_samples, run.config), real,
                                      config=score_cfg, fingerprint=fingerprint, seed=SAMPLE_SEED,
                                      floor_real=floor_real, domain=domain)
                metric = metric or res.primary_metric_name
                hib = res.higher_is_better.get(metric, False)
                seed_scores[r].append(res.metrics[metric])
            iterations[r] = float(np.mean([run.iterations for run in runs]))
            say(f"  recipe search: {name} with {r}: {metric} "
                f"{' / '.join(f'{v:.4g}' for v in seed_scores[r])} after {iterations[r]:.0f} iterations")
        scores = {r: float(np.mean(v)) for r, v in seed_scores.items()}
        best = (max if hib else min)(recipes, key=lambda r: scores[r])   # the first of equal scores
        out["models"][name] = {"best": best, "scores": scores, "seed_scores": seed_scores, "iterations": iterations}
    out["metric"], out["higher_is_better"] = metric, hib
    return out


def bench_quality(configs: dict[str, Config], minutes: float, data: ImageSet, *, data_name: str,
                  engine: str = "spark", fingerprint: str | None = None, seeds: int = 3, domain: str | None = None,
                  curve_points: int = 2, curve_n: int = 64, slices: int = 0, search_minutes: float = 0.0,
                  recipes: tuple[str, ...] = tuple(RECIPES), search_seeds: int = 1,
                  print_fn: Callable[[str], None] | None = print, clock: Clock = time.perf_counter
                  ) -> tuple[dict[str, Any], dict[str, list[TrainedModel]]]:
    """Train every config for `minutes` once per training seed (train.seed, +1, ... `seeds` in all), evaluate all
    on the same n; returns (the JSON dict, {model: [one run per seed]}).

    domain: the data's domain (e.g. "digits", tasks.evaluate.data_domain) whose metrics also run; on the digits
    fd_digits is the primary metric. slices: the budget is trained in this many round-robin slices per model
    (default: one per minute), so that the models of a seed see the same background load on a shared machine;
    DFAGD's worker start-up per slice is not counted in the budget. search_minutes > 0: first search_recipes
    with `recipes` at that many minutes each on `search_seeds` seeds, then every model runs its seeds with its
    best recipe (0: every model keeps its config's recipe).
    """
    from benchmarks.quality_report import summarise, target, target_rules, verdict

    say = print_fn or (lambda _m: None)
    first = next(iter(configs.values()))
    ev = first.eval
    for name, cfg in configs.items():
        if (cfg.model.resolution, cfg.model.channels, cfg.train.batch_size, cfg.train.seed, cfg.eval) != \
                (first.model.resolution, first.model.channels, first.train.batch_size, first.train.seed, ev):
            raise ValueError(f"{name}: resolution, channels, global batch, seed and eval settings must equal the "
                             "others'")
    if seeds < 1:
        raise ValueError(f"seeds: expected >= 1, got {seeds}")
    if curve_points and curve_n <= ev.prdc_k:
        raise ValueError(f"curve_n: expected > eval.prdc_k ({ev.prdc_k}), got {curve_n}")
    real, floor_real = real_subsets(data.images, ev.n_samples)
    if len(real) < ev.n_samples:
        raise ValueError(f"n: {ev.n_samples} real images requested, the data has only {len(real)}")
    budget_s = minutes * 60.0
    slices = slices or max(1, round(minutes))
    train_seeds = [first.train.seed + i for i in range(seeds)]
    say(f"bench quality: {', '.join(configs)} for {minutes:g} min each x {seeds} seed(s) on {len(data)} images "
        f"({first.model.resolution}px, {first.model.channels} ch), global batch {first.train.batch_size}, "
        f"engine {engine}" + (f" ({first.spark.workers} workers on {first.spark.master})" if engine == "spark" else ""))
    runs: dict[str, list[TrainedModel]] = {name: [] for name in configs}
    search: dict[str, Any] = {}
    if search_minutes < 0:
        raise ValueError(f"search_minutes: expected >= 0, got {search_minutes}")
    for name in recipes:
        recipe(name)

    def train_all(spark) -> None:
        nonlocal configs
        if search_minutes > 0:
            search.update(search_recipes(configs, search_minutes, data, real, recipes=recipes, seeds=search_seeds,
                                         engine=engine,
                                         spark=spark, domain=domain, fingerprint=fingerprint, floor_real=floor_real,
                                         print_fn=print_fn, clock=clock))
            configs = {name: cfg.updated(recipe(search["models"][name]["best"])) for name, cfg in configs.items()}
            say("  recipes: " + ", ".join(f"{name} {m['best']}" for name, m in search["models"].items()))
        for seed in train_seeds:
            group = {name: start_run(cfg.updated({"train.seed": seed}), budget_s, curve_points)
                     for name, cfg in configs.items()}
            say(f"  seed {seed}")
            interleave(group, budget_s, slices, data, engine, spark, print_fn, say, clock=clock)
            for name, run in group.items():
                runs[name].append(run)

    if engine == "spark":
        from spark_training.session import spark_session

        with spark_session(first.spark, "transsrgan-bench-quality") as spark:
            train_all(spark)
    else:
        train_all(None)
    models: dict[str, Any] = {}
    any_result: EvalResult | None = None
    for name, seed_runs in runs.items():
        records = []
        for run in seed_runs:
            say(f"  evaluating {name} seed {run.config.train.seed} on n={ev.n_samples} "
                f"(+{len(run.snapshots) + 1} curve points on n={curve_n}) ...")
            any_result, curve = evaluate_run(run, real, ev, fingerprint=fingerprint, curve_n=curve_n,
                                             floor_real=floor_real, domain=domain)
            records.append({"seed": run.config.train.seed, "iterations": run.iterations,
                            "train_s": round(run.train_s, 2), "s_per_iter": round(run.train_s / max(run.iterations, 1), 4),
                            "images_per_s": round(run.images_per_s, 3), "metrics": any_result.metrics, "curve": curve})
        state = seed_runs[0].state
        models[name] = {"params": count_params(state.G), "params_d": count_params(state.D),
                        "recipe": search["models"][name]["best"] if search else None,
                        "dcgan_channels": seed_runs[0].config.model.dcgan_channels if name != "transsrgan" else None,
                        **{k: summarise([r[k] for r in records]) for k in ("iterations", "train_s", "s_per_iter",
                                                                            "images_per_s")},
                        "metrics": {k: summarise([r["metrics"][k] for r in records]) for k in records[0]["metrics"]},
                        "runs": records}
    assert any_result is not None
    hib = any_result.higher_is_better
    verdicts = verdict({k: v["metrics"] for k, v in models.items()}, hib)
    rules = target_rules(domain, any_result.standard_weights)
    result = {"data": data_name, "minutes": minutes, "seeds": train_seeds, "domain": domain,
              "primary_metric": any_result.primary_metric_name, "models": models, "n": ev.n_samples,
              "curve_n": curve_n, "engine": engine, "workers": first.spark.workers,
              "master": first.spark.master if engine == "spark" else "local", "preset": first.preset,
              "resolution": first.model.resolution, "channels": first.model.channels,
              "global_batch": first.train.batch_size, "feature_extractor": any_result.extractor, "slices": slices,
              "higher_is_better": hib, "verdict": verdicts, "target_rules": rules,
              "target": {pair: target(v, rules) for pair, v in verdicts.items()},
              "recipe_search": search or None}
    if "transsrgan" in models and "dcgan_matched" in models:
        result["param_ratio_matched"] = round(models["dcgan_matched"]["params"] / models["transsrgan"]["params"], 4)
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
