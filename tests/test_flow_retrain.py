"""Scheduled-retraining skip logic against a real MLflow SQLite store (fast: no training, no Prefect)."""

import mlflow
import pytest

from models.config import resolve_config
from tasks.runs import config_hash, decide_retrain
from tasks.tags import COMPLETED, TAG_CONFIG_HASH, TAG_FINGERPRINT, TAG_PIPELINE, TAG_VERSION
from tasks.tracking import configure_tracking, ensure_experiment

EXP = "retrain-test"


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """One SQLite store for the module (creating one costs seconds); tests use their own fingerprints."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('retrain') / 'mlflow.db'}"
    configure_tracking(uri)
    ensure_experiment(EXP)
    yield uri
    configure_tracking()


@pytest.fixture
def store(db, request, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", db)
    configure_tracking(db)
    return request.node.name   # prefix that keeps this test's runs apart


def _run(fp: str, h: str, pipeline: str = COMPLETED, status: str = "FINISHED", version: str = "1") -> str:
    mlflow.set_experiment(EXP)
    with mlflow.start_run() as run:
        mlflow.set_tags({TAG_FINGERPRINT: fp, TAG_CONFIG_HASH: h, TAG_PIPELINE: pipeline, TAG_VERSION: version})
    if status != "FINISHED":
        mlflow.MlflowClient().set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_config_hash_ignores_the_data_path_but_not_the_settings():
    a = resolve_config("tiny")
    assert config_hash(a) == config_hash(resolve_config("tiny", {"data.source": "/elsewhere"}))
    assert config_hash(a) != config_hash(resolve_config("tiny", {"train.steps": 21}))
    assert config_hash(a) != config_hash(resolve_config("tiny", {"data.limit": 100}))
    # only the sections of the config's model family count: SinGAN settings never retrain a TransSRGAN
    assert config_hash(a) == config_hash(resolve_config("tiny", {"singan.iters_per_scale": 7}))


def test_first_run_trains(store):
    d = decide_retrain(EXP, f"{store}-a", "h1")
    assert d.train and "no completed run" in d.reason and d.last_run_id is None


def test_same_data_and_config_skips_and_says_why(store):
    run_id = _run(f"{store}-a", "h1", version="3")
    d = decide_retrain(EXP, f"{store}-a", "h1")
    assert not d.train and d.last_run_id == run_id and d.last_version == "3"
    assert run_id in d.reason and f"{store}-a"[:12] in d.reason and "force" in d.reason


def test_changed_data_or_config_trains(store):
    _run(f"{store}-a", "h1")
    assert decide_retrain(EXP, f"{store}-b", "h1").train        # new data fingerprint
    assert decide_retrain(EXP, f"{store}-a", "h2").train        # new config


def test_force_trains_even_when_unchanged(store):
    run_id = _run(f"{store}-a", "h1")
    d = decide_retrain(EXP, f"{store}-a", "h1", force=True)
    assert d.train and d.reason.startswith("forced") and run_id in d.reason


@pytest.mark.parametrize("pipeline,status", [("running", "FINISHED"), (COMPLETED, "FAILED")])
def test_incomplete_or_failed_runs_do_not_count(store, pipeline, status):
    _run(f"{store}-a", "h1", pipeline=pipeline, status=status)
    assert decide_retrain(EXP, f"{store}-a", "h1").train


def test_the_newest_completed_run_is_reported(store):
    _run(f"{store}-a", "h1", version="1")
    newest = _run(f"{store}-a", "h1", version="2")
    d = decide_retrain(EXP, f"{store}-a", "h1")
    assert d.last_run_id == newest and d.last_version == "2"
