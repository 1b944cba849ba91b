"""A real `prefect server start`, `transsrgan serve`, and `prefect deployment run` until Completed (slow)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from test_flow import write_digits  # tests/ is on sys.path (pytest rootdir conftest)

from chaos.services import Service, prefect_server

BIN = Path(sys.executable).parent


def test_deployments_are_named_like_their_flows_with_the_cron():
    from flows.serve import build_deployments

    deps = {d.name: d for d in build_deployments("0 3 * * *")}
    assert set(deps) == {"train-transsrgan", "train-singan"}
    assert deps["train-transsrgan"].entrypoint == "flows.train_transsrgan.train_transsrgan"
    assert deps["train-transsrgan"].schedules[0].schedule.cron == "0 3 * * *"
    assert not build_deployments(None)[0].schedules


@pytest.mark.slow
def test_served_deployment_completes_a_triggered_run(tmp_path):
    server = prefect_server(tmp_path / "prefect", tmp_path / "server.log")    # 127.0.0.1, its own SQLite
    api = server.api_url
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "TRANSSRGAN_HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    data = write_digits(tmp_path / "digits", 64)
    url = f"{api}/deployments/name/train-transsrgan/train-transsrgan"
    # "healthy" once the served deployment exists on the server
    serve = Service("transsrgan serve", [str(BIN / "transsrgan"), "serve", "--cron", "0 3 * * *"], url, env,
                    tmp_path / "serve.log")
    try:
        server.start(timeout_s=180)
        serve.start(timeout_s=180)
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
        assert run.returncode == 0, out + "\n--- serve log ---\n" + serve.tail(6000)
        assert "Completed" in out
        runs = httpx.post(f"{api}/flow_runs/filter", json={"limit": 10}, timeout=10).json()
        states = {r["name"]: r["state_type"] for r in runs}
        assert "COMPLETED" in states.values(), states
    finally:
        serve.stop()
        server.stop()
