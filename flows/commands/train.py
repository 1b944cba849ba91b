"""`transsrgan train`: flags from the flows' parameter models; runs train-transsrgan, or train-singan for --model singan."""

import argparse
import sys
from pathlib import Path
from typing import Any

from flows.cli import add_params, params_from_args
from flows.params import SinGANParams, TrainParams


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="run the train-transsrgan flow (validate -> train -> evaluate -> register -> promote)",
                       description="Runs the train-transsrgan Prefect flow: the data gate, DFAGD training on Spark, "
                                   "evaluation, registration and promotion in MLflow (with --model singan: the "
                                   "train-singan flow on one image). Prints progress; ends with the run id, the "
                                   "registered version, the champion and where to look. Skips training when the "
                                   "data and config are unchanged since the last completed run (--force trains "
                                   "anyway). Every flag is a flow parameter; --set reaches any config key.")
    add_params(p, TrainParams, SinGANParams)
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    singan = args.model == "singan"
    params = params_from_args(args, SinGANParams if singan else TrainParams)
    from flows.commands.outputs import check_writable

    check_writable(params.out_dir, "--out", folder=True)
    point = None
    if getattr(params, "resume", None):
        from flows.errors import UsageError
        from tasks.runs import ResumeError, resume_point

        try:                        # before any server starts: a folder without a checkpoint is bad usage
            point = resume_point(params.resume)
        except ResumeError as exc:
            raise UsageError(str(exc)) from None
    if args.dry_run:
        config = point.config if point else params.to_config()
        print(config.to_json(config.sections()))
        return 0
    if not singan and point is None:
        _check_labels(params.to_config())
    from flows.prefect_api import prefect_api

    with prefect_api() as where:
        name = "train-singan" if singan else "train-transsrgan"
        print(f"transsrgan train: running the {name} flow on {where}", flush=True)
        if singan:
            from flows.train_singan import train_singan as flow_fn
        else:
            from flows.train_transsrgan import train_transsrgan as flow_fn
        try:   # the parameters were validated above; the flow validates them once more, as for any caller
            summary = flow_fn(**params.model_dump())
        except Exception as exc:  # the flow run's log above has the traceback; end with one line
            print(f"transsrgan train: the {name} flow failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    print(singan_report(summary, where) if singan else report(summary, where))
    return 0


def _check_labels(config) -> None:
    """A class-conditional model on data without labels fails here, in one line, before any server starts."""
    from flows.errors import UsageError
    from models.data import check_labels, source_labels

    source = config.data.source
    if not config.model.num_classes or (source != "digits" and not Path(source).exists()):
        return                                  # unconditional, or a missing path: the data gate names it
    try:
        check_labels(source_labels(source), config.model.num_classes, source)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _speed_line(t: dict) -> list[str]:
    """Training speed, and the speed-up over one DFAGD worker when the run measured it."""
    if "s_per_iter" not in t:
        return []
    line = f"speed:     {t['s_per_iter']:.3f} s/iter, {t.get('images_per_s', 0):.0f} images/s"
    if "speedup_vs_1_worker" in t:
        line += (f"; DFAGD speed-up vs 1 worker {t['speedup_vs_1_worker']:.2f} "
                 f"(efficiency {t['efficiency']:.2f}, measured before training)")
    return [line]


def report(s: dict[str, Any], where: str) -> str:
    """The end of the output: what happened and where to look."""
    from models.metrics.evaluate import quality_summary

    lines = [""]
    if s["skipped"]:
        lines += [f"skipped training: {s['reason']}",
                  f"champion: version {s['champion_version'] or '-'}; run with --force to train anyway"]
    else:
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in sorted(s["metrics"].items()))
        lines += [f"run id:    {s['run_id']} ({s['steps']} steps in {s['train_wall_s']:.0f}s)",
                  f"metrics:   {metrics}  [features: {s['feature_extractor']}]",
                  *([f"quality:   {q}"] if (q := quality_summary(s["metrics"])) else []),
                  f"version:   {s['version']} registered",
                  f"champion:  version {s['champion_version']} "
                  f"({'changed' if s['champion_changed'] else 'unchanged'}: {s['promotion_reason']})",
                  *_speed_line(s["training"]),
                  f"checkpoint: {s['checkpoint']}"]
    lines += [f"data gate: {s['n_valid']} valid, {s['n_quarantined']} quarantined; reports in {s['validation_dir']}",
              *where_to_look(s, where)]
    return "\n".join(lines)


def where_to_look(s: dict[str, Any], where: str) -> list[str]:
    """The last lines: the MLflow run's page (or `make ui` and the run id), the Prefect flow run's page when a
    Prefect server is running (else where the run was recorded), and the sample grid."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    from tasks.tracking import configure_tracking

    if s.get("mlflow_run_url"):
        mlflow = s["mlflow_run_url"]
    else:
        mlflow = f"run {s['run_id'] or '-'} in {configure_tracking()}; browse with `make ui` (http://127.0.0.1:5000)"
    ui = PREFECT_UI_URL.value() if PREFECT_API_URL.value() else None
    prefect = f"{ui.rstrip('/')}/runs/flow-run/{s['flow_run_id']}" if ui and s.get("flow_run_id") else where
    return [f"MLflow:    {mlflow}", f"Prefect:   {prefect}", *([f"samples:   {s['grid']}"] if s.get("grid") else [])]


def singan_report(s: dict[str, Any], where: str) -> str:
    """The end of the output: what happened and where to look."""
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
              f"checkpoint: {s['checkpoint']}",
              f"data gate: image validated; reports in {s['validation_dir']}",
              *where_to_look(s, where),
              "           transsrgan sample --model models:/singan@champion -n 16 --out singan.png --seed 0"]
    return "\n".join(lines)
