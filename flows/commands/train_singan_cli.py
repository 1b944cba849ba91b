"""`transsrgan train --model singan`: map the train flags onto the train-singan flow's parameters and run it.

flows/commands/train.py calls `run_singan_from_cli(args)` when `--model singan`:
    --preset P        -> preset (tiny | demo | full)
    --data IMAGE      -> image: an image file or skimage:NAME (default skimage:hubble_deep_field)
    --steps N         -> singan.iters_per_scale (iterations per scale)
    --config FILE     -> config_file (flat, or a [singan] table)
    --set KEY=VALUE   -> SinGANConfig fields, e.g. --set max_size=96 (or singan.max_size=96)
    --require-standard-features -> allow_random_features=False
    --out DIR         -> the run's output folder; --dry-run prints the resolved SinGANConfig as JSON.
--workers and --spark-master do not apply (SinGAN trains one image in one process) and are refused.
"""

import argparse
from typing import Any

FLAGS = {"preset": "--preset", "image": "--data (singan.image)", "iters_per_scale": "--steps (singan.iters_per_scale)",
         "config_file": "--config", "overrides": "--set"}


def singan_params_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The train-singan flow's parameters from the train flags, validated the way the flow validates them."""
    from pydantic import ValidationError

    from flows.commands.train import parse_set
    from flows.errors import UsageError
    from flows.params import describe_error
    from flows.singan_params import SinGANParams

    for flag, attr in (("--workers", "workers"), ("--spark-master", "spark_master")):
        if getattr(args, attr, None):
            raise UsageError(f"{flag}: not used by --model singan (SinGAN trains one image in one process)")
    overrides = parse_set(getattr(args, "set", None))
    kwargs: dict[str, Any] = {"preset": args.preset, "iters_per_scale": getattr(args, "steps", None),
                              "config_file": getattr(args, "config", None), "overrides": overrides or None,
                              "allow_random_features": not getattr(args, "require_standard_features", False)}
    if getattr(args, "data", None):
        kwargs["image"] = args.data
    try:
        params = SinGANParams(**kwargs)
    except ValidationError as exc:
        raise UsageError(describe_error(exc, FLAGS)) from None
    return params.model_dump()


def run_singan_from_cli(args: argparse.Namespace) -> int:
    """Run the train-singan flow from `transsrgan train --model singan ...` flags; 0 on success."""
    from flows.singan_params import SinGANParams

    params = singan_params_from_args(args)
    if getattr(args, "dry_run", False):
        print(SinGANParams(**params).to_config().to_json())
        return 0
    from flows.prefect_api import prefect_api

    with prefect_api() as where:
        print(f"transsrgan train --model singan: running the train-singan flow on {where}", flush=True)
        from flows.train_singan import train_singan

        summary = train_singan(**params, out_dir=getattr(args, "out", None))
    print(report(summary, where))
    return 0


def report(s: dict[str, Any], where: str) -> str:
    """The end of the output: what happened and where to look."""
    from tasks.tracking import configure_tracking

    metrics = ", ".join(f"{k} {v:.4g}" for k, v in sorted(s["metrics"].items()))
    sizes = " -> ".join(f"{h}x{w}" for h, w in s["sizes"])
    lines = ["",
             f"run id:    {s['run_id']} ({s['num_scales']} scales {sizes} in {s['train_wall_s']:.0f}s)",
             f"metrics:   {metrics}  [features: {s['feature_extractor']}]"]
    if not s["standard_weights"]:
        lines.append("           (offline: no standard Inception weights file, so SIFID used seeded random "
                     "features and is named sifid_inception_random; see docs/evaluation.md)")
    lines += [f"version:   singan version {s['version']} registered for image {s['image']}",
              f"champion:  {s['champion_alias']} is version {s['champion_version']} "
              f"({'changed' if s['champion_changed'] else 'unchanged'}: {s['promotion_reason']}); "
              f"`champion` -> version {s['champion_version']}",
              f"samples:   {s['grid']}",
              "           transsrgan sample --model models:/singan@champion -n 16 --out singan.png --seed 0",
              f"checkpoint: {s['checkpoint']}",
              f"data gate: image validated; reports in {s['validation_dir']}",
              f"MLflow:    store {configure_tracking()}; experiment singan; `make ui` (http://127.0.0.1:5000)",
              f"Prefect:   {where}"]
    return "\n".join(lines)
