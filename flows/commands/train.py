"""`transsrgan train`: resolve the parameters from flags and run the train-transsrgan flow."""

import argparse
import json
import sys


def add_config_options(p: argparse.ArgumentParser) -> None:
    """Flags that map onto config fields; shared by train and the benchmarks."""
    p.add_argument("--preset", choices=["tiny", "demo", "full"], default="demo",
                   help="starting point: tiny (tests, seconds), demo (default, minutes on 2 CPU cores), full (thesis scale)")
    p.add_argument("--data", metavar="PATH", help="data.source: 'digits' (default), an image folder or a manifest.parquet")
    p.add_argument("--steps", type=int, metavar="N", help="train.steps: generator updates")
    p.add_argument("--workers", type=int, metavar="N", help="spark.workers: DFAGD workers")
    p.add_argument("--spark-master", metavar="URL", help="spark.master, e.g. local[2], local-cluster[2,1,1024], spark://h:7077")
    p.add_argument("--model", choices=["transsrgan", "dcgan", "singan"], default="transsrgan", help="model.arch")
    p.add_argument("--config", metavar="FILE", help="JSON or TOML file of config overrides, applied after the preset")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="any config field as a dotted key, e.g. --set train.lr_g=1e-4 (JSON values); repeatable")


def parse_set(items: list[str]) -> dict:
    """--set KEY=VALUE items as {dotted key: JSON value, or the raw string where it is not JSON}."""
    from flows.errors import UsageError

    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def config_from_args(args: argparse.Namespace):
    from flows.errors import UsageError
    from models.config import ConfigError, resolve_config

    overrides: dict = {}
    if args.data:
        overrides["data.source"] = args.data
    if args.steps is not None:
        overrides["train.steps"] = args.steps
    if args.workers is not None:
        overrides["spark.workers"] = args.workers
    if args.spark_master:
        overrides["spark.master"] = args.spark_master
    if args.model in ("transsrgan", "dcgan") and args.model != "transsrgan":
        overrides["model.arch"] = args.model
    overrides.update(parse_set(args.set))
    try:
        return resolve_config(args.preset, overrides, args.config)
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="run the train-transsrgan flow (validate -> train -> evaluate -> register -> promote)",
                       description="Runs the train-transsrgan Prefect flow: the data gate, DFAGD training on Spark, "
                                   "evaluation, registration and promotion in MLflow. Prints progress; ends with "
                                   "the run id, the registered version, the champion and where to look. Skips "
                                   "training when the data and config are unchanged since the last completed run "
                                   "(--force trains anyway).")
    add_config_options(p)
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--out", metavar="DIR", help="output folder (default $TRANSSRGAN_HOME/runs/<flow run name>)")
    p.add_argument("--force", action="store_true", help="train even if data and config are unchanged")
    p.add_argument("--engine", choices=["spark", "local"], default="spark",
                   help="spark: DFAGD on Spark (default); local: the single-process reference trainer")
    p.add_argument("--resume", nargs="?", const="latest", metavar="RUN",
                   help="continue an interrupted run from its last checkpoint, in the same folder and MLflow run: "
                        "a run folder, a checkpoint file, or nothing for the latest run under "
                        "$TRANSSRGAN_HOME/runs; its config and data are the checkpoint's, so config flags are refused")
    p.add_argument("--require-standard-features", action="store_true",
                   help="fail evaluation instead of falling back to random Inception weights when the standard "
                        "weights file is missing")
    p.set_defaults(func=run)


# CLI names for the flow parameters, so that errors name the flag the user typed.
FLAGS = {"preset": "--preset", "data": "--data (data.source)", "steps": "--steps (train.steps)",
         "workers": "--workers (spark.workers)", "spark_master": "--spark-master (spark.master)",
         "model": "--model (model.arch)", "config_file": "--config", "overrides": "--set", "resume": "--resume"}


def params_from_args(args: argparse.Namespace) -> dict:
    """The flow's parameters from the flags, validated the way the flow validates them."""
    from pydantic import ValidationError

    from flows.errors import UsageError
    from flows.params import TrainParams, describe_error

    overrides = parse_set(args.set)
    try:
        params = TrainParams(preset=args.preset, data=args.data, steps=args.steps, workers=args.workers,
                             spark_master=args.spark_master,
                             model=None if args.model == "transsrgan" else args.model,
                             config_file=args.config, overrides=overrides or None, force=args.force,
                             allow_random_features=not args.require_standard_features, engine=args.engine,
                             resume=args.resume)
    except ValidationError as exc:
        raise UsageError(describe_error(exc, FLAGS)) from None
    return params.model_dump()


def run(args: argparse.Namespace) -> int:
    from flows.params import TrainParams

    if args.model == "singan":   # its own flow, train-singan, with its own parameters
        from flows.commands.train_singan_cli import run_singan_from_cli

        return run_singan_from_cli(args)
    params = params_from_args(args)
    if args.dry_run:
        print(TrainParams(**params).to_config().to_json())
        return 0
    from flows.prefect_api import prefect_api

    with prefect_api() as where:
        print(f"transsrgan train: running the train-transsrgan flow on {where}", flush=True)
        from flows.train_transsrgan import train_transsrgan

        try:
            summary = train_transsrgan(**params, out_dir=args.out)
        except Exception as exc:  # the flow run's log above has the traceback; end with one line
            print(f"transsrgan train: the train-transsrgan flow failed: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            return 1
    print(report(summary, where))
    return 0


def _speed_line(t: dict) -> list[str]:
    """Training speed, and the speed-up over one DFAGD worker when the run measured it."""
    if "s_per_iter" not in t:
        return []
    line = f"speed:     {t['s_per_iter']:.3f} s/iter, {t.get('images_per_s', 0):.0f} images/s"
    if "speedup_vs_1_worker" in t:
        line += (f"; DFAGD speed-up vs 1 worker {t['speedup_vs_1_worker']:.2f} "
                 f"(efficiency {t['efficiency']:.2f}, measured before training)")
    return [line]


def report(s: dict, where: str) -> str:
    """The end of the output: what happened and where to look."""
    from tasks.tracking import configure_tracking

    lines = [""]
    if s["skipped"]:
        lines += [f"skipped training: {s['reason']}",
                  f"champion: version {s['champion_version'] or '-'}; run with --force to train anyway"]
    else:
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in sorted(s["metrics"].items()))
        lines += [f"run id:    {s['run_id']} ({s['steps']} steps in {s['train_wall_s']:.0f}s)",
                  f"metrics:   {metrics}  [features: {s['feature_extractor']}]",
                  f"version:   {s['version']} registered",
                  f"champion:  version {s['champion_version']} "
                  f"({'changed' if s['champion_changed'] else 'unchanged'}: {s['promotion_reason']})",
                  *_speed_line(s["training"]),
                  f"samples:   {s['grid']}",
                  f"checkpoint: {s['checkpoint']}"]
    lines += [f"data gate: {s['n_valid']} valid, {s['n_quarantined']} quarantined; reports in {s['validation_dir']}",
              f"MLflow:    store {configure_tracking()}; compare runs with `make ui` (http://127.0.0.1:5000)",
              f"Prefect:   {where}"]
    return "\n".join(lines)
