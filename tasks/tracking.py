"""MLflow tracking: which store (argument, MLFLOW_TRACKING_URI, else embedded SQLite) and what every run logs."""

# Store resolution (first wins): the `uri` argument (e.g. from config or a flow parameter), the
# MLFLOW_TRACKING_URI environment variable, then the embedded default `sqlite:///<data_home()>/mlflow.db`.
# Experiments created on a SQLite store keep their artifacts next to the database, in
# `<db folder>/mlartifacts/<experiment>` (so `<data_home()>/mlartifacts` for the embedded store), never in a
# `./mlruns` of whatever directory the process happened to start in.

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

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
    with exclusive(db.with_name(db.name + ".lock")):
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
