"""Shared fixtures: an isolated TRANSSRGAN_HOME per session, Spark pointed at the venv's Python."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("transsrgan-home")
    old = os.environ.get("TRANSSRGAN_HOME")
    os.environ["TRANSSRGAN_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("TRANSSRGAN_HOME", None)
    else:
        os.environ["TRANSSRGAN_HOME"] = old


@pytest.fixture(autouse=True)
def _mlflow_store_variables_restored():
    """mlflow.set_tracking_uri / set_registry_uri (configure_tracking) export MLFLOW_TRACKING_URI and
    MLFLOW_REGISTRY_URI: a test's store would otherwise reach the subprocesses of every later test (a server
    started with only MLFLOW_TRACKING_URI would then look up models in an earlier test's registry)."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {k: os.environ.get(k) for k in names}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """An empty torch hub cache and no weights env var: the test sees a machine without the Inception weights."""
    import torch

    from models.metrics import inception

    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.delenv(inception.ENV_VAR, raising=False)
    yield tmp_path
    torch.hub.set_dir(old)


@pytest.fixture
def tiny_config():
    from models.config import resolve_config

    return resolve_config("tiny")


@pytest.fixture(scope="session")
def harness():
    """One real Prefect API (prefect_test_harness: a temporary server on SQLite) for the flow tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store (tracking and registry) for one test; the default store afterwards."""
    from tasks.tracking import configure_tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    configure_tracking(uri)
    yield uri
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    configure_tracking()
