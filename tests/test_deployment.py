"""A real `prefect server start`, `transsrgan serve`, and `prefect deployment run` until Completed (slow)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from test_flow import write_digits  # tests/ is on sys.path (pytest rootdir conftest)

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    """Its own process group, so that stopping it also stops its children (uvicorn, flow runs, Spark JVMs)."""
    return subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=Path(__file__).resolve().parents[1])


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # whatever the leader left behind in its group
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_for(what: str, check, timeout_s: float, procs: list[subprocess.Popen], logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p, log in zip(procs, logs):
            if p.poll() is not None:
                pytest.fail(f"{p.args[:3]} exited with {p.returncode} while waiting for {what}:\n"
                            f"{log.read_text()[-4000:]}")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}:\n" +
                "\n".join(log.read_text()[-3000:] for log in logs))


def test_deployments_are_named_like_their_flows_with_the_cron():
    from flows.serve import build_deployments

    deps = {d.name: d for d in build_deployments("0 3 * * *")}
    assert set(deps) == {"train-transsrgan", "train-singan"}
    assert deps["train-transsrgan"].entrypoint == "flows.train_transsrgan.train_transsrgan"
    assert deps["train-transsrgan"].schedules[0].schedule.cron == "0 3 * * *"
    assert not build_deployments(None)[0].schedules


@pytest.mark.slow
def test_served_deployment_completes_a_triggered_run(tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ,
           "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "TRANSSRGAN_HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    data = write_digits(tmp_path / "digits", 64)
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    procs: list[subprocess.Popen] = []
    try:
        procs.append(start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                           env, server_log))
        wait_for("the Prefect server", lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, 180,
                 procs, [server_log])
        procs.append(start([str(BIN / "transsrgan"), "serve", "--cron", "0 3 * * *"], env, serve_log))
        url = f"{api}/deployments/name/train-transsrgan/train-transsrgan"
        wait_for("the served deployment", lambda: httpx.get(url, timeout=5).status_code == 200, 180,
                 procs, [server_log, serve_log])
        deployment = httpx.get(url, timeout=5).json()
        assert deployment["schedules"][0]["schedule"]["cron"] == "0 3 * * *"
        assert httpx.get(f"{api}/deployments/name/train-singan/train-singan", timeout=5).status_code == 200

        prefect = [str(BIN / "prefect"), "deployment", "run", "train-transsrgan/train-transsrgan"]
        bad = subprocess.run([*prefect, "--param", "steps=-1"], env=env, capture_output=True, text=True,
                             timeout=120)
        assert bad.returncode != 0 and "steps" in bad.stdout + bad.stderr

        params = {"preset": "tiny", "data": str(data), "steps": 3, "workers": 1, "spark_master": "local[1]",
                  "overrides": json.dumps({"eval.n_samples": 32})}
        args = [a for k, v in params.items() for a in ("--param", f"{k}={v}")]
        run = subprocess.run([*prefect, *args, "--watch", "--watch-timeout", "540"], env=env,
                             capture_output=True, text=True, timeout=600)
        out = run.stdout + run.stderr
        assert run.returncode == 0, out + "\n--- serve log ---\n" + serve_log.read_text()[-6000:]
        assert "Completed" in out
        runs = httpx.post(f"{api}/flow_runs/filter", json={"limit": 10}, timeout=10).json()
        states = {r["name"]: r["state_type"] for r in runs}
        assert "COMPLETED" in states.values(), states
    finally:
        for p in reversed(procs):
            stop(p)
