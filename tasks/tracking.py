"""MLflow tracking: which store (argument, MLFLOW_TRACKING_URI, else embedded SQLite) and what every run logs."""

# Store resolution (first wins): the `uri` argument (e.g. from config or a flow parameter), the
# MLFLOW_TRACKING_URI environment variable, then the embedded default `sqlite:///<data_home()>/mlflow.db`.
# Experiments created on a SQLite store keep their artifacts next to the database, in
# `<db folder>/mlartifacts/<experiment>` (so `<data_home()>/mlartifacts` for the embedded store), never in a
# `./mlruns` of whatever directory the process happened to start in.

import contextlib
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, DataType, Schema

from models.config import Config
from models.files import exclusive
from models.paths import data_home
from tasks.tags import (
    CONFIG_ARTIFACT,
    TAG_DATASET_SIZE,
    TAG_FINGERPRINT,
    TAG_GIT_COMMIT,
    TAG_MLFLOW_COMMIT,
    TAG_PRESET,
    TAG_SPARK_MASTER,
    TAG_WORKERS,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

_URI_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<at>@)")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:password|pwd|token|secret)=)(?P<pw>[^&\s]*)", re.IGNORECASE)


def redact(uri: str) -> str:
    """'postgresql://u:secret@h/db' -> 'postgresql://u:***@h/db'; also ?password=... query values."""
    out = _URI_PASSWORD.sub(lambda m: f"{m['head']}***{m['at']}", uri)
    return _QUERY_PASSWORD.sub(lambda m: f"{m['head']}***", out)


def default_tracking_uri() -> str:
    """The embedded store: a SQLite file in the project's data directory."""
    return f"sqlite:///{data_home() / 'mlflow.db'}"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """Explicit argument, then MLFLOW_TRACKING_URI, then the embedded SQLite store."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path if path.startswith("/") else Path.cwd() / path).resolve()


def artifact_root(uri: str | None = None) -> Path | None:
    """Where experiments on a SQLite store keep artifacts: `<db folder>/mlartifacts`; None for servers."""
    db = sqlite_path(resolve_tracking_uri(uri) if uri is None else uri)
    return db.parent / "mlartifacts" if db else None


_CREDENTIALS_FROM_URI = False     # configure_tracking set MLFLOW_TRACKING_USERNAME/PASSWORD from a URI


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """'http://user:pw@host:5000' -> ('http://host:5000', 'user', 'pw'); other URIs are returned unchanged."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or (parts.username is None and parts.password is None):
        return uri, None, None
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc)), unquote(parts.username or ""), unquote(parts.password or "")


def configure_tracking(uri: str | None = None) -> str:
    """Point MLflow tracking and registry at one store; returns the URI with any password redacted.

    Credentials in an http(s) URI move to MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (MLflow's own
    basic-auth settings), so the URI MLflow holds, and prints in its "View run at ..." lines, carries none.
    """
    global _CREDENTIALS_FROM_URI
    resolved, user, password = split_credentials(resolve_tracking_uri(uri))
    if user is not None:
        os.environ["MLFLOW_TRACKING_USERNAME"] = user
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password or ""
        _CREDENTIALS_FROM_URI = True
    elif _CREDENTIALS_FROM_URI:          # never send one store's credentials to another
        os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
        os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)
        _CREDENTIALS_FROM_URI = False
    db = sqlite_path(resolved)
    if db:
        db.parent.mkdir(parents=True, exist_ok=True)
        _create_tables(resolved, db)
    mlflow.set_tracking_uri(resolved)
    mlflow.set_registry_uri(resolved)
    return redact(resolved)


_TABLES_READY: set[str] = set()     # SQLite stores this process has opened (and so created or migrated)


def _create_tables(uri: str, db: Path) -> None:
    """Open a SQLite store once under a lock beside it: two processes opening a new store at once would both run
    MLflow's schema migrations on it, and one of them fails ("Online migration expected to match one row")."""
    if uri in _TABLES_READY:
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    with exclusive(db.with_name(db.name + ".lock")):
        # A new store gets its Default experiment's artifacts next to the database too; MLflow's own default
        # would be ./mlruns in whatever folder the first process happened to run in.
        SqlAlchemyStore(uri, artifact_root(uri).as_uri())
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)          # the tracking store's tables ...
        client.search_registered_models(max_results=1)    # ... and the registry's
    _TABLES_READY.add(uri)


def ensure_experiment(name: str) -> str:
    """Experiment id of `name`, created if missing; on SQLite with its artifacts next to the database."""
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise MlflowException(f"experiment {name!r} is deleted; restore it in the MLflow UI or "
                                  f"`mlflow experiments restore --experiment-id {exp.experiment_id}`")
        return exp.experiment_id
    root = artifact_root(mlflow.get_tracking_uri())
    location = (root / name).as_uri() if root else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as exc:  # another process created it between our get and create
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        del exc
        return exp.experiment_id


def git_commit() -> str:
    """HEAD of the project checkout, with '-dirty' when tracked files have changes; 'unknown' outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{sha}-dirty" if dirty else sha
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_tags(config: Config, dataset_fingerprint: str | None = None, dataset_size: int | None = None,
             extra: dict[str, str] | None = None) -> dict[str, str]:
    """Provenance tags of a run: git commit, preset, Spark master and workers (when the family uses Spark), data."""
    commit = git_commit()
    tags = {TAG_GIT_COMMIT: commit, TAG_MLFLOW_COMMIT: commit.removesuffix("-dirty"), TAG_PRESET: config.preset}
    if "spark" in config.sections():
        tags.update({TAG_SPARK_MASTER: config.spark.master, TAG_WORKERS: str(config.spark.workers)})
    if dataset_fingerprint is not None:
        tags[TAG_FINGERPRINT] = dataset_fingerprint
    if dataset_size is not None:
        tags[TAG_DATASET_SIZE] = str(int(dataset_size))
    tags.update({k: str(v) for k, v in (extra or {}).items()})
    return tags


@contextlib.contextmanager
def start_training_run(config: Config, experiment: str = "transsrgan", run_name: str | None = None,
                       tags: dict[str, str] | None = None, *, dataset_fingerprint: str | None = None,
                       dataset_size: int | None = None, tracking_uri: str | None = None,
                       system_metrics: bool = True, run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run with the config's sections (those of its model family) as params, provenance tags and
    system metrics.

    `run_id` reopens that run (a resumed training continues its curves) when it still exists in the store.
    Yields the active run; the run ends FINISHED, or FAILED if the body raises (then the error re-raises).
    """
    if tracking_uri is not None or not _is_configured():
        configure_tracking(tracking_uri)
    exp_id = ensure_experiment(experiment)
    all_tags = run_tags(config, dataset_fingerprint, dataset_size, tags)
    params = {k: _param(v) for k, v in config.flat().items()}
    if run_id is not None and not _run_exists(run_id):
        run_id = None
    if run_id is None:
        ctx = mlflow.start_run(experiment_id=exp_id, run_name=run_name, log_system_metrics=system_metrics,
                               tags=all_tags)
    else:
        ctx = mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics)
    with ctx as run:
        if run_id is not None:
            mlflow.set_tags(all_tags)
            params = {k: v for k, v in params.items() if k not in run.data.params}   # params are write-once
        if params:
            mlflow.log_params(params)
        mlflow.log_text(config.to_json(config.sections()), CONFIG_ARTIFACT)
        yield run


def _run_exists(run_id: str) -> bool:
    try:
        MlflowClient().get_run(run_id)
        return True
    except MlflowException:
        return False


def _is_configured() -> bool:
    """True when this process already chose a store (configure_tracking or mlflow.set_tracking_uri)."""
    from mlflow.tracking._tracking_service.utils import is_tracking_uri_set

    return is_tracking_uri_set()


def _param(value: Any) -> str:
    return "null" if value is None else str(list(value) if isinstance(value, tuple) else value)


# ---------------------------------------------------------------- datasets (the run page's "Datasets" panel)

TRAINING, EVALUATION = "training", "evaluation"      # the input contexts (MLflow's mlflow.data.context tag)
DIGEST_CHARS = 36                                    # the longest digest an MLflow store keeps
_ARROW_TYPES = {pa.string(): DataType.string, pa.int64(): DataType.long, pa.float64(): DataType.double,
                pa.bool_(): DataType.boolean}


class ManifestDataset(MetaDataset):
    """A data gate's manifest as an MLflow dataset: only metadata (the images stay where they are), the manifest's
    column schema, and a profile with the image count and the full fingerprint."""

    def __init__(self, source: str, name: str, digest: str, schema: Schema, profile: dict[str, Any]):
        self._profile = profile
        super().__init__(LocalArtifactDatasetSource(source), name=name, digest=digest, schema=schema)

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return super().to_dict() | {"profile": json.dumps(self._profile)}


def manifest_dataset(manifest: str | Path, subset: int | None = None) -> ManifestDataset:
    """The dataset a gate's manifest.parquet describes: named after the validated folder, digest = the gate's
    fingerprint (its first DIGEST_CHARS hex digits), so the same data is the same dataset in every run.

    `subset` = n describes evaluation's fixed real subset instead (models.metrics.evaluate.real_subsets: the first
    n of a seeded permutation): `<name>-eval-<n>`, with a digest of the fingerprint and n. ValueError names a file
    that is no manifest.
    """
    from models.metrics.evaluate import REAL_SUBSET_SEED

    path = Path(manifest).resolve()
    try:
        arrow = pq.read_schema(path)
        rows = pq.read_metadata(path).num_rows
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"{manifest}: not a readable manifest.parquet ({exc})") from None
    meta = {k.decode(): v.decode() for k, v in (arrow.metadata or {}).items() if k.startswith(b"transsrgan.")}
    if "transsrgan.fingerprint" not in meta:
        raise ValueError(f"{manifest}: not a manifest.parquet written by `transsrgan validate`")
    fp, origin = meta["transsrgan.fingerprint"], meta.get("transsrgan.source", str(path))
    schema = Schema([ColSpec(_ARROW_TYPES.get(f.type, DataType.string), f.name) for f in arrow])
    profile: dict[str, Any] = {"num_images": rows, "fingerprint": fp, "validated_folder": origin}
    name = Path(origin).name or "dataset"
    if subset is None:
        return ManifestDataset(str(path), name, fp[:DIGEST_CHARS], schema, profile)
    n = min(int(subset), rows)
    digest = hashlib.sha256(f"{fp}\nreal_subsets n={n} seed={REAL_SUBSET_SEED}".encode()).hexdigest()
    profile |= {"num_images": n, "of_images": rows, "subset_seed": REAL_SUBSET_SEED}
    return ManifestDataset(str(path), f"{name}-eval-{n}", digest[:DIGEST_CHARS], schema, profile)


def log_dataset(manifest: str | Path, context: str, subset: int | None = None) -> ManifestDataset:
    """mlflow.log_input of manifest_dataset(...) into the active run, with context `training` or `evaluation`.

    A run links one dataset (name + digest) once: evaluation's subset has a name and digest of its own.
    """
    dataset = manifest_dataset(manifest, subset)
    mlflow.log_input(dataset, context=context)
    return dataset
