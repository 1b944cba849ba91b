"""The deployments: prefect.yaml on a `process` work pool with a worker, and `transsrgan serve`; each against a
real `prefect server start` and `prefect deployment run` until Completed (slow)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from test_flow import write_digits  # tests/ is on sys.path (pytest rootdir conftest)

from chaos.services import Service, free_port, prefect_server

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
POOL = "transsrgan"          # prefect.yaml's work pool


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
        # `serve` registers its deployments one after the other: wait for the second (bounded), then check it
        singan = f"{api}/deployments/name/train-singan/train-singan"
        deadline = time.monotonic() + 120
        while httpx.get(singan, timeout=5).status_code == 404 and time.monotonic() < deadline:
            time.sleep(1)
        assert httpx.get(singan, timeout=5).status_code == 200, serve.tail(3000)

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


def test_prefect_yaml_holds_both_deployments_with_valid_parameters_and_the_cron():
    import yaml
    from prefect.flows import load_flow_from_entrypoint

    from flows.params import SinGANParams, TrainParams
    from flows.serve import DEFAULT_CRON

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deps = {d["name"]: d for d in spec["deployments"]}
    assert set(deps) == {"train-transsrgan", "train-singan"}
    for name, params in (("train-transsrgan", TrainParams), ("train-singan", SinGANParams)):
        d = deps[name]
        assert load_flow_from_entrypoint(str(ROOT / d["entrypoint"])).name == name     # named like its flow
        params.model_validate(d["parameters"])                                          # no unknown or bad value
        assert [s["cron"] for s in d["schedules"]] == [DEFAULT_CRON] and d["work_pool"]["name"] == POOL
    # flow runs start in the deployed checkout, whatever its path (recorded by the build step at deploy time)
    assert spec["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ checkout.stdout }}"}}]
    assert spec["build"][0]["prefect.deployments.steps.run_shell_script"]["id"] == "checkout"


@pytest.mark.slow
def test_prefect_deploy_to_a_process_work_pool_and_a_worker_completes_a_run(tmp_path, monkeypatch):
    """The README's path: `prefect work-pool create --type process`, `prefect deploy --all` (from the repository
    root, where prefect.yaml is), `prefect worker start`, then `prefect deployment run ... --watch`."""
    # no scheduler: the daily cron must not add a run of its own (at 03:00 UTC) to the one this test triggers
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED", "false")
    server = prefect_server(tmp_path / "prefect", tmp_path / "server.log")    # 127.0.0.1, its own SQLite
    api = server.api_url
    health = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1", "PREFECT_WORKER_WEBSERVER_PORT": str(health),
           "TRANSSRGAN_HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    prefect = str(BIN / "prefect")
    data = write_digits(tmp_path / "digits", 64)
    worker = Service("prefect worker", [prefect, "worker", "start", "--pool", POOL, "--limit", "1",
                                        "--with-healthcheck"], f"http://127.0.0.1:{health}/health", env,
                     tmp_path / "worker.log")

    def cli(*args: str, timeout: int = 300) -> str:
        res = subprocess.run([prefect, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        assert res.returncode == 0, f"prefect {' '.join(args)}: {res.stdout[-3000:]}{res.stderr[-3000:]}"
        return res.stdout + res.stderr

    try:
        server.start(timeout_s=180)
        cli("work-pool", "create", "--type", "process", POOL)
        cli("deploy", "--all")
        for name in ("train-transsrgan", "train-singan"):
            dep = httpx.get(f"{api}/deployments/name/{name}/{name}", timeout=10).json()
            assert dep["work_pool_name"] == POOL and dep["schedules"][0]["schedule"]["cron"] == "0 3 * * *"
            assert dep["pull_steps"] == [{"prefect.deployments.steps.set_working_directory":
                                          {"directory": str(ROOT)}}]
        worker.start(timeout_s=180)

        params = {"preset": "tiny", "data": str(data), "steps": 3, "workers": 1, "spark_master": "local[1]",
                  "overrides": json.dumps({"eval.n_samples": 32})}
        args = [a for k, v in params.items() for a in ("--param", f"{k}={v}")]
        try:
            out = cli("deployment", "run", "train-transsrgan/train-transsrgan", *args, "--watch",
                      "--watch-timeout", "540", timeout=600)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- worker log ---\n{worker.tail(6000)}") from None
        assert "Completed" in out
        runs = httpx.post(f"{api}/flow_runs/filter", json={"limit": 10}, timeout=10).json()
        assert [r["state_type"] for r in runs] == ["COMPLETED"], runs
        keys = {a["key"] for a in httpx.post(f"{api}/artifacts/filter", json={
            "artifacts": {"flow_run_id": {"any_": [runs[0]["id"]]}}}, timeout=10).json()}
        assert {"transsrgan-summary", "transsrgan-metrics"} <= keys, keys
    finally:
        worker.stop()
        server.stop()
