"""MLflow tracking against a real SQLite store: what a tiny run logs, the model round trip, `transsrgan sample`."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module; the process-wide MLflow URIs are restored afterwards."""
    from mlflow.tracking._model_registry import utils as reg_utils
    from mlflow.tracking._tracking_service import utils as track_utils

    from tasks.tracking import configure_tracking

    saved = track_utils._tracking_uri, reg_utils._registry_uri
    d = tmp_path_factory.mktemp("mlflow-store")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    configure_tracking(uri)
    yield uri
    track_utils._tracking_uri, reg_utils._registry_uri = saved


@pytest.fixture(scope="module")
def tiny_run(store, tmp_path_factory):
    """A 4-step tiny training run through GANSink, with the EMA generator logged; returns (run_id, config)."""
    import mlflow

    from models.config import resolve_config
    from models.data import load_dataset
    from models.step import build_state
    from models.trainer import LocalGradSource, train
    from tasks.model_io import log_generator
    from tasks.tracking import start_training_run
    from tasks.train import GANSink

    cfg = resolve_config("tiny", {"train.steps": 4, "train.log_every": 2, "train.sample_every": 2,
                                  "train.checkpoint_every": 4, "data.limit": 64})
    data = load_dataset(cfg.data.source, cfg.model.resolution, cfg.model.channels, cfg.data.limit)
    state = build_state(cfg)
    mlflow.set_system_metrics_sampling_interval(0.2)
    mlflow.set_system_metrics_samples_before_logging(1)
    try:
        with start_training_run(cfg, experiment="t_tracking", run_name="tiny", tags={"engine": "local"},
                                dataset_fingerprint="fp-abc", dataset_size=len(data)) as run:
            with GANSink(run.info.run_id, sample_n=4, checkpoint_dir=tmp_path_factory.mktemp("ckpt")) as sink:
                train(state, LocalGradSource(data, cfg), print_fn=None, **sink.callbacks())
                sink.log_metrics({"speedup_vs_1_worker": 1.5, "efficiency": 0.75})
            log_generator(state, cfg)
            _wait_for_system_metrics(run.info.run_id)
    finally:
        mlflow.set_system_metrics_sampling_interval(None)
        mlflow.set_system_metrics_samples_before_logging(None)
    return run.info.run_id, cfg, state


def _wait_for_system_metrics(run_id: str, limit_s: float = 120.0) -> None:
    """Wait until MLflow's system-metrics thread has logged a sample (it samples every 0.2 s here); the limit only
    stops a broken monitor from hanging the suite."""
    import time

    import mlflow

    client = mlflow.MlflowClient()
    deadline = time.monotonic() + limit_s
    while not any(k.startswith("system/") for k in client.get_run(run_id).data.metrics):
        if time.monotonic() > deadline:
            return                       # the assertion in the test reports it
        time.sleep(0.1)


def test_redact_hides_passwords():
    from tasks.tracking import redact

    assert redact("postgresql://mlflow:s3cr3t@db:5432/mlflow") == "postgresql://mlflow:***@db:5432/mlflow"
    assert redact("https://u:p@host/?token=abc&x=1") == "https://u:***@host/?token=***&x=1"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    assert redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_default_store_is_embedded_sqlite_in_data_home(monkeypatch, tmp_path):
    from tasks.tracking import artifact_root, resolve_tracking_uri

    monkeypatch.setenv("TRANSSRGAN_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert artifact_root() == tmp_path.resolve() / "mlartifacts"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking_uri() == "http://127.0.0.1:5999"
    assert artifact_root() is None
    assert resolve_tracking_uri("sqlite:////x/y.db") == "sqlite:////x/y.db"


def test_experiment_artifacts_live_next_to_the_sqlite_store(store):
    import mlflow

    from tasks.tracking import ensure_experiment

    exp_id = ensure_experiment("t_location")
    assert ensure_experiment("t_location") == exp_id
    location = mlflow.get_experiment(exp_id).artifact_location
    db = Path(store.removeprefix("sqlite:///"))
    assert location == (db.parent / "mlartifacts" / "t_location").as_uri()


def test_a_new_store_keeps_even_the_default_experiments_artifacts_next_to_it(tmp_path, monkeypatch):
    """A run in experiment 0 (a user's plain mlflow.start_run()) writes nothing into the working directory."""
    import mlflow
    from mlflow.tracking._model_registry import utils as reg_utils
    from mlflow.tracking._tracking_service import utils as track_utils

    from tasks.tracking import configure_tracking

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    saved = track_utils._tracking_uri, reg_utils._registry_uri      # the module's store, for the tests after this
    try:
        configure_tracking(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
        with mlflow.start_run(experiment_id="0") as run:
            mlflow.log_text("x", "a.txt")
        assert mlflow.get_experiment("0").artifact_location == (tmp_path / "store" / "mlartifacts" / "0").as_uri()
    finally:
        track_utils._tracking_uri, reg_utils._registry_uri = saved
    assert list(cwd.iterdir()) == []
    assert (tmp_path / "store" / "mlartifacts" / "0" / run.info.run_id / "artifacts" / "a.txt").is_file()


def test_tiny_run_logs_params_tags_metrics_and_artifacts(tiny_run):
    from mlflow.tracking import MlflowClient

    from chaos.tracking import image_steps
    from models.trainer import METRIC_NAMES

    run_id, cfg, _ = tiny_run
    client = MlflowClient()
    run = client.get_run(run_id)
    flat = cfg.flat()
    assert set(flat) <= set(run.data.params)
    assert run.data.params["model.dim"] == str(cfg.model.dim)
    assert run.data.params["train.betas"] == str(list(cfg.train.betas))
    tags = run.data.tags
    assert tags["dataset_fingerprint"] == "fp-abc" and tags["dataset_size"] == "64"
    assert tags["spark_master"] == cfg.spark.master and tags["spark_workers"] == str(cfg.spark.workers)
    assert tags["git_commit"] and tags["engine"] == "local"
    for name in METRIC_NAMES:
        steps = [m.step for m in client.get_metric_history(run_id, name)]
        assert steps == [2, 4], (name, steps)
    assert run.data.metrics["speedup_vs_1_worker"] == 1.5 and run.data.metrics["efficiency"] == 0.75
    assert any(k.startswith("system/") for k in run.data.metrics), sorted(run.data.metrics)
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {"images", "samples", "checkpoints", "config.json"} <= arts
    assert image_steps(client, run_id) == [2, 4]          # the grids, as MLflow's step-indexed image `samples`
    assert [a.path for a in client.list_artifacts(run_id, "samples")] == [    # and by name, for scripts
        "samples/step_000002.png", "samples/step_000004.png"]
    assert run.data.tags["mlflow.loggedImages"] == "True"
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/checkpoint.pt"]
    assert run.info.status == "FINISHED"


def test_checkpoint_artifact_restores_the_run(tiny_run):
    import mlflow

    from models.checkpoint import load_checkpoint

    run_id, cfg, state = tiny_run
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoints/checkpoint.pt")
    restored = load_checkpoint(path)
    assert restored.step == 4 and restored.config.to_dict() == cfg.to_dict()


def test_generator_round_trip_without_pickles(tiny_run):
    import mlflow
    import pandas as pd
    import torch

    from models.grid import sample
    from tasks.model_io import load_generator

    run_id, cfg, state = tiny_run
    G = load_generator(f"runs:/{run_id}/generator")
    assert not G.training and G.config.to_dict() == cfg.to_dict()
    z = torch.randn(3, cfg.model.z_dim)
    with torch.no_grad():
        expected = state.G_ema.eval()(z)
        assert torch.equal(G(z), expected)
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/generator"))
    assert not list(local.rglob("*.pkl")), "nothing in the logged model may be a pickle"
    assert (local / "pyfunc.py").is_file() and (local / "code" / "models" / "transsrgan.py").is_file()
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run_id}/generator")
    out = pyfunc.predict(pd.DataFrame({"z": list(z.double().numpy())}))          # one image per z row
    assert out.shape == (3, cfg.model.channels, cfg.model.resolution, cfg.model.resolution)
    np.testing.assert_allclose(out, expected.numpy(), atol=1e-6)
    # a seed row gives n images, the ones `transsrgan sample --seed 3 -n 4` draws
    seeded = pyfunc.predict(pd.DataFrame({"seed": [3]}), params={"n": 4})
    np.testing.assert_allclose(seeded, sample(state.G_ema, 4, 3, cfg.model.z_dim).numpy(), atol=1e-6)
    sig = pyfunc.metadata.signature
    assert sig.inputs.input_names() == ["seed", "label", "z"] and not sig.inputs.required_input_names()
    assert {p.name for p in sig.params.params} == {"n", "output", "truncation"}


@pytest.fixture(scope="module")
def singan_run(store):
    """A tiny SinGAN pyramid (one iteration per scale on a random 24x30 image) logged in its own run."""
    import mlflow
    import torch

    from models.config import resolve_config
    from models.singan import fit, init_state
    from tasks.model_io import log_singan
    from tasks.tracking import ensure_experiment

    cfg = resolve_config("tiny", {"singan.iters_per_scale": 1, "singan.log_every": 0}).singan
    image = torch.rand((1, 3, 24, 30), generator=torch.Generator().manual_seed(0)) * 2 - 1
    state = fit(cfg, state=init_state(image, cfg), print_fn=None)
    with mlflow.start_run(experiment_id=ensure_experiment("t_singan_store")) as run:
        log_singan(state)
    return run.info.run_id, state


def test_one_loader_for_both_families(tiny_run, singan_run, tmp_path):
    import mlflow
    import pandas as pd
    import torch

    from models.singan import SinGANState, sample
    from tasks.model_io import (
        ModelNotFoundError,
        load_generator,
        load_model,
        load_singan_model,
        write_samples,
    )

    run_id, state = singan_run
    uri = f"runs:/{run_id}/singan"
    model = load_model(uri)
    assert isinstance(model, SinGANState) and model.sizes == state.sizes
    with torch.no_grad():
        assert torch.equal(sample(model, 2, 5), sample(state, 2, 5))
    assert isinstance(load_singan_model(uri), SinGANState)
    with pytest.raises(ModelNotFoundError, match="a SinGAN pyramid, not a generator"):
        load_generator(uri)
    G = load_model(f"runs:/{tiny_run[0]}/generator")
    assert not isinstance(G, SinGANState) and G.config.to_dict() == tiny_run[1].to_dict()
    with pytest.raises(ModelNotFoundError, match="a generator, not a SinGAN"):
        load_singan_model(f"runs:/{tiny_run[0]}/generator")

    # Sampling: any size for a SinGAN, one size for a generator.
    _, _, size = write_samples(model, 2, tmp_path / "wide.png", height=20, width=50, each_dir=tmp_path / "each")
    assert size == (20, 50) and len(list((tmp_path / "each").glob("*.png"))) == 2
    with pytest.raises(ValueError, match="only a SinGAN takes an output size"):
        write_samples(G, 2, tmp_path / "g.png", scale_w=2.0)

    # The same pyfunc file serves both: a SinGAN takes seeds, row s equals sample(state, 1, seed=s).
    h, w = state.sizes[-1]
    pred = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"seed": [7]}))
    assert pred.shape == (1, 3, h, w)
    np.testing.assert_allclose(pred[0], sample(state, 1, 7)[0].numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def champion(tiny_run):
    from tasks.registry import promote, register_version

    run_id, cfg, _ = tiny_run
    version = register_version(run_id, "t_sample", {"fd_inception_random": 10.0}, "inception_random", "fp-abc")
    promote("t_sample", version, "fd_inception_random")
    return "models:/t_sample@champion", cfg


def _sample(store, model, out, *extra):
    from flows.cli import main

    return main(["sample", "--model", model, "-n", "6", "--out", str(out), "--tracking-uri", store, *extra])


def test_sample_command_is_deterministic(store, champion, tmp_path):
    uri, cfg = champion
    r = cfg.model.resolution
    assert _sample(store, uri, tmp_path / "a.png", "--seed", "3", "--each", str(tmp_path / "each"), "--scale", "1") == 0
    assert _sample(store, uri, tmp_path / "b.png", "--seed", "3", "--scale", "1") == 0
    assert _sample(store, uri, tmp_path / "c.png", "--seed", "4", "--scale", "1") == 0
    a, b, c = (np.asarray(Image.open(tmp_path / f"{x}.png")) for x in "abc")
    assert a.shape == (2 * (r + 2) + 2, 3 * (r + 2) + 2)          # 6 tiles: 3 per row, 2 px padding
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    singles = sorted((tmp_path / "each").glob("sample_*.png"))
    assert len(singles) == 6 and np.asarray(Image.open(singles[0])).shape == (r, r)


def test_load_by_version_and_alias_agree(champion):
    import torch

    from tasks.model_io import load_generator

    z = torch.randn(2, champion[1].model.z_dim)
    with torch.no_grad():
        assert torch.equal(load_generator("models:/t_sample/1")(z), load_generator(champion[0])(z))


@pytest.mark.parametrize("uri, words", [
    ("models:/t_sample@nope", ["no alias 'nope'", "champion (v1)"]),
    ("models:/no_such_model@champion", ["no registered model named 'no_such_model'", "t_sample"]),
    ("models:/t_sample/99", ["no version '99'", "versions: 1"]),
])
def test_unknown_model_alias_or_version_is_a_clear_error(champion, uri, words):
    from tasks.model_io import ModelNotFoundError, load_generator

    with pytest.raises(ModelNotFoundError) as err:
        load_generator(uri)
    for w in words:
        assert w in str(err.value)


def test_sample_command_reports_unknown_alias_as_one_line(store, champion, tmp_path, capsys):
    assert _sample(store, "models:/t_sample@nope", tmp_path / "x.png") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no alias 'nope'" in err and "champion (v1)" in err


def test_server_launcher_defaults_and_redaction(tmp_path):
    env = {**os.environ, "TRANSSRGAN_HOME": str(tmp_path)}
    out = subprocess.run(["bash", "mlflow/start-server.sh", "--embedded", "--print"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert f"--backend-store-uri sqlite:///{tmp_path}/mlflow.db" in out and "--host 127.0.0.1" in out
    assert "--port 5000" in out
    env["MLFLOW_BACKEND_STORE_URI"] = "postgresql://mlflow:hunter2@db:5432/mlflow"
    out = subprocess.run(["bash", "mlflow/start-server.sh", "--print", "--port", "5123"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "postgresql://mlflow:***@db:5432/mlflow" in out and "hunter2" not in out and "--port 5123" in out
    bad = subprocess.run(["bash", "mlflow/start-server.sh", "--nope"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--nope" in bad.stderr


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """A data gate's manifest.parquet over 24 digit PNGs."""
    from test_flow import write_digits  # tests/ is on sys.path (pytest rootdir conftest)

    from models.config import DataConfig
    from tasks.data_gate import run_data_gate

    folder = write_digits(tmp_path_factory.mktemp("data") / "mnist16", 24)
    gate = run_data_gate(str(folder), tmp_path_factory.mktemp("gate"), DataConfig(min_images=5, gate_workers=1), 16)
    return gate


def test_runs_on_the_same_data_share_one_dataset_with_training_and_evaluation_contexts(store, gated):
    import mlflow
    from mlflow.tracking import MlflowClient

    from models.config import resolve_config
    from tasks.tracking import DIGEST_CHARS, EVALUATION, TRAINING, log_dataset, start_training_run

    cfg = resolve_config("tiny")
    run_ids = []
    for name in ("first", "second"):
        with start_training_run(cfg, experiment="t_datasets", run_name=name, system_metrics=False) as run:
            log_dataset(gated.manifest_path, TRAINING)
            log_dataset(gated.manifest_path, EVALUATION, subset=16)
            run_ids.append(run.info.run_id)
    client = MlflowClient()
    inputs = [client.get_run(r).inputs.dataset_inputs for r in run_ids]
    contexts = [{t.value: i.dataset for i in ins for t in i.tags if t.key == "mlflow.data.context"} for ins in inputs]
    assert all(set(c) == {TRAINING, EVALUATION} for c in contexts), contexts
    first, second = contexts
    train = first[TRAINING]
    assert train.name == "mnist16" and train.digest == gated.fingerprint[:DIGEST_CHARS]
    assert (second[TRAINING].name, second[TRAINING].digest) == (train.name, train.digest)
    assert (second[EVALUATION].name, second[EVALUATION].digest) == (first[EVALUATION].name, first[EVALUATION].digest)
    assert first[EVALUATION].name == "mnist16-eval-16" and first[EVALUATION].digest != train.digest
    assert json.loads(train.source)["uri"] == str(Path(gated.manifest_path).resolve())
    assert "sha256" in json.loads(train.schema)["mlflow_colspec"][2].values()
    assert json.loads(train.profile) == {"num_images": 24, "fingerprint": gated.fingerprint,
                                         "validated_folder": str(Path(gated.source))}
    # the store holds the dataset once for the experiment, linked to both runs
    exp = mlflow.get_experiment_by_name("t_datasets").experiment_id
    found = mlflow.search_runs([exp], filter_string=f"dataset.digest = '{train.digest}'", output_format="list")
    assert sorted(r.info.run_id for r in found) == sorted(run_ids)


def test_a_file_that_is_no_manifest_is_named(tmp_path):
    from tasks.tracking import manifest_dataset

    (tmp_path / "x.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="x.parquet: not a readable manifest"):
        manifest_dataset(tmp_path / "x.parquet")
