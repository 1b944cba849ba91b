"""`transsrgan bench quality`: TransSRGAN vs two DCGANs at equal wall-clock budget over seeds, logged to MLflow.

data gate -> train each model for --minutes per seed (DFAGD by default) -> evaluate on the same n -> mean ± sd,
verdicts -> JSON, Markdown, figure; MLflow: one parent run (experiment `transsrgan-bench`) with one child run per
model and seed.
"""

import argparse
import json
import math
import time
from pathlib import Path

from flows.cli import tracking_uri
from flows.commands.outputs import REFUSAL, check_report, check_writable
from models.paths import user_path

EXPERIMENT = "transsrgan-bench"   # kept apart from `transsrgan`, whose runs are registry candidates
COMMAND = "bench quality"         # what the output folders' ledgers record for these reports


def _minutes(zero_allowed: bool):
    """An argparse type for a finite number of minutes, > 0 (or >= 0 where zero_allowed: 0 turns a step off)."""
    def parse(value: str) -> float:
        try:
            x = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of minutes, got {value!r}") from None
        if not (0 <= x if zero_allowed else 0 < x) or x == math.inf:
            raise argparse.ArgumentTypeError(f"expected a finite number {'>=' if zero_allowed else '>'} 0 of "
                                             f"minutes, got {value}")
        return x
    return parse


def _names(value: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in value.split(",") if x.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma list of recipe names, got {value!r}")
    return names


def _int_at_least(lo: int):
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
        if n < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {n}")
        return n
    return parse


def register(bench_sub: argparse._SubParsersAction) -> None:
    from models.config import PRESETS

    p = bench_sub.add_parser("quality", help="TransSRGAN vs two DCGANs at equal wall-clock budget over seeds",
                             description="Runs the data gate, trains TransSRGAN, the DCGAN baseline and a DCGAN "
                                         "with TransSRGAN's generator parameter count (within 10%) for the same "
                                         "wall-clock budget each, once per training seed, through the same "
                                         "trainer (DFAGD on Spark by default), on the same data, resolution and "
                                         "global batch (only the generator differs), then evaluates all on the "
                                         "same n (on the digits with the digit classifier's metrics; fd_digits is "
                                         "primary). Reports mean ± sd over the seeds and a verdict per metric: "
                                         "better/worse when the means differ by more than 2 pooled sd, else tie. "
                                         "Writes JSON, a Markdown table and a figure; logs a parent MLflow run "
                                         f"with one child per model and seed (experiment {EXPERIMENT}). First, "
                                         "every model gets the same recipe search (each recipe for "
                                         "--search-minutes on --search-seeds seeds of its own; the best mean "
                                         "primary metric wins), so that none is judged with a recipe tuned for "
                                         "another. Time: 3 models x (recipes x search seeds x search minutes + "
                                         "seeds x minutes) of training, plus evaluation.")
    p.add_argument("--data", default="digits", metavar="PATH", help="'digits' (default) or an image folder")
    p.add_argument("--minutes", type=_minutes(zero_allowed=False), default=8.0, metavar="M",
                   help="training budget per model and seed in wall-clock minutes (default 8)")
    p.add_argument("--seeds", type=_int_at_least(1), default=3, metavar="K",
                   help="training seeds per model: train.seed, +1, ..., K in all (default 3); mean ± sd over them")
    p.add_argument("--search-minutes", type=_minutes(zero_allowed=True), default=1.0, metavar="M",
                   help="recipe search: minutes per model and recipe (default 1; 0: every model keeps the preset's "
                        "recipe)")
    p.add_argument("--search-seeds", type=_int_at_least(1), default=1, metavar="S",
                   help="recipe search: seeds per model and recipe, scored by the mean (default 1; more seeds let "
                        "the search see a recipe that collapses now and then, at S times the search's time)")
    p.add_argument("--recipes", type=_names, metavar="A,B",
                   help="recipes the search tries (default all: quality32, demo, thesis_wgan_gp, dcgan_paper)")
    p.add_argument("--json", metavar="FILE", help="write the result JSON here (default OUT/bench_quality.json)")
    p.add_argument("--markdown", metavar="FILE", help="write the Markdown table here (default OUT/bench_quality.md)")
    p.add_argument("--figure", metavar="FILE", help="write the figure PNG here (default OUT/bench_quality.png); for "
                                                    f"--json, --markdown and --figure: {REFUSAL}")
    p.add_argument("--out", metavar="DIR", help="output folder (default $TRANSSRGAN_HOME/bench/quality-<time>)")
    p.add_argument("--n", type=_int_at_least(8), metavar="N",
                   help="eval.n_samples: generated and real images per evaluation (default: the preset's)")
    p.add_argument("--workers", type=_int_at_least(1), metavar="N", help="spark.workers: DFAGD workers")
    p.add_argument("--spark-master", metavar="URL", help="spark.master (default: the preset's, local[*])")
    p.add_argument("--preset", choices=sorted(PRESETS), default="quality32",
                   help="config for both models (default quality32: digits at 32x32; rgb64 for 64x64 RGB folders)")
    p.add_argument("--engine", choices=["spark", "local"], default="spark",
                   help="spark: DFAGD (default); local: the reference trainer with workers x threads torch threads")
    p.add_argument("--curve-points", type=_int_at_least(0), default=2, metavar="K",
                   help="EMA snapshots per model inside the budget, evaluated afterwards for the curves (default 2)")
    p.add_argument("--curve-n", type=_int_at_least(8), default=64, metavar="N",
                   help="images per curve point (KID and PRDC only; default 64)")
    p.add_argument("--slices", type=_int_at_least(1), metavar="S",
                   help="train the budget in S round-robin slices per model, so both see the same machine load "
                        "(default: one per minute)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="any config field for both models, e.g. --set train.lr_g=1e-4 (JSON values); repeatable")
    p.add_argument("--require-standard-features", action="store_true",
                   help="fail instead of using seeded random Inception weights when the standard file is missing")
    p.add_argument("--tracking-uri", metavar="URI", type=tracking_uri, help="MLflow store (default $MLFLOW_TRACKING_URI, else embedded)")
    p.set_defaults(func=run)


def _overrides(args: argparse.Namespace) -> dict:
    from flows.cli import parse_set

    over = parse_set(args.set)
    if args.n is not None:
        over["eval.n_samples"] = args.n
    if args.workers is not None:
        over["spark.workers"] = args.workers
    if args.spark_master:
        over["spark.master"] = args.spark_master
    over["eval.allow_random_features"] = not args.require_standard_features
    return over


def run(args: argparse.Namespace) -> int:
    from flows.errors import UsageError
    from models.config import ConfigError

    if args.data != "digits" and not user_path(args.data).is_dir():
        raise UsageError(f"--data: expected 'digits' or an existing folder of images, got {args.data!r}")
    from flows.cli import require_checkout

    require_checkout("benchmarks")
    from benchmarks.quality import RECIPES, quality_configs

    unknown = [r for r in args.recipes or () if r not in RECIPES]
    if unknown:
        raise UsageError(f"--recipes: expected names from {', '.join(RECIPES)}, got {', '.join(unknown)}")
    try:
        configs = quality_configs(args.preset, _overrides(args))
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    from models.paths import data_home

    for flag in ("out", "json", "markdown", "figure"):   # as given: '' is a bad path, not "the default"
        check_writable(getattr(args, flag), f"--{flag}", folder=flag == "out")
    out = Path(args.out) if args.out else data_home() / "bench" / time.strftime("quality-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": Path(args.json or out / "bench_quality.json"),
             "markdown": Path(args.markdown or out / "bench_quality.md"),
             "figure": Path(args.figure or out / "bench_quality.png")}
    for key, path in paths.items():        # refuse a user's file before the long part runs
        check_report(str(path), f"--{key}", COMMAND)
    result = bench_and_log(args, configs, out, paths)
    print(Path(paths["markdown"]).read_text())
    print(f"wrote {paths['json']}, {paths['markdown']}, {paths['figure']}; MLflow parent run {result['mlflow_run_id']} "
          f"(experiment {EXPERIMENT})")
    return 0


def bench_and_log(args: argparse.Namespace, configs: dict, out: Path, paths: dict[str, Path]) -> dict:
    """Gate -> bench -> files, inside a parent MLflow run with one child run per model."""

    import mlflow
    from mlflow.tracking import MlflowClient

    from benchmarks.quality import RECIPES, bench_quality, generated, load_data, real_subset
    from benchmarks.quality_report import markdown, save_figure
    from flows.errors import UsageError
    from models.files import OutputFolder, write_output
    from models.metrics import InceptionWeightsError
    from tasks.data_gate import DataGateError, run_data_gate
    from tasks.evaluate import data_domain
    from tasks.tracking import configure_tracking, ensure_experiment, run_tags

    recipes = args.recipes or tuple(RECIPES)
    first = next(iter(configs.values()))
    try:
        gate = run_data_gate(args.data, out / "validation", first.data, first.model.resolution)
    except DataGateError as exc:
        raise UsageError(f"--data: {exc}") from exc
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise UsageError(f"--data: {exc}") from exc
    print(f"data gate: {gate.n_valid} valid, {gate.n_quarantined} quarantined (fingerprint {gate.fingerprint})")
    configs = {k: c.updated({"data.source": str(gate.manifest_path)})
               for k, c in configs.items()}
    first = next(iter(configs.values()))
    data = load_data(first)

    configure_tracking(args.tracking_uri)
    exp_id = ensure_experiment(EXPERIMENT)
    client = MlflowClient()
    tags = run_tags(first, gate.fingerprint, gate.n_valid, {"bench": "quality", "engine": args.engine})
    with mlflow.start_run(experiment_id=exp_id, run_name=f"bench-quality-{out.name}", tags=tags) as parent:
        domain = data_domain(str(gate.manifest_path))
        mlflow.log_params({"minutes": args.minutes, "seeds": args.seeds, "data": args.data, "preset": args.preset,
                           "engine": args.engine, "eval.n_samples": first.eval.n_samples, "curve_points": args.curve_points,
                           "curve_n": args.curve_n, "spark.workers": first.spark.workers,
                           "search_minutes": args.search_minutes, "search_seeds": args.search_seeds,
                           "recipes": ",".join(recipes),
                           "train.batch_size": first.train.batch_size, "model.resolution": first.model.resolution})
        for report in (gate.validation_json, gate.quarantine_path):
            mlflow.log_artifact(report, "validation")
        try:
            result, runs = bench_quality(configs, args.minutes, data, data_name=args.data, engine=args.engine,
                                         fingerprint=gate.fingerprint, seeds=args.seeds, domain=domain,
                                         curve_points=args.curve_points, curve_n=args.curve_n,
                                         slices=args.slices or 0, search_minutes=args.search_minutes,
                                         recipes=recipes, search_seeds=args.search_seeds)
        except InceptionWeightsError as exc:
            raise UsageError(f"--require-standard-features: {exc}") from exc
        result["mlflow_run_id"] = parent.info.run_id
        real = real_subset(data.images, first.eval.n_samples)
        write_output(paths["json"], json.dumps(result, indent=2), COMMAND)
        write_output(paths["markdown"], markdown(result), COMMAND)
        grids = {name: generated(rs[0].state.G_ema, 64, rs[0].config) for name, rs in runs.items()}   # first seed
        with OutputFolder(paths["figure"].parent, COMMAND, replace=False) as folder:
            save_figure(result, grids, real, folder.claim(paths["figure"].name))
        for name, seed_runs in runs.items():
            for run, record in zip(seed_runs, result["models"][name]["runs"]):
                record["mlflow_run_id"] = _log_child(client, exp_id, parent.info.run_id, name, run, record, result,
                                                     gate, out)
        write_output(paths["json"], json.dumps(result, indent=2), COMMAND)
        mlflow.set_tag("feature_extractor", result["feature_extractor"])
        mlflow.set_tag("target_met", str(all(result["target"].values())).lower())
        for pair, met in result["target"].items():
            mlflow.set_tag(f"target_met.{pair}", str(met).lower())
        mlflow.log_metrics({f"{name}.{k}{suffix}": s[part] for name, m in result["models"].items()
                            for k, s in {**m["metrics"], "iterations": m["iterations"],
                                         "images_per_s": m["images_per_s"]}.items()
                            for suffix, part in (("", "mean"), (".sd", "sd"))})
        search = result["recipe_search"]
        if search:
            mlflow.log_metrics({f"search.{name}.{r}.{search['metric']}": v for name, m in search["models"].items()
                                for r, v in m["scores"].items()})
            for name, m in search["models"].items():
                mlflow.set_tag(f"recipe.{name}", m["best"])
        for path in paths.values():
            mlflow.log_artifact(str(path))
    return result


def _log_child(client, exp_id: str, parent_id: str, name: str, run, record: dict, result: dict, gate,
               out: Path) -> str:
    """One child run per model and seed: the config as params, training history as metrics, its eval metrics
    (record: its entry of result["models"][name]["runs"]), grid, checkpoint."""
    import numpy as np
    from mlflow.entities import Param

    from benchmarks.quality import generated
    from models.checkpoint import save_checkpoint
    from models.grid import make_grid, save_png
    from tasks.sink import MlflowSink
    from tasks.tracking import run_tags

    seed = run.config.train.seed
    tags = {**run_tags(run.config, gate.fingerprint, gate.n_valid, {"bench": "quality", "model": name}),
            "mlflow.parentRunId": parent_id, "feature_extractor": result["feature_extractor"],
            "recipe": result["models"][name]["recipe"] or "preset"}
    child = client.create_run(exp_id, run_name=f"{name}-seed{seed}", tags=tags)
    cid = child.info.run_id
    params = [Param(k, "null" if v is None else str(list(v) if isinstance(v, tuple) else v))
              for k, v in run.config.flat().items()]
    client.log_batch(cid, params=params)
    folder = out / f"{name}-seed{seed}"
    with MlflowSink(cid, checkpoint_dir=folder, print_fn=None) as sink:
        for _t, m in run.log_times:
            sink.log_metrics({k: v for k, v in m.items() if k != "step"}, step=int(m["step"]))
        for c in record["curve"]:
            sink.log_metrics({f"curve.{k}": v for k, v in c.items() if k not in ("step", "n")}, step=int(c["step"]))
        sink.log_metrics({**record["metrics"], **{k: record[k] for k in ("iterations", "images_per_s", "train_s",
                                                                         "s_per_iter")}}, step=run.iterations)
        grid = np.ascontiguousarray(generated(run.state.G_ema, 64, run.config).transpose(0, 2, 3, 1))
        sink.log_artifact(save_png(make_grid(grid), folder / f"step_{run.iterations:06d}.png", scale=2), "samples")
        sink.log_artifact(save_checkpoint(run.state, folder / "checkpoint.pt"), "checkpoints")
    client.set_terminated(cid, "FINISHED")
    return cid
