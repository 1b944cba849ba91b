"""Reliability pieces without servers: the tracking spool and sink, checkpoint-write failures, resume, faults."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from chaos.tracking import image_steps
from models.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from models.config import resolve_config
from models.data import load_dataset
from models.step import build_state, get_flat
from models.trainer import LocalGradSource, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits16():
    return load_dataset("digits", 16, 1, limit=128)


@pytest.fixture
def sqlite_store(tmp_path):
    from mlflow.tracking._model_registry import utils as reg_utils
    from mlflow.tracking._tracking_service import utils as track_utils

    from tasks.tracking import configure_tracking

    saved = track_utils._tracking_uri, reg_utils._registry_uri
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    configure_tracking(uri)
    yield uri
    track_utils._tracking_uri, reg_utils._registry_uri = saved


def tiny(**over):
    return resolve_config("tiny", {"train.log_every": 1, "train.sample_every": 0, "train.checkpoint_every": 0,
                                   **over})


# -- the spool ---------------------------------------------------------------------------------------------
def test_spool_keeps_unsent_records_across_reopen_and_survives_a_torn_line(tmp_path):
    from tasks.sink import Spool

    spool = Spool(tmp_path / "s.jsonl")
    for i in range(3):
        spool.append({"kind": "metrics", "i": i})
    spool.mark_sent(1)
    with (tmp_path / "s.jsonl").open("a") as fh:
        fh.write('{"kind": "metr')                        # a crash in the middle of an append
    again = Spool(tmp_path / "s.jsonl")
    assert again.pending == 2 and [r["i"] for r in again.records[again.sent:]] == [1, 2]


# -- the sink against a real SQLite store ------------------------------------------------------------------------
def _new_run(name: str) -> str:
    from mlflow.tracking import MlflowClient

    from tasks.tracking import ensure_experiment

    return MlflowClient().create_run(ensure_experiment("t_reliability"), run_name=name).info.run_id


def test_sink_delivers_everything_by_close_and_checkpoints_stay_local(sqlite_store, tmp_path, digits16):
    from mlflow.tracking import MlflowClient

    from tasks.train import GANSink as MlflowSink

    run_id = _new_run("delivers")
    cfg = tiny(**{"train.steps": 6, "train.sample_every": 3, "train.checkpoint_every": 3})
    with MlflowSink(run_id, checkpoint_dir=tmp_path / "run", sample_n=4, print_fn=None) as sink:
        train(build_state(cfg), LocalGradSource(digits16, cfg), print_fn=None, **sink.callbacks())
    client = MlflowClient()
    assert [m.step for m in client.get_metric_history(run_id, "loss_d")] == [1, 2, 3, 4, 5, 6]
    assert image_steps(client, run_id) == [3, 6]
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/checkpoint.pt"]
    assert read_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 6
    assert sink.spool.pending == 0


def test_unreachable_store_never_blocks_training_and_the_next_sink_sends_the_backlog(sqlite_store, tmp_path,
                                                                                   digits16, monkeypatch):
    from mlflow.tracking import MlflowClient

    from chaos.services import free_port
    from tasks.sink import TrackingUnavailable
    from tasks.train import GANSink as MlflowSink

    run_id = _new_run("backlog")
    cfg = tiny(**{"train.steps": 5, "train.checkpoint_every": 5})
    sink = MlflowSink(run_id, checkpoint_dir=tmp_path / "run", print_fn=None)
    # the sink's client now talks to a tracking server that is not there (a real client, a closed port)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    sink.client = MlflowClient(f"http://127.0.0.1:{free_port()}")
    callers = []                                              # threads that talked to the (missing) store
    for name in ("log_batch", "log_artifact", "log_artifacts", "log_image"):
        real = getattr(sink.client, name)
        setattr(sink.client, name, lambda *a, _real=real, **k: callers.append(threading.current_thread()) or _real(*a, **k))
    train(build_state(cfg), LocalGradSource(digits16, cfg), print_fn=None, **sink.callbacks())
    assert callers and threading.main_thread() not in callers  # training never called the store itself
    with pytest.raises(TrackingUnavailable, match="mlflow-spool.jsonl") as err:
        sink.close(timeout_s=1)
    assert str(tmp_path / "run" / "checkpoint.pt") in str(err.value) and sink.outages == 1
    assert sink.spool.pending == 8                 # 5 metric records, the last step's grid (image, samples/ file), checkpoint
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    with MlflowSink(run_id, checkpoint_dir=tmp_path / "run", print_fn=None) as later:   # store reachable again
        assert later.spool.pending >= 1
    client = MlflowClient()
    assert [m.step for m in client.get_metric_history(run_id, "loss_d")] == [1, 2, 3, 4, 5]
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/checkpoint.pt"]
    assert image_steps(client, run_id) == [5]         # the grid spooled during the outage, replayed as an image
    assert [a.path for a in client.list_artifacts(run_id, "samples")] == ["samples/step_000005.png"]   # and by name


def test_credentials_leave_the_tracking_uri(monkeypatch, tmp_path):
    import mlflow

    from tasks.tracking import configure_tracking, split_credentials

    assert split_credentials("https://u:p%40ss@mlflow.example:8443/x") == ("https://mlflow.example:8443/x", "u", "p@ss")
    assert split_credentials("postgresql://u:p@db/mlflow") == ("postgresql://u:p@db/mlflow", None, None)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    from mlflow.tracking._model_registry import utils as reg_utils
    from mlflow.tracking._tracking_service import utils as track_utils

    saved = track_utils._tracking_uri, reg_utils._registry_uri
    try:
        shown = configure_tracking("http://chaos:hunter2@127.0.0.1:5999")
        assert shown == "http://127.0.0.1:5999" and mlflow.get_tracking_uri() == "http://127.0.0.1:5999"
        assert os.environ["MLFLOW_TRACKING_USERNAME"] == "chaos" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "hunter2"
        configure_tracking(f"sqlite:///{tmp_path / 'other.db'}")    # another store never gets them
        assert "MLFLOW_TRACKING_PASSWORD" not in os.environ
    finally:
        track_utils._tracking_uri, reg_utils._registry_uri = saved


# -- checkpoints -------------------------------------------------------------------------------------------------
def test_a_failed_checkpoint_write_names_the_file_and_keeps_the_previous_one(tmp_path, monkeypatch):
    import models.checkpoint as ck

    state = build_state(tiny())
    path = save_checkpoint(state, tmp_path / "checkpoint.pt")
    before = read_checkpoint(path)
    real_save = torch.save

    def full_disk(obj, fh, *a, **k):        # half a file, then the disk is full
        real_save({"x": torch.zeros(1000)}, fh)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", full_disk)
    state.step = 7
    with pytest.raises(CheckpointError, match=r"step 7 .*No space left on device.*previous checkpoint .* untouched"):
        save_checkpoint(state, path)
    monkeypatch.setattr(ck.torch, "save", real_save)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]        # no temp file left behind
    after = read_checkpoint(path)
    assert after["step"] == before["step"] == 0
    assert all(torch.equal(after["G"][k], v) for k, v in before["G"].items())
    with pytest.raises(CheckpointError, match="no earlier checkpoint"):
        save_checkpoint(state, tmp_path / "checkpoint.pt" / "nested.pt")     # parent is a file


def test_checkpoint_write_fails_for_real_past_a_file_size_limit(tmp_path):
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (200000, 200000)); "
            "from models.checkpoint import save_checkpoint, CheckpointError; from models.step import build_state; "
            "from models.config import resolve_config\n"
            "try:\n save_checkpoint(build_state(resolve_config('tiny', {})), sys.argv[1]); print('WROTE')\n"
            "except CheckpointError as e:\n print('ERROR', e)")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c.pt")], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.stdout.startswith("ERROR could not write the checkpoint of step 0"), res.stdout + res.stderr
    assert list(tmp_path.iterdir()) == []


# -- resume --------------------------------------------------------------------------------------------------------
def test_resume_points_name_what_is_missing_or_different(tmp_path, monkeypatch):
    from tasks.runs import ResumeError, config_differences, find_checkpoint, resume_point, write_run_record

    monkeypatch.setenv("TRANSSRGAN_HOME", str(tmp_path / "home"))
    with pytest.raises(ResumeError, match="no checkpoint under"):
        find_checkpoint("latest")
    with pytest.raises(ResumeError, match="no checkpoint at"):
        find_checkpoint(str(tmp_path / "nowhere"))
    run = tmp_path / "home" / "runs" / "r1"
    state = build_state(tiny(**{"data.source": "/validated/manifest.parquet"}))
    state.step = 3
    save_checkpoint(state, run / "checkpoint.pt")
    write_run_record(run, mlflow_run_id="abc", data_source="digits", dataset_fingerprint="fp")
    for ref in ("latest", str(run), str(run / "checkpoint.pt")):
        p = resume_point(ref)
        assert (p.step, p.mlflow_run_id, p.fingerprint, p.config.data.source) == (3, "abc", "fp", "digits")
    assert config_differences(p.config, tiny(**{"train.steps": 99})) == ["train.steps: 20 -> 99"]
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ResumeError, match="not a readable checkpoint"):
        resume_point(str(run))


def test_resume_refuses_config_flags(tmp_path, monkeypatch):
    from pydantic import ValidationError

    from flows.params import TrainParams

    monkeypatch.setenv("TRANSSRGAN_HOME", str(tmp_path))
    save_checkpoint(build_state(tiny()), tmp_path / "run" / "checkpoint.pt")
    from tasks.runs import resume_point

    TrainParams(resume=str(tmp_path / "run"))
    assert resume_point(str(tmp_path / "run")).config.train.steps == 20     # the checkpoint's config
    with pytest.raises(ValidationError, match="drop --steps"):
        TrainParams(resume=str(tmp_path / "run"), steps=5)
    with pytest.raises(ValidationError, match="not found"):
        TrainParams(resume=str(tmp_path / "missing"))


# -- faults injected from outside -----------------------------------------------------------------------------------
def test_nan_gradients_hit_exactly_the_listed_steps(digits16):
    from chaos.faults import NaNGradients, step_range

    cfg = tiny(**{"train.steps": 6})
    lines: list[str] = []
    state = train(build_state(cfg), NaNGradients(LocalGradSource(digits16, cfg), step_range("2-3")),
                  print_fn=lines.append)
    assert [ln.split(":")[0] for ln in lines if "non-finite" in ln] == ["step 3", "step 4"]
    assert state.step == 6 and torch.isfinite(get_flat(state.D)).all()
    assert step_range("5") == range(5, 6)
    for bad in ("soon", "4-2", ""):
        with pytest.raises(ValueError):
            step_range(bad)


def test_worker_kill_is_refused_where_process_ids_mean_nothing():
    from chaos.faults import KillWorker

    KillWorker("python", 0, 1).check_master("local[2]")
    KillWorker("executor", 0, 1).check_master("local-cluster[2,1,1024]")
    with pytest.raises(ValueError, match="local-cluster"):
        KillWorker("executor", 0, 1).check_master("local[2]")
    with pytest.raises(ValueError, match="this machine"):
        KillWorker("python", 0, 1).check_master("yarn")


def test_worker_kill_fires_once_at_its_step_on_its_worker():
    from chaos.faults import KillWorker
    from spark_training.reduction import WorkerProcess

    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        kill = KillWorker("python", worker=1, step=3)
        workers = {0: WorkerProcess(None, None), 1: WorkerProcess(victim.pid, None)}
        for step, phase in ((2, 0), (3, 1), (3, 2)):          # another step, or not the step's first update
            kill(workers, step, phase)
        assert victim.poll() is None and not kill.fired
        kill(workers, 3, 0)
        assert victim.wait(timeout=30) == -9 and kill.fired
        kill(workers, 3, 0)                                    # once only
    finally:
        victim.kill()
    with pytest.raises(RuntimeError, match="no executor process id"):
        KillWorker("executor", worker=0, step=0)(workers, 0, 0)


def test_failing_worker_hook_travels_without_the_chaos_package(tmp_path):
    from pyspark import cloudpickle

    from chaos.faults import FailOnce

    payload = tmp_path / "hook.pkl"
    payload.write_bytes(cloudpickle.dumps(FailOnce(worker=1, request=2)))
    code = ("import pickle, sys\n"
            "assert 'chaos' not in sys.modules\n"
            "hook = pickle.loads(open(sys.argv[1], 'rb').read())\n"
            "hook(0, 0, 2); hook(1, 0, 1); hook(1, 1, 2)\n"
            "try:\n    hook(1, 0, 2)\nexcept RuntimeError as e:\n    print('RAISED', type(e).__name__, e)\n"
            "try:\n    import chaos\nexcept ModuleNotFoundError:\n    print('NO CHAOS')\n")
    res = subprocess.run([sys.executable, "-c", code, str(payload)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert res.stdout.splitlines() == ["RAISED TaskFailure worker 1: planned failure of its first attempt at request 2",
                                       "NO CHAOS"], res.stderr[-2000:]


def test_injected_cli_swaps_the_dfagd_default_hooks_and_restores_them():
    from chaos.inject import default_hooks, main
    from spark_training.dfagd import DFAGDHooks, train_dfagd

    before = train_dfagd.__kwdefaults__["hooks"]
    hooks = DFAGDHooks(wrap_source=lambda source: source)
    with default_hooks(hooks):
        assert train_dfagd.__kwdefaults__["hooks"] is hooks
    assert train_dfagd.__kwdefaults__["hooks"] is before is None
    for argv in (["--nan-steps", "soon", "--", "train"], ["--nan-steps", "3", "train"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2


def test_chaos_cli_lists_and_rejects_unknown_scenarios():
    from chaos.harness import load_scenarios
    from flows.cli import main

    names = list(load_scenarios())
    assert {"sigkill-driver-resume", "sigkill-python-worker", "sigkill-executor", "nan-step-skipped",
            "divergence-stops", "mlflow-outage-buffered", "mlflow-stays-down", "disk-full-checkpoint",
            "credentials-redacted", "weights-only-load", "symlink-escape", "servers-bind-loopback",
            "user-files-beside-outputs", "sigkill-python-worker-allreduce"} == set(names)
    res = subprocess.run([sys.executable, "-m", "flows.cli", "chaos", "--only", "bogus"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--only: unknown scenario(s) bogus" in res.stderr
    assert main(["chaos", "--list"]) == 0


def test_chaos_table_marks_what_did_not_hold():
    from chaos.harness import table

    result = {"scenarios": [{"name": "a", "expected": "x|y", "observed": "ok", "steps_lost": 0, "data_lost": False,
                             "held": True},
                            {"name": "b", "expected": "z", "observed": "bad", "steps_lost": 3, "data_lost": True,
                             "held": False}], "seconds": 1.0}
    md = table(result)
    assert "| a | x\\|y | ok | 0 | no | yes |" in md and "| b | z | bad | 3 | yes | **NO** |" in md
    assert md.endswith("1/2 scenarios held in 1s")
    json.dumps(result)
