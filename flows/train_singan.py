"""The train-singan flow: image gate -> SinGAN pyramid training -> SIFID/diversity -> register -> promote -> grid."""

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from pydantic import NonNegativeFloat, PositiveInt

from flows.singan_params import ConfigFile, ImageSource, SinGANParams, SinGANPreset
from models.singan import DEFAULT_IMAGE
from tasks.singan import (
    evaluate_singan,
    mark_singan_completed,
    promote_singan,
    register_singan,
    sample_singan,
    train_singan_model,
    validate_image,
)


@flow(name="train-singan", description="Validate one image, train the SinGAN pyramid on it, evaluate SIFID and "
      "diversity, register a version of `singan` and promote the per-image champion in MLflow.")
def train_singan(
    preset: SinGANPreset = "demo",
    image: ImageSource = DEFAULT_IMAGE,
    iters_per_scale: PositiveInt | None = None,
    config_file: ConfigFile = None,
    overrides: dict[str, Any] | None = None,
    allow_random_features: bool = True,
    eval_samples: PositiveInt = 50,
    promotion_margin: NonNegativeFloat = 0.0,
    out_dir: str | None = None,
) -> dict[str, Any]:
    """Parameters: see flows/singan_params.py (None keeps the preset's value). Returns the run's summary."""
    params = SinGANParams(preset=preset, image=image, iters_per_scale=iters_per_scale, config_file=config_file,
                          overrides=overrides, allow_random_features=allow_random_features,
                          eval_samples=eval_samples, promotion_margin=promotion_margin)
    config = params.to_config()

    validated = validate_image(params.image, config.min_size)
    trained = train_singan_model(config, validated, out_dir)
    evaluation = evaluate_singan(trained.run_id, params.eval_samples, params.allow_random_features, config.seed)
    version = register_singan(trained.run_id, evaluation, validated)
    promotion = promote_singan(version, evaluation.primary_metric, params.promotion_margin)
    grid = sample_singan(version, trained.run_id, trained.out_dir)
    mark_singan_completed(trained.run_id)
    return _summary(validated, trained, evaluation, version, promotion, grid)


def _summary(validated, trained, evaluation, version, promotion, grid) -> dict[str, Any]:
    """The flow's result: small and JSON-friendly."""
    out = {
        "run_id": trained.run_id, "version": version, "image": promotion["image"],
        "image_source": validated.source, "image_fingerprint": validated.sha256,
        "dataset_fingerprint": validated.gate.fingerprint,
        "champion_version": promotion["champion_version"], "champion_alias": f"champion-{promotion['image']}",
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
