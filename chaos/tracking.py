"""Scenarios of tracking: an MLflow server that dies mid-run (and comes back, or not), credentials in its URI."""

import contextlib
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

from mlflow.tracking import MlflowClient

from chaos.harness import ChaosContext, Outcome, scenario, tracking_store
from chaos.services import REPO_ROOT, Service, mlflow_server
from models.checkpoint import read_checkpoint
from models.config import resolve_config
from models.data import load_dataset
from models.step import build_state
from models.trainer import LocalGradSource, train
from tasks.sink import TrackingUnavailable
from tasks.tags import SAMPLES_KEY
from tasks.tracking import start_training_run
from tasks.train import GANSink as MlflowSink

DOWN_AT = 10          # the server is SIGKILLed when training logs this step
DOWN_FOR_S = 6.0      # ... and started again once training has gone on this long without it


def image_steps(client: MlflowClient, run_id: str, key: str = SAMPLES_KEY) -> list[int]:
    """Steps of the full-size images that mlflow.log_image(key=key, step=...) wrote under images/ of a run."""
    names = [Path(a.path).name for a in client.list_artifacts(run_id, "images")]
    parts = [n.removesuffix(".png").split("+") for n in names if n.endswith(".png")]   # key+step+S+timestamp+T+uuid
    return sorted(int(p[2]) for p in parts if len(p) > 2 and p[0] == key and p[1] == "step")


def _tiny(steps: int, **over) -> tuple:
    cfg = resolve_config("tiny", {"train.steps": steps, "train.log_every": 1, "train.sample_every": 0,
                                  "train.checkpoint_every": 0, **over})
    return cfg, load_dataset("digits", 16, 1, limit=256)


@contextlib.contextmanager
def _server(ctx: ChaosContext) -> Iterator[Service]:
    svc = mlflow_server(ctx.folder("server"), ctx.current / "mlflow-server.log")
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


@contextlib.contextmanager
def _env(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@scenario("mlflow-outage-buffered",
          f"the MLflow server is SIGKILLed at step {DOWN_AT} and restarted {DOWN_FOR_S:.0f}s later: training goes "
          "on meanwhile, buffers its records locally and flushes them; every step's metrics and every sample grid "
          "and checkpoint end up in the run")
def mlflow_outage_buffered(ctx: ChaosContext) -> Outcome:
    steps = 400
    cfg, data = _tiny(steps, **{"train.sample_every": 50, "train.checkpoint_every": 50})
    notes: list[str] = []
    seen: dict[int, float] = {}
    outage: dict[str, float] = {}
    with _server(ctx) as server, tracking_store(server.url):
        with start_training_run(cfg, experiment="chaos", run_name="mlflow-outage", system_metrics=False) as run:
            run_id = run.info.run_id
            with MlflowSink(run_id, checkpoint_dir=ctx.folder("run"), sample_n=16, flush_timeout_s=240,
                            print_fn=notes.append) as sink:

                def on_log(s, m) -> None:
                    sink.on_log(s, m)
                    seen[s.step] = time.perf_counter()
                    if s.step == DOWN_AT:
                        server.kill()
                        outage["down"], outage["down_step"] = time.perf_counter(), s.step
                    elif "down" in outage and "up" not in outage and time.perf_counter() - outage["down"] >= DOWN_FOR_S:
                        outage["up_step"] = s.step
                        server.start()
                        outage["up"] = time.perf_counter()

                train(build_state(cfg), LocalGradSource(data, cfg), on_log=on_log, on_sample=sink.on_sample,
                      on_checkpoint=sink.on_checkpoint, print_fn=None)
                if "up" not in outage:                 # training ended first: bring the server back for the flush
                    outage["up_step"] = steps
                    server.start()
                    outage["up"] = time.perf_counter()
                buffered = sink.spool.pending
        client = MlflowClient()
        logged = {m.step for m in client.get_metric_history(run_id, "loss_d")}
        grids = image_steps(client, run_id)
        ckpts = [a.path for a in client.list_artifacts(run_id, "checkpoints")]
        status = client.get_run(run_id).info.status
    a, b = int(outage["down_step"]), int(outage["up_step"])
    during = (seen[b] - seen[a + 1]) / max(b - a - 1, 1) if b > a + 1 else float("nan")
    up = (seen[steps] - seen[b]) / max(steps - b, 1) if steps > b else float("nan")
    missing = sorted(set(range(1, steps + 1)) - logged)
    want_grids = steps // 50
    held = (not missing and len(grids) == want_grids and "checkpoints/checkpoint.pt" in ckpts and status == "FINISHED"
            and b > a + 1 and any("unreachable" in n for n in notes) and any("reachable again" in n for n in notes))
    return Outcome(f"down from step {a} to {b} ({outage['up'] - outage['down']:.1f}s incl. restart); training went on "
                   f"at {during * 1e3:.0f} ms/step ({up * 1e3:.0f} ms/step once the server, a CPU competitor here, was back); "
                   f"{buffered} records still queued at the "
                   f"end of training, then flushed; MLflow has loss_d for {len(logged)}/{steps} steps, "
                   f"{len(grids)}/{want_grids} sample grids, checkpoint: {'yes' if ckpts else 'no'}; run {status}",
                   held, data_lost=bool(missing) or len(grids) < want_grids)


@scenario("mlflow-stays-down",
          "the MLflow server dies and does not come back: the run ends with a clear TrackingUnavailable error, the "
          "checkpoint is on disk, the records wait in the spool and are sent by the next sink on that folder")
def mlflow_stays_down(ctx: ChaosContext) -> Outcome:
    cfg, data = _tiny(10, **{"train.checkpoint_every": 5})
    folder = ctx.folder("run")
    # fail fast instead of MLflow's default ~2 minutes of HTTP retries per call
    with _server(ctx) as server, tracking_store(server.url), \
            _env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5"):
        client = MlflowClient()
        exp = client.get_experiment_by_name("chaos") or client.get_experiment(client.create_experiment("chaos"))
        run_id = client.create_run(exp.experiment_id, run_name="mlflow-stays-down").info.run_id
        sink = MlflowSink(run_id, checkpoint_dir=folder, print_fn=None)
        server.kill()
        train(build_state(cfg), LocalGradSource(data, cfg), print_fn=None, **sink.callbacks())
        try:
            sink.close(timeout_s=5)
            error = ""
        except TrackingUnavailable as exc:
            error = str(exc)
        pending = sink.spool.pending
        ckpt_step = read_checkpoint(folder / "checkpoint.pt")["step"]
        server.start()
        with MlflowSink(run_id, checkpoint_dir=folder, print_fn=None) as later:
            left = later.spool.pending
        logged = {m.step for m in client.get_metric_history(run_id, "loss_d")}
    clear = "unreachable" in error and str(folder / "checkpoint.pt") in error and "mlflow-spool.jsonl" in error
    held = clear and ckpt_step == 10 and pending > 0 and logged == set(range(1, 11))
    return Outcome(f"close() raised: {error[:160]}...; checkpoint at step {ckpt_step} on disk; {pending} records "
                   f"spooled; the next sink sent {left} of them: loss_d for {len(logged)}/10 steps in MLflow",
                   held, data_lost=logged != set(range(1, 11)))


_CREDENTIALS = textwrap.dedent("""
    import sys
    from models.config import resolve_config
    from models.data import load_dataset
    from models.step import build_state
    from models.trainer import LocalGradSource, train
    from tasks.train import GANSink as MlflowSink
    from tasks.tracking import configure_tracking, start_training_run
    print("store", configure_tracking(sys.argv[1]))
    cfg = resolve_config("tiny", {"train.steps": 3, "train.log_every": 1, "train.sample_every": 0})
    data = load_dataset("digits", 16, 1, limit=64)
    with start_training_run(cfg, experiment="chaos", run_name="credentials", system_metrics=False) as run:
        with MlflowSink(run.info.run_id, checkpoint_dir=sys.argv[2], print_fn=print) as sink:
            train(build_state(cfg), LocalGradSource(data, cfg), **sink.callbacks())
    print("RUN", run.info.run_id)
""")


@scenario("credentials-redacted",
          "a tracking URI with a password (http://user:PASSWORD@host): the run is tracked, and the password appears "
          "in no log line, param or tag")
def credentials_redacted(ctx: ChaosContext) -> Outcome:
    secret = f"s3cr3t-{os.getpid()}-chaos"
    script = ctx.current / "credentials.py"
    script.write_text(_CREDENTIALS)
    with _server(ctx) as server:
        uri = server.url.replace("http://", f"http://chaos:{secret}@")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
        res = subprocess.run([sys.executable, str(script), uri, str(ctx.folder("run"))], cwd=REPO_ROOT,
                             env={**env, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=300)
        output = res.stdout + res.stderr
        (ctx.current / "run.log").write_text(output)
        run_id = next((ln.split()[1] for ln in res.stdout.splitlines() if ln.startswith("RUN ")), None)
        if res.returncode != 0 or run_id is None:
            return Outcome(f"the tracked run failed (exit {res.returncode}): {output.strip()[-300:]}", False)
        with tracking_store(server.url):
            run = MlflowClient().get_run(run_id)
    leaks = [where for where, text in (("log", output), ("params", repr(run.data.params)),
                                      ("tags", repr(run.data.tags))) if secret in text]
    return Outcome(f"run {run_id[:8]} tracked through the URI with a password; password found in: "
                   f"{', '.join(leaks) or 'nothing'} ({len(output.splitlines())} log lines, "
                   f"{len(run.data.params)} params, {len(run.data.tags)} tags checked)", not leaks)
