"""The train-singan flow: image gate -> SinGAN pyramid training -> SIFID/diversity -> register -> promote -> grid."""

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.artifacts import report_run
from flows.params import SinGANParams, takes
from tasks.model_io import SINGAN
from tasks.pipeline import (
    evaluate_singan_model,
    mark_completed,
    promote_model,
    register_model,
    sample_grid,
    validate_image,
)
from tasks.registry import RunReport
from tasks.train import train_singan_model


@flow(name="train-singan", description="Validate one image, train the SinGAN pyramid on it, evaluate SIFID and "
      "diversity, register a version of `singan` and promote the per-image champion in MLflow.")
@takes(SinGANParams)
def train_singan(params: SinGANParams) -> dict[str, Any]:
    """Parameters: flows.params.SinGANParams (None keeps the preset's value). Returns the run's summary."""
    config = params.to_config()

    validated = validate_image(params.image, config.singan.min_size)
    trained = train_singan_model(config, validated, params.out_dir)
    evaluation = evaluate_singan_model(trained.run_id, params.eval_samples, params.allow_random_features,
                                       config.singan.seed)
    version = register_model(trained.run_id, SINGAN, evaluation, validated.gate.fingerprint, image=validated)
    promotion = promote_model(SINGAN, version, evaluation.primary_metric, params.promotion_margin)
    grid = sample_grid(SINGAN, version, trained.run_id, trained.out_dir, n=16)
    mark_completed(trained.run_id)
    report = RunReport(SINGAN, trained.run_id, version, _facts(config, validated, trained), evaluation.metrics,
                       evaluation.primary_metric, promotion["champion_version"], promotion["promoted"],
                       promotion["reason"], champion_alias=f"champion-{promotion['scope']}",
                       aliases=tuple(promotion["aliases"]), extractor=evaluation.extractor)
    return report_run(_summary(validated, trained, evaluation, version, promotion, grid), report, grid)


def _facts(config, validated, trained) -> tuple[tuple[str, str], ...]:
    """The rows of the run's description above its metrics: preset, image, training."""
    sizes = " → ".join(f"{h}×{w}" for h, w in trained.sizes)
    return (("preset", config.preset), ("image", f"{validated.source} (sha256 `{validated.sha256[:12]}`)"),
            ("training", f"{len(trained.sizes)} scales {sizes} in {trained.wall_s:.0f} s"))


def _summary(validated, trained, evaluation, version, promotion, grid) -> dict[str, Any]:
    """The flow's result: small and JSON-friendly."""
    out = {
        "run_id": trained.run_id, "version": version, "image": promotion["scope"],
        "image_source": validated.source, "image_fingerprint": validated.sha256,
        "dataset_fingerprint": validated.gate.fingerprint,
        "champion_version": promotion["champion_version"], "champion_alias": f"champion-{promotion['scope']}",
        "champion_changed": promotion["promoted"], "aliases": list(promotion["aliases"]),
        "promotion_reason": promotion["reason"],
        "metrics": evaluation.metrics, "primary_metric": evaluation.primary_metric,
        "feature_extractor": evaluation.extractor, "standard_weights": evaluation.standard_weights,
        "training": trained.metrics, "sizes": trained.sizes, "num_scales": len(trained.sizes),
        "train_wall_s": round(trained.wall_s, 1), "checkpoint": trained.checkpoint, "grid": grid,
        "validation_dir": str(Path(validated.gate.manifest_path).parent),
    }
    log = get_run_logger()
    if not evaluation.standard_weights:
        log.warning(f"random Inception features ({evaluation.extractor}): the standard weights file was not found "
                    f"(offline), so SIFID is reported as {evaluation.primary_metric}; see docs/evaluation.md")
    log.info("summary: " + ", ".join(f"{k}={out[k]}" for k in ("run_id", "version", "image", "champion_version",
                                                               "champion_changed", "grid")))
    return out
