"""The team path: mlflow/start-server.sh never serves a shared address without a login, logs users in with MLflow's
basic-auth app, and runs the pipeline on a PostgreSQL backend store."""

import os
import stat
import subprocess
from pathlib import Path

import httpx
import pytest

from chaos.services import BIN, mlflow_server, postgres_bin, postgres_server, prefect_server, running

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "mlflow" / "start-server.sh"
SECRET = "correct-horse-battery-42"
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"
PASSWORD_VARS = ("MLFLOW_ADMIN_PASSWORD", "MLFLOW_ADMIN_PASSWORD_FILE", "MLFLOW_AUTH_ADMIN_PASSWORD",
                 "MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_HOST", "MLFLOW_FLASK_SERVER_SECRET_KEY")

# Stands in for `mlflow` (the launcher takes $VIRTUAL_ENV/bin/mlflow first): records what it was started with.
STUB = """#!/usr/bin/env bash
{ printf 'ARG %s\\n' "$@"; echo "CONFIG ${MLFLOW_AUTH_CONFIG_PATH:-}"; echo "ADMIN_PASSWORD ${MLFLOW_AUTH_ADMIN_PASSWORD:-}"
  echo "SECRET_KEY ${MLFLOW_FLASK_SERVER_SECRET_KEY:+set}"; echo "STORE ${MLFLOW_BACKEND_STORE_URI:-}"; } > "$STUB_OUT"
"""


@pytest.fixture
def launch(tmp_path):
    """Runs the launcher with a stub `mlflow` and its own TRANSSRGAN_HOME; returns (result, what the stub saw)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "mlflow").write_text(STUB)
    (venv / "bin" / "mlflow").chmod(0o755)
    record = tmp_path / "stub.txt"

    def run(*args: str, **env: str) -> tuple[subprocess.CompletedProcess, str | None]:
        base = {k: v for k, v in os.environ.items() if k not in PASSWORD_VARS}
        base.update(TRANSSRGAN_HOME=str(tmp_path / "home"), VIRTUAL_ENV=str(venv), STUB_OUT=str(record), **env)
        record.unlink(missing_ok=True)
        out = subprocess.run(["bash", str(LAUNCHER), *args], env=base, capture_output=True, text=True, timeout=60)
        return out, record.read_text() if record.exists() else None

    return run


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "127.0.0.1.example.org"])
def test_a_shared_bind_without_a_password_refuses_in_one_line(launch, host):
    out, started = launch("--host", host)
    assert out.returncode == 2 and started is None and out.stdout == ""
    line = _one_line(out.stderr)
    assert f"--host {host}" in line and "MLFLOW_ADMIN_PASSWORD" in line and "--insecure" in line


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.1.1", "localhost", "::1"])
def test_loopback_needs_no_login(launch, host):
    out, started = launch("--host", host)
    assert out.returncode == 0, out.stderr
    assert "ARG --app-name" not in started and f"ARG {host}" in started


def test_a_shared_bind_starts_basic_auth_with_the_password_in_the_environment_only(launch, tmp_path):
    pw = tmp_path / "admin-password"
    pw.write_text(SECRET + "\n")
    pw.chmod(0o600)
    out, started = launch("--host", "0.0.0.0", "--port", "5123", MLFLOW_ADMIN_PASSWORD_FILE=str(pw))
    assert out.returncode == 0, out.stderr
    args = [line[4:] for line in started.splitlines() if line.startswith("ARG ")]
    assert args[:2] == ["server", "--app-name"] and args[2] == "basic-auth" and "0.0.0.0" in args
    assert SECRET not in " ".join(args)                     # never on the command line (ps shows that) ...
    assert f"ADMIN_PASSWORD {SECRET}" in started            # ... but handed to MLflow in its environment
    assert "SECRET_KEY set" in started
    assert SECRET not in out.stdout + out.stderr            # and never printed

    ini = Path(started.split("CONFIG ", 1)[1].splitlines()[0])
    auth_dir = tmp_path / "home" / "mlflow-auth"
    assert ini == auth_dir / "basic_auth.ini"
    for f in (ini, auth_dir / "flask_secret_key"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert stat.S_IMODE(auth_dir.stat().st_mode) == 0o700
    text = ini.read_text()
    assert SECRET not in text and "admin_username = admin" in text and "auth_cache_ttl_seconds = 60" in text
    assert f"database_uri = sqlite:///{auth_dir}/basic_auth.db" in text
    key = (auth_dir / "flask_secret_key").read_text()

    out, _ = launch("--auth", MLFLOW_ADMIN_PASSWORD=SECRET)     # a restart rewrites its own file, keeps the key
    assert out.returncode == 0, out.stderr
    assert (auth_dir / "flask_secret_key").read_text() == key and ini.read_text() == text


def test_a_store_password_stays_out_of_the_process_list(launch):
    out, started = launch("--backend", f"postgresql://mlflow:{SECRET}@db:5432/mlflow")
    assert out.returncode == 0 and SECRET not in out.stdout + out.stderr
    assert "ARG --backend-store-uri" not in started and f"STORE postgresql://mlflow:{SECRET}@db" in started
    out, started = launch("--backend", "postgresql://mlflow@db:5432/mlflow")       # no password: argv as usual
    assert "ARG --backend-store-uri\nARG postgresql://mlflow@db:5432/mlflow" in started


def test_print_never_shows_the_password(launch, tmp_path):
    for env in ({"MLFLOW_ADMIN_PASSWORD": SECRET}, {"MLFLOW_AUTH_ADMIN_PASSWORD": SECRET}):
        for args in (("--host", "0.0.0.0"), ("--auth",), ("--auth", "--backend", f"postgresql://u:{SECRET}@db/m")):
            out, started = launch(*args, "--print", **env)
            assert out.returncode == 0 and started is None, out.stderr
            assert "--app-name basic-auth" in out.stdout and "MLFLOW_TRACKING_USERNAME" in out.stdout
            assert SECRET not in out.stdout + out.stderr
    assert not (tmp_path / "home" / "mlflow-auth").exists()      # --print writes no config
    out, started = launch(f"--admin-password={SECRET}", "--host", "0.0.0.0")
    assert out.returncode == 2 and started is None and SECRET not in out.stderr
    assert "MLFLOW_ADMIN_PASSWORD" in _one_line(out.stderr)


def test_insecure_serves_a_shared_bind_without_login_and_says_so(launch):
    out, started = launch("--host", "0.0.0.0", "--insecure")
    assert out.returncode == 0 and "ARG --app-name" not in started
    assert "WARNING" in out.stderr and "NO LOGIN" in out.stderr
    out, started = launch("--auth", "--insecure", MLFLOW_ADMIN_PASSWORD=SECRET)
    assert out.returncode == 2 and started is None and "contradict" in _one_line(out.stderr)


@pytest.mark.parametrize("password, words", [("short", "12 characters"), ("password1234", "old default")])
def test_a_password_mlflow_would_refuse_is_one_line(launch, password, words):
    out, started = launch("--auth", MLFLOW_ADMIN_PASSWORD=password)
    assert out.returncode == 2 and started is None
    line = _one_line(out.stderr)
    assert words in line and password not in line


def test_a_users_own_auth_config_is_never_overwritten(launch, tmp_path):
    mine = tmp_path / "home" / "mlflow-auth" / "basic_auth.ini"
    mine.parent.mkdir(parents=True)
    mine.write_text("[mlflow]\ndefault_permission = EDIT\ndatabase_uri = sqlite:////srv/users.db\n"
                    "admin_username = boss\n")
    before = mine.read_bytes()
    out, started = launch("--auth", MLFLOW_ADMIN_PASSWORD=SECRET)
    assert out.returncode == 2 and started is None
    assert str(mine) in _one_line(out.stderr) and "MLFLOW_AUTH_CONFIG_PATH" in out.stderr
    assert mine.read_bytes() == before
    out, started = launch("--auth", MLFLOW_ADMIN_PASSWORD=SECRET, MLFLOW_AUTH_CONFIG_PATH=str(mine))
    assert out.returncode == 0 and f"CONFIG {mine}" in started and mine.read_bytes() == before


# ---- real servers ---------------------------------------------------------------------------------------------


@pytest.fixture
def admin_password_file(tmp_path):
    f = tmp_path / "admin-password"
    f.write_text(SECRET + "\n")
    f.chmod(0o600)
    return f


@pytest.fixture
def logged_in(monkeypatch):
    """This process's MLflow client logs in as the admin (MLflow's own client variables)."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)


@pytest.mark.slow
def test_auth_server_answers_401_to_strangers_and_logs_a_run_for_a_user(tmp_path, admin_password_file, logged_in):
    from mlflow import MlflowClient

    home = tmp_path / "home"
    server = mlflow_server(home, tmp_path / "mlflow.log", args=("--auth",),
                           env={"MLFLOW_ADMIN_PASSWORD_FILE": str(admin_password_file)})
    with running(server) as svc:
        assert httpx.get(svc.url + SEARCH, timeout=30).status_code == 401
        assert httpx.get(svc.url + SEARCH, auth=("admin", "not-the-password"), timeout=30).status_code == 401
        assert httpx.get(svc.url + SEARCH, auth=("admin", SECRET), timeout=30).status_code == 200

        client = MlflowClient(tracking_uri=svc.url, registry_uri=svc.url)
        exp = client.create_experiment("team")
        run = client.create_run(exp)
        client.log_param(run.info.run_id, "preset", "tiny")
        client.log_metric(run.info.run_id, "fid", 12.5, step=3)
        client.log_text(run.info.run_id, "hello", "notes/hello.txt")       # through the server's artifact proxy
        client.set_terminated(run.info.run_id)

        got = client.get_run(run.info.run_id)
        assert got.info.status == "FINISHED" and got.data.metrics["fid"] == 12.5
        assert [a.path for a in client.list_artifacts(run.info.run_id, "notes")] == ["notes/hello.txt"]
        anon = httpx.get(f"{svc.url}/api/2.0/mlflow/runs/get?run_id={run.info.run_id}", timeout=30)
        assert anon.status_code == 401

        # A second user (what docs/operations.md tells an admin to do): reads by default, writes once granted EDIT.
        from mlflow.server import get_app_client

        get_app_client("basic-auth", tracking_uri=svc.url).create_user("alice", "alice-password-123")
        alice = ("alice", "alice-password-123")
        params = {"run_id": run.info.run_id, "key": "by", "value": "alice"}
        post = f"{svc.url}/api/2.0/mlflow/runs/set-tag"
        assert httpx.get(f"{svc.url}/api/2.0/mlflow/runs/get", params={"run_id": run.info.run_id}, auth=alice,
                         timeout=30).status_code == 200
        assert httpx.post(post, json=params, auth=alice, timeout=30).status_code == 403
        get_app_client("basic-auth", tracking_uri=svc.url).grant_user_permission("alice", "experiment", exp, "EDIT")
        assert httpx.post(post, json=params, auth=alice, timeout=30).status_code == 200
    ini = home / "mlflow-auth" / "basic_auth.ini"
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600 and SECRET not in ini.read_text()
    assert SECRET not in svc.tail(10**6)


@pytest.mark.slow
def test_prefect_server_with_an_auth_string_needs_it_from_every_client(tmp_path):
    """The Prefect setting docs/operations.md gives for a shared server, on the pinned Prefect."""
    from flows.prefect_api import check_server

    auth = "team:prefect-pass-1234"
    server = prefect_server(tmp_path / "prefect", tmp_path / "prefect.log",
                            env={"PREFECT_SERVER_API_AUTH_STRING": auth})
    with running(server, timeout_s=240) as svc:
        assert httpx.post(svc.api_url + "/flows/filter", json={}, timeout=30).status_code == 401
        assert httpx.post(svc.api_url + "/flows/filter", json={}, auth=tuple(auth.split(":")),
                          timeout=30).status_code == 200
        check_server(svc.api_url)           # the CLI's "is it up" probe still works: /api/health needs no login
        env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING")}
        env.update(PREFECT_API_URL=svc.api_url, PREFECT_HOME=str(tmp_path / "client"))
        ls = [str(BIN / "prefect"), "work-pool", "ls"]
        ok = subprocess.run(ls, env={**env, "PREFECT_API_AUTH_STRING": auth}, capture_output=True, text=True,
                            timeout=180)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        refused = subprocess.run(ls, env=env, capture_output=True, text=True, timeout=180)
        assert refused.returncode != 0 and "401" in refused.stdout + refused.stderr


def _require_postgres() -> None:
    """Skip where PostgreSQL is not installed; in CI (CI=true) that is a failure, since `make test-slow` installs it."""
    import pwd

    why = None
    if postgres_bin() is None:
        why = "PostgreSQL's server programs (initdb, pg_ctl) are not installed; `make postgres` installs them"
    elif os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            why = "running as root, but there is no `postgres` user to run PostgreSQL as; `make postgres` adds it"
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the PostgreSQL test: {why}")
        pytest.skip(why)


@pytest.mark.slow
def test_team_server_on_postgresql_runs_the_flow_and_serves_the_champion(harness, tmp_path, admin_password_file,
                                                                          logged_in, monkeypatch):
    """PostgreSQL (a real server) -> start-server.sh --backend postgresql://... --auth -> the tiny flow registers and
    promotes a version -> `transsrgan sample` pulls the champion from the server as a logged-in user."""
    import psutil
    import psycopg2
    from mlflow import MlflowClient
    from PIL import Image
    from test_flow import write_digits  # tests/ is on sys.path (pytest rootdir conftest)

    from flows.train_transsrgan import train_transsrgan
    from tasks.tracking import configure_tracking

    _require_postgres()
    db_password = "pg-pass-0f9e8d7c"
    with postgres_server("mlflow", db_password, "mlflow") as pg_url:
        server = mlflow_server(tmp_path / "home", tmp_path / "mlflow.log", args=("--auth", "--backend", pg_url),
                               env={"MLFLOW_ADMIN_PASSWORD_FILE": str(admin_password_file)})
        with running(server, timeout_s=240) as svc:
            assert "postgresql://mlflow:***@127.0.0.1" in svc.tail(10**6) and db_password not in svc.tail(10**6)
            for pid in svc.pids():                         # neither password shows in the process list
                cmdline = " ".join(psutil.Process(pid).cmdline())
                assert db_password not in cmdline and SECRET not in cmdline
            monkeypatch.setenv("MLFLOW_TRACKING_URI", svc.url)
            configure_tracking(svc.url)
            try:
                data = write_digits(tmp_path / "digits", 48)
                summary = train_transsrgan(preset="tiny", data=str(data), steps=3, workers=1, spark_master="local[1]",
                                           overrides={"eval.n_samples": 16, "train.sample_every": 0,
                                                      "train.checkpoint_every": 0})
            finally:                                   # later tests in this session get the default store back
                monkeypatch.delenv("MLFLOW_TRACKING_URI")
                configure_tracking()
            assert not summary["skipped"] and summary["version"] == "1" and summary["champion_version"] == "1"
            client = MlflowClient(tracking_uri=svc.url, registry_uri=svc.url)
            assert client.get_run(summary["run_id"]).data.tags["pipeline_status"] == "completed"
            assert str(client.get_model_version_by_alias("transsrgan", "champion").version) == "1"

            grid = tmp_path / "champion.png"
            env = {**os.environ, "MLFLOW_TRACKING_URI": svc.url}
            out = subprocess.run([str(BIN / "transsrgan"), "sample", "--model", "models:/transsrgan@champion",
                                  "-n", "4", "--out", str(grid), "--seed", "0"], env=env, cwd=tmp_path,
                                 capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stdout + out.stderr
            assert Image.open(grid).size[0] >= 16

            # What the server stored went to PostgreSQL, not to a SQLite file.
            with psycopg2.connect(pg_url) as conn, conn.cursor() as cur:
                cur.execute("SELECT status FROM runs WHERE run_uuid = %s", (summary["run_id"],))
                assert cur.fetchone() == ("FINISHED",)
                cur.execute("SELECT version FROM registered_model_aliases WHERE name = 'transsrgan' "
                            "AND alias = 'champion'")
                assert cur.fetchone() == (1,)
            conn.close()
            assert not (tmp_path / "home" / "mlflow-server.db").exists()
