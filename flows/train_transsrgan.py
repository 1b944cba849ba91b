"""The train-transsrgan flow: data gate -> DFAGD on Spark -> evaluation -> registration -> promotion -> grid."""

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.artifacts import report_run
from flows.params import TrainParams, takes
from tasks.pipeline import (
    check_retrain,
    current_champion,
    evaluate_model,
    find_resume_point,
    mark_completed,
    promote_model,
    register_model,
    sample_grid,
    validate_data,
    version_metrics,
)
from tasks.registry import RunReport
from tasks.train import probe_speedup, train_model


@flow(name="train-transsrgan", description="Validate the data, train with DFAGD on Spark, evaluate, register "
      "and promote in MLflow; skips training when data and config are unchanged (unless force).")
@takes(TrainParams)
def train_transsrgan(params: TrainParams) -> dict[str, Any]:
    """Parameters: flows.params.TrainParams (None keeps the preset's value). Returns the run's summary."""
    point = find_resume_point(params.resume) if params.resume else None
    config = point.config if point else params.to_config()
    name = config.model.arch   # registered model: transsrgan (or the dcgan baseline, kept apart)

    gate = validate_data(config.data.source, config.data, config.model.resolution)
    decision = check_retrain(config, gate.fingerprint, params.force or point is not None)
    if not decision.train:
        champion = current_champion(name)
        metrics = version_metrics(name, decision.last_version) if decision.last_version else {}
        report = RunReport(name, decision.last_run_id, decision.last_version, _facts(config, gate), metrics,
                           None, champion, promoted=False, reason=decision.reason, skipped=True)
        return report_run(_summary(gate, decision, champion=champion), report, grid=None)

    speed = probe_speedup(config, gate) if params.engine == "spark" and point is None else {}
    trained = train_model(config, gate, decision, params.out_dir, params.engine, resume=point, speed=speed)
    evaluation = evaluate_model(trained.run_id, str(gate.manifest_path), config, gate.fingerprint)
    version = register_model(trained.run_id, name, evaluation, gate.fingerprint)
    promotion = promote_model(name, version, evaluation.primary_metric, config.eval.promotion_margin)
    grid = sample_grid(name, version, trained.run_id, trained.out_dir)
    mark_completed(trained.run_id)
    report = RunReport(name, trained.run_id, version, _facts(config, gate, trained, params.engine), evaluation.metrics,
                       evaluation.primary_metric, promotion["champion_version"], promotion["promoted"],
                       promotion["reason"], aliases=tuple(promotion["aliases"]), extractor=evaluation.extractor)
    return report_run(_summary(gate, decision, champion=promotion["champion_version"], trained=trained,
                               evaluation=evaluation, version=version, promotion=promotion, grid=grid), report, grid)


def _facts(config, gate, trained=None, engine: str = "spark") -> tuple[tuple[str, str], ...]:
    """The rows of the run's description above its metrics: preset, data, training, DFAGD speed-up."""
    facts = [("preset", config.preset),
             ("data", f"{config.data.source}: {gate.n_valid} valid, {gate.n_quarantined} quarantined "
                      f"(fingerprint `{gate.fingerprint[:12]}`)")]
    if trained:
        sp = config.spark
        where = f"DFAGD on `{sp.master}`, {sp.workers} workers" if engine == "spark" else "one process (local)"
        facts.append(("training", f"{config.model.arch}, {trained.steps} steps in {trained.wall_s:.0f} s; {where}"))
        t = trained.metrics
        if "speedup_vs_1_worker" in t:
            facts.append(("DFAGD speed-up", f"{t['speedup_vs_1_worker']:.2f}× vs 1 worker (efficiency "
                                            f"{t.get('efficiency', float('nan')):.2f})"))
    return tuple(facts)


def _summary(gate, decision, champion, trained=None, evaluation=None, version=None, promotion=None,
             grid=None) -> dict[str, Any]:
    """The flow's result: small, JSON-friendly, the same keys whether training ran or was skipped."""
    out = {
        "skipped": not decision.train, "reason": decision.reason,
        "run_id": trained.run_id if trained else decision.last_run_id,
        "version": version or decision.last_version,
        "champion_version": champion,
        "champion_changed": bool(promotion and promotion["promoted"]),
        "promotion_reason": promotion["reason"] if promotion else None,
        "metrics": evaluation.metrics if evaluation else {},
        "primary_metric": evaluation.primary_metric if evaluation else None,
        "feature_extractor": evaluation.extractor if evaluation else None,
        "training": trained.metrics if trained else {},
        "steps": trained.steps if trained else 0,
        "train_wall_s": round(trained.wall_s, 1) if trained else 0.0,
        "checkpoint": trained.checkpoint if trained else None,
        "resumed_from_step": trained.resumed_from if trained else 0,
        "grid": grid,
        "dataset_fingerprint": gate.fingerprint, "config_hash": decision.config_hash,
        "n_valid": gate.n_valid, "n_quarantined": gate.n_quarantined,
        "validation_dir": str(Path(gate.manifest_path).parent),
    }
    get_run_logger().info("summary: " + ", ".join(f"{k}={out[k]}" for k in
                                                  ("skipped", "run_id", "version", "champion_version",
                                                   "champion_changed", "grid")))
    return out
