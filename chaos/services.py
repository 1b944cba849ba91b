"""Local servers started for real (Prefect, MLflow, PostgreSQL), waited for, and stopped by PID or pg_ctl.

Used by `transsrgan chaos` and the end-to-end tests. Every server binds to 127.0.0.1.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}   # the last: IPv4 loopback on a dual-stack (Java) socket


class ServiceError(RuntimeError):
    """A server exited or did not become healthy in time; the message holds the end of its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """One server process (and its children) in its own process group, logging to a file."""

    def __init__(self, name: str, cmd: list[str], health_url: str, env: dict[str, str], log: Path):
        self.name, self.cmd, self.health_url, self.env, self.log = name, cmd, health_url, env, log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120.0) -> "Service":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=REPO_ROOT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceError(f"{self.name} exited with {self.proc.returncode} while starting:\n{self.tail()}")
            if self.healthy():
                return self
            time.sleep(0.5)
        self.stop()
        raise ServiceError(f"{self.name} was not healthy at {self.health_url} within {timeout_s:.0f}s:\n{self.tail()}")

    def healthy(self) -> bool:
        try:
            return httpx.get(self.health_url, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.is_file() else ""

    def pids(self) -> list[int]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root.pid] + [c.pid for c in root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """SIGKILL the whole group: what a crash or `kill -9` does."""
        self._signal_group(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL what is left of the group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def _signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)


def prefect_server(home: Path, log: Path, port: int | None = None, *, env: dict[str, str] | None = None) -> Service:
    """`prefect server start` on 127.0.0.1 with its own PREFECT_HOME (SQLite); API at .api_url.

    `env`: more variables, e.g. PREFECT_SERVER_API_AUTH_STRING for a server that wants a login.
    """
    port = port or free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **(env or {})}
    env.pop("PREFECT_API_URL", None)
    svc = Service("prefect server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                     "--port", str(port)], f"http://127.0.0.1:{port}/api/health", env, log)
    svc.api_url = f"http://127.0.0.1:{port}/api"
    return svc


def mlflow_server(home: Path, log: Path, port: int | None = None, *, args: tuple[str, ...] = (),
                  env: dict[str, str] | None = None) -> Service:
    """The project's launcher (mlflow/start-server.sh) on 127.0.0.1 with a SQLite store under `home`; URL at .url.

    `args` are more launcher flags (`--auth`, `--backend URI`), `env` more variables (MLFLOW_ADMIN_PASSWORD_FILE).
    """
    port = port or free_port()
    env = {**os.environ, "TRANSSRGAN_HOME": str(home), "MLFLOW_PORT": str(port),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
    env.pop("MLFLOW_HOST", None)          # the launcher's default, 127.0.0.1
    svc = Service("mlflow server", ["bash", str(REPO_ROOT / "mlflow" / "start-server.sh"), *args],
                  f"http://127.0.0.1:{port}/health", env, log)
    svc.url = f"http://127.0.0.1:{port}"
    return svc


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (initdb, pg_ctl): Debian's newest, else the PATH's; None if absent."""
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                    key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if debian:
        return debian[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@contextlib.contextmanager
def postgres_server(user: str, password: str, database: str, timeout_s: int = 120) -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1 (a free port; its socket in its own folder), with `user` owning
    `database`; yields postgresql://user:password@127.0.0.1:PORT/database and stops the server afterwards.

    initdb refuses root, so as root the server runs as the `postgres` user, in a folder of its own under the temp
    dir (pytest's tmp_path is 0700 root's, which that user cannot enter); the folder is removed at the end.
    """
    import psycopg2

    bindir = postgres_bin()
    if bindir is None:
        raise ServiceError("PostgreSQL's server programs (initdb, pg_ctl) are not installed: run `make postgres`")
    as_owner: list[str] = []
    root = os.geteuid() == 0
    folder = Path(tempfile.mkdtemp(prefix="transsrgan-pg-", dir="/tmp" if root else None))  # /tmp: 1777
    try:
        if root:
            import pwd

            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise ServiceError("running as root, but there is no `postgres` user to run PostgreSQL as "
                                   "(Debian's postgresql package creates it: `make postgres`)") from None
            os.chown(folder, owner.pw_uid, owner.pw_gid)
            # util-linux puts runuser in sbin, which a root shell from env -i or cron may lack on PATH
            runuser = shutil.which("runuser", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
            if runuser is None:
                raise ServiceError("running as root, but `runuser` (util-linux) is not on PATH or in /usr/sbin, "
                                   "/sbin: it starts PostgreSQL as the `postgres` user")
            as_owner = [runuser, "-u", "postgres", "--"]
        data, log, port = folder / "data", folder / "server.log", free_port()

        def pg(*cmd: str) -> None:
            out = subprocess.run([*as_owner, *cmd], capture_output=True, text=True, timeout=timeout_s)
            if out.returncode != 0:
                tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
                raise ServiceError(f"{Path(cmd[0]).name} failed ({out.returncode}):\n{out.stdout}{out.stderr}{tail}")

        # trust on the socket (only this folder's owner and root can reach it), passwords over TCP
        pg(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8", "--locale=C", "-N",
           "--auth-local=trust", "--auth-host=scram-sha-256")
        try:
            pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", str(timeout_s), "-o",
               f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off", "start")
            admin = psycopg2.connect(host=str(folder), port=port, user="postgres", dbname="postgres")
            admin.autocommit = True                      # CREATE DATABASE refuses to run inside a transaction
            with admin.cursor() as cur:
                cur.execute(f'CREATE ROLE "{user}" LOGIN PASSWORD %s', (password,))
                cur.execute(f'CREATE DATABASE "{database}" OWNER "{user}"')
            admin.close()
            yield f"postgresql://{user}:{password}@127.0.0.1:{port}/{database}"
        finally:                                         # also after a start that timed out half-way
            subprocess.run([*as_owner, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                           capture_output=True, timeout=timeout_s)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def listening_addresses(pids: list[int]) -> set[tuple[str, int]]:
    """(ip, port) of every TCP socket in LISTEN state held by these processes."""
    out: set[tuple[str, int]] = set()
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out |= {(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}
    return out


@contextlib.contextmanager
def running(service: Service, timeout_s: float = 120.0) -> Iterator[Service]:
    service.start(timeout_s)
    try:
        yield service
    finally:
        service.stop()
