"""Prefect tasks of the train-singan flow: image gate -> train -> evaluate (SIFID, diversity) -> register -> promote -> grid.

Thin adapters around models.singan; they return small values (paths, ids, metric dicts), never modules.
MLflow: experiment `singan`, model `singan` (runs:/<id>/singan), checkpoints/, samples/, validation/.
"""

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import torch
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from torch import nn

from models.config import DataConfig
from models.grid import make_grid, save_png, to_uint8
from models.metrics.inception import load_extractor, sha256_of
from models.paths import data_home
from models.singan import (
    SinGANConfig,
    SinGANState,
    diversity,
    fit,
    image_name,
    load_singan,
    reconstruct,
    sample,
    save_singan,
    sifid,
    train_singan,
)
from models.singan.image import SKIMAGE_PREFIX, load_bundled
from tasks.data_gate import DataGateError, GateResult
from tasks.mlflow_sink import CHECKPOINTS_DIR, SAMPLES_DIR, MlflowSink
from tasks.pipeline import IO_RETRIES, _io_error, validate_data
from tasks.retrain import TAG_FLOW_RUN, TAG_PIPELINE, TAG_VERSION
from tasks.singan_io import ARTIFACT_PATH, REGISTERED_NAME, load_singan_model, log_singan
from tasks.singan_registry import image_slug, promote_image, register_image_version
from tasks.tracking import (
    CONFIG_ARTIFACT,
    TAG_FINGERPRINT,
    TAG_GIT_COMMIT,
    TAG_PRESET,
    configure_tracking,
    ensure_experiment,
    git_commit,
)

EXPERIMENT = REGISTERED_NAME          # experiment and registered model are both `singan`
CHECKPOINT = "singan.pt"
TAG_EXTRACTOR = "feature_extractor"
# The gate for one image: it must decode, be an allowed format/mode, not be blank, and have a short side of at
# least singan.min_size (the coarsest scale); one valid image is the whole dataset.
SINGLE_IMAGE_GATE = DataConfig(source="", min_images=1, max_bad_fraction=0.0, max_aspect=8.0)
GRID_N, GRID_SEED = 16, 0


@dataclasses.dataclass(frozen=True)
class ValidatedImage:
    source: str                 # what the user passed: a path or skimage:NAME
    name: str                   # image_name(source), the registry's image key before slugging
    path: str                   # the validated copy the model trains on (alone in its folder)
    sha256: str                 # of that file: the image fingerprint (content only)
    gate: GateResult            # manifest, quarantine, validation.json, Data Docs, dataset fingerprint


@dataclasses.dataclass(frozen=True)
class SinGANTrained:
    run_id: str
    checkpoint: str
    out_dir: str
    wall_s: float
    metrics: dict[str, float]   # last logged training metrics of the finest scale
    sizes: list[list[int]]      # (H, W) per scale, coarsest first


@dataclasses.dataclass(frozen=True)
class SinGANEvaluation:
    metrics: dict[str, float]   # sifid (or sifid_inception_random), diversity, reconstruction_rmse
    primary_metric: str
    extractor: str
    standard_weights: bool
    eval_size: tuple[int, int]


def materialise_image(source: str) -> Path:
    """The image alone in a folder under data_home()/datasets/singan/ (written once), so the gate can check it.

    skimage:NAME -> <name>/<name>.png (lossless copy of the bundled photo); a file -> <stem>-<sha8>/<file name>.
    """
    root = data_home() / "datasets" / "singan"
    if source.startswith(SKIMAGE_PREFIX):
        name = source[len(SKIMAGE_PREFIX):]
        target = root / name / f"{name}.png"
        if not target.is_file():
            from PIL import Image

            array = load_bundled(name)          # ValueError naming the bundled choices for an unknown name
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(tmp, format="PNG")
            tmp.replace(target)
        return target
    src = Path(source).expanduser()
    if not src.is_file():
        raise FileNotFoundError(f"image: file not found: {source} (expected an image file or 'skimage:NAME')")
    target = root / f"{image_slug(src.stem)}-{sha256_of(src)[:8]}" / src.name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(target)
    return target


@task(name="materialise-image", cache_policy=NO_CACHE, **IO_RETRIES, retry_condition_fn=_io_error)
def _materialise(source: str) -> str:
    path = materialise_image(source)
    get_run_logger().info(f"image {source} -> {path}")
    return str(path)


def validate_image(source: str, min_size: int) -> ValidatedImage:
    """The data gate (tasks.data_gate, Great Expectations) on a folder holding just the training image.

    Raises DataGateError naming the reason when the image is quarantined (e.g. a side below singan.min_size).
    """
    path = Path(_materialise(source))
    try:
        gate = validate_data(str(path.parent), SINGLE_IMAGE_GATE, min_size)
    except DataGateError as exc:
        why = Path(exc.result.quarantine_path).read_text().strip().splitlines()[1:] or ["no valid image"]
        raise DataGateError(f"image {source}: rejected by the data gate: {why[0].split(',', 1)[-1]} "
                            f"(reports in {Path(exc.result.manifest_path).parent})", exc.result) from None
    return ValidatedImage(source=source, name=image_name(source), path=str(path), sha256=sha256_of(path), gate=gate)


# ---------------------------------------------------------------- train

def _resume(path: Path, cfg: SinGANConfig, log) -> SinGANState | None:
    """A retried flow run resumes at the first unfinished scale of its own checkpoint (same config only)."""
    if not path.is_file():
        return None
    state = load_singan(path)
    if state.config.to_dict() != cfg.to_dict():
        log.info(f"ignoring {path}: it was written with another config")
        return None
    log.info(f"resuming from {path}: {state.trained_scales}/{state.num_scales} scales done")
    return state


def _log_validation(gate: GateResult) -> None:
    for report in (gate.validation_json, gate.quarantine_path):
        if Path(report).is_file():
            mlflow.log_artifact(report, "validation")
    if Path(gate.data_docs_dir).is_dir():
        mlflow.log_artifacts(gate.data_docs_dir, "validation/data_docs")


@task(name="train-singan", cache_policy=NO_CACHE)
def train_singan_model(cfg: SinGANConfig, image: ValidatedImage, out_dir: str | None = None) -> SinGANTrained:
    """models.singan.fit on the validated image inside one MLflow run of experiment `singan`.

    Progress goes to the Prefect run logger (one line per cfg.log_every iterations) and a progress artifact;
    metrics per global iteration to MLflow; after every scale the checkpoint (singan.pt, atomic) is written to
    out_dir and logged under checkpoints/, and a grid of that scale's samples under samples/.
    """
    log = get_run_logger()
    configure_tracking()
    cfg = dataclasses.replace(cfg, image=image.path)
    run_name = flow_run.name or time.strftime("%Y%m%d-%H%M%S")
    out = Path(out_dir) if out_dir else data_home() / "runs" / f"singan-{run_name}"
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CHECKPOINT
    state = None if out_dir else _resume(ckpt, cfg, log)
    commit = git_commit()
    tags = {TAG_GIT_COMMIT: commit, "mlflow.source.git.commit": commit.removesuffix("-dirty"),
            TAG_PRESET: cfg.preset, "image": image_slug(image.name), "image_source": image.source,
            "image_fingerprint": image.sha256, TAG_FINGERPRINT: image.gate.fingerprint, TAG_PIPELINE: "running",
            TAG_FLOW_RUN: str(flow_run.id or "")}
    with mlflow.start_run(experiment_id=ensure_experiment(EXPERIMENT), run_name=run_name, tags=tags) as run:
        mlflow.log_params({k: str(list(v) if isinstance(v, tuple) else v) for k, v in cfg.flat().items()})
        mlflow.log_text(cfg.to_json(), CONFIG_ARTIFACT)
        _log_validation(image.gate)
        progress = create_progress_artifact(0.0, key="singan-training-progress",
                                            description="SinGAN training: iterations done / total")

        def on_log(s: SinGANState, m: dict[str, float]) -> None:
            sink.log_metrics({k: v for k, v in m.items() if k not in ("step", "iter")}, step=int(m["step"]))
            total = s.num_scales * s.config.iters_per_scale
            update_progress_artifact(progress, 100.0 * m["step"] / max(total, 1))

        def on_scale_end(s: SinGANState, m: dict[str, float]) -> None:
            save_singan(s, ckpt)
            sink.log_artifact(ckpt, CHECKPOINTS_DIR)
            h, w = s.sizes[s.trained_scales - 1]
            grid = save_png(make_grid(to_uint8(sample(s, GRID_N, GRID_SEED))),
                            out / SAMPLES_DIR / f"scale_{s.trained_scales - 1:02d}_{h}x{w}.png", scale=2)
            sink.log_artifact(grid, SAMPLES_DIR)

        t0 = time.perf_counter()
        log.info(f"training SinGAN ({cfg.preset} preset) on {image.source}; MLflow run {run.info.run_id}")
        callbacks = dict(on_log=on_log, on_scale_end=on_scale_end, print_fn=log.info)
        with MlflowSink(run.info.run_id, checkpoint_dir=out, print_fn=log.info) as sink:
            state = train_singan(state, **callbacks) if state else fit(cfg, **callbacks)
        wall = time.perf_counter() - t0
        if not state.done:
            raise RuntimeError(f"SinGAN training stopped after {state.trained_scales}/{state.num_scales} scales")
        log_singan(state, ARTIFACT_PATH)
        mlflow.log_metric("train_wall_s", wall)
        last = {k: float(v) for k, v in (state.history[-1] if state.history else {}).items()}
        log.info(f"trained {state.num_scales} scales in {wall:.0f}s; checkpoint {ckpt}")
        return SinGANTrained(run.info.run_id, str(ckpt), str(out), wall, last, [list(s) for s in state.sizes])


# ---------------------------------------------------------------- evaluate

class _UnitToSigned(nn.Module):
    """[0, 1] -> [-1, 1], pytorch-fid's normalize_input (models.singan.sifid feeds [0, 1])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x - 1


def sifid_extractor(allow_random: bool, seed: int = 0) -> tuple[nn.Module, str, bool]:
    """(net, feature_extractor id, standard?): pytorch-fid's InceptionV3 block 0 (Conv2d_1a..2b + first max-pool,
    64-d) with the evaluation weights policy (models.metrics.inception: the verified standard file, else seeded
    random weights if allowed, else InceptionWeightsError). No resize to 299: SIFID is taken at the image's size,
    as in the official SIFID code."""
    ext = load_extractor(allow_random=allow_random, seed=seed)
    return nn.Sequential(_UnitToSigned(), ext.net.blocks[0]).eval(), ext.id, ext.standard


def sifid_metric_name(standard: bool) -> str:
    """`sifid` only with the standard Inception weights; `sifid_inception_random` with the seeded fallback."""
    return "sifid" if standard else "sifid_inception_random"


@task(name="evaluate-singan", cache_policy=NO_CACHE)
def evaluate_singan(run_id: str, n_samples: int, allow_random_features: bool, seed: int = 0) -> SinGANEvaluation:
    """SIFID and diversity of n_samples random samples of the logged model (training size), logged to its run."""
    log = get_run_logger()
    configure_tracking()
    state = load_singan_model(f"runs:/{run_id}/{ARTIFACT_PATH}")
    net, extractor, standard = sifid_extractor(allow_random_features)
    fakes = sample(state, n_samples, seed)                                # (n, C, H, W) in [-1, 1]
    rec = reconstruct(state)                                              # (1, C, H, W)
    name = sifid_metric_name(standard)
    metrics = {name: sifid(state.image, fakes, net), "diversity": diversity(fakes, state.image),
               "reconstruction_rmse": float((rec - state.image).pow(2).mean().sqrt())}
    if not standard:
        log.warning(f"SIFID used the offline fallback extractor {extractor!r} (no standard Inception weights "
                    f"file): the metric is named {name}, not sifid")
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(metrics)
        mlflow.set_tag(TAG_EXTRACTOR, extractor)
        with tempfile.TemporaryDirectory() as tmp:
            save_png(make_grid(to_uint8(fakes)), Path(tmp) / "eval_samples.png", scale=2)
            save_png(make_grid(to_uint8(torch.cat([state.image, rec]))), Path(tmp) / "real_vs_reconstruction.png",
                     scale=2)
            mlflow.log_artifacts(tmp, SAMPLES_DIR)
    log.info(f"evaluation ({extractor}, {n_samples} samples at {state.sizes[-1]}): "
             + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return SinGANEvaluation(metrics, name, extractor, standard, tuple(state.sizes[-1]))


# ---------------------------------------------------------------- register, promote, sample

@task(name="register-singan", cache_policy=NO_CACHE, **IO_RETRIES, retry_condition_fn=_io_error)
def register_singan(run_id: str, evaluation: SinGANEvaluation, image: ValidatedImage) -> str:
    """A new version of `singan`, tagged image / image_source / image_fingerprint / eval_size and the metrics."""
    configure_tracking()
    version = register_image_version(run_id, evaluation.metrics, evaluation.extractor, image.gate.fingerprint,
                                     image=image.name, image_source=image.source, image_fingerprint=image.sha256,
                                     eval_size=evaluation.eval_size)
    mlflow.MlflowClient().set_tag(run_id, TAG_VERSION, version)
    get_run_logger().info(f"registered {REGISTERED_NAME} version {version} (image {image_slug(image.name)})")
    return version


@task(name="promote-singan", cache_policy=NO_CACHE, **IO_RETRIES, retry_condition_fn=_io_error)
def promote_singan(version: str, primary_metric: str, margin: float = 0.0) -> dict[str, Any]:
    """Per-image champion by SIFID (tasks.singan_registry); `champion` follows the image just trained."""
    configure_tracking()
    d = promote_image(version, primary_metric, margin)
    get_run_logger().info(f"promotion: version {d.version} -> {', '.join(d.aliases)}; champion of image "
                          f"{d.image} is version {d.champion_version} ({d.reason})")
    return dataclasses.asdict(d)


@task(name="sample-singan", cache_policy=NO_CACHE, **IO_RETRIES, retry_condition_fn=_io_error)
def sample_singan(version: str, run_id: str, out_dir: str, n: int = GRID_N, seed: int = GRID_SEED) -> str:
    """n samples of the registered version at the training size, and a 2x-wide panorama, logged under samples/."""
    configure_tracking()
    state = load_singan_model(f"models:/{REGISTERED_NAME}/{version}")
    grid = save_png(make_grid(to_uint8(sample(state, n, seed))),
                    Path(out_dir) / SAMPLES_DIR / f"{REGISTERED_NAME}-v{version}.png", scale=2)
    wide = save_png(make_grid(to_uint8(sample(state, 4, seed, scale_w=2.0)), nrow=1),
                    Path(out_dir) / SAMPLES_DIR / f"{REGISTERED_NAME}-v{version}-wide.png", scale=2)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_artifact(str(grid), SAMPLES_DIR)
        mlflow.log_artifact(str(wide), SAMPLES_DIR)
    get_run_logger().info(f"sample grid of {REGISTERED_NAME} version {version}: {grid} (panorama {wide})")
    return str(grid)


@task(name="mark-completed", cache_policy=NO_CACHE, **IO_RETRIES, retry_condition_fn=_io_error)
def mark_singan_completed(run_id: str) -> None:
    configure_tracking()
    mlflow.MlflowClient().set_tag(run_id, TAG_PIPELINE, "completed")


__all__ = ["SINGLE_IMAGE_GATE", "SinGANEvaluation", "SinGANTrained", "ValidatedImage", "evaluate_singan",
           "mark_singan_completed", "materialise_image", "promote_singan", "register_singan",
           "sample_singan", "sifid_extractor", "sifid_metric_name", "train_singan_model", "validate_image"]
