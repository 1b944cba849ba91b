"""`transsrgan train`: resolve the config from flags and run training (the train-transsrgan flow once it exists)."""

import argparse
import json


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


def config_from_args(args: argparse.Namespace):
    from flows.cli import UsageError
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
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    try:
        return resolve_config(args.preset, overrides, args.config)
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (validate -> train -> evaluate -> register -> promote)",
                       description="Train TransSRGAN (or the DCGAN baseline). Prints progress; ends with where "
                                   "the samples and checkpoint are.")
    add_config_options(p)
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--out", metavar="DIR", help="output folder (default $TRANSSRGAN_HOME/runs/<time>)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.dry_run:
        print(cfg.to_json())
        return 0
    from flows.local_train import train_local

    train_local(cfg, args.out)
    return 0
