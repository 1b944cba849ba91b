"""Build and stop the SparkSession for DFAGD from SparkConfig, failing fast on settings that cannot work.

Any master works: local[N], local-cluster[E,C,M], spark://host:port, yarn, k8s://https://host:port.
- DFAGD's barrier stage feeds a shuffle, so it is a ShuffleMapStage: when one barrier task fails Spark
  kills its siblings and re-runs the whole stage, up to spark.stage.maxConsecutiveAttempts
  (= spark.task_max_failures) times, in every mode including plain local[N]. (A failed barrier
  *ResultStage* is never retried, which is why the stage must not be the job's last.)
- spark:// and k8s:// masters are probed with a TCP connect (spark.connect_timeout_s) before the JVM
  starts: an unreachable master fails in seconds with a message naming spark.master, instead of the
  standalone client's ~60 s of silent retries.
- For masters whose executors do not share this machine's Python environment (spark://, yarn, k8s) the
  `models` and `spark_training` packages are zipped and shipped with SparkContext.addPyFile; torch and
  numpy must already be installed on the executors (PYSPARK_PYTHON points at that interpreter).
"""

import contextlib
import os
import re
import socket
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from models.config import ConfigError, SparkConfig

_LOCAL = re.compile(r"^local(?:\[(\*|\d+)(?:\s*,\s*(\d+))?\])?$")
_LOCAL_CLUSTER = re.compile(r"^local-cluster\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]$")
ROOT = Path(__file__).resolve().parents[1]


def task_slots(master: str) -> int | None:
    """Concurrent task slots a master offers, when the URL says so (None = decided by the cluster)."""
    m = _LOCAL.match(master)
    if m:
        t = m.group(1) or "1"
        return os.cpu_count() or 1 if t == "*" else int(t)
    m = _LOCAL_CLUSTER.match(master)
    if m:
        return int(m.group(1)) * int(m.group(2))
    return None


def is_local_machine(master: str) -> bool:
    return bool(_LOCAL.match(master) or _LOCAL_CLUSTER.match(master))


def check_settings(cfg: SparkConfig) -> None:
    """Validate what can be checked before starting a JVM; errors name the setting."""
    cfg.validate()
    master = cfg.master.strip()
    known = (_LOCAL.match(master) or _LOCAL_CLUSTER.match(master) or master == "yarn"
             or master.startswith(("spark://", "k8s://", "mesos://")))
    if not known:
        raise ConfigError(f"spark.master: expected local[N], local-cluster[E,C,M], spark://host:port, yarn or "
                          f"k8s://https://host:port, got {master!r}")
    slots = task_slots(master)
    if slots is not None and cfg.workers > slots:
        raise ConfigError(f"spark.workers: DFAGD runs one barrier task per worker, so all {cfg.workers} must run at "
                          f"once, but spark.master {master!r} offers {slots} task slots; lower spark.workers or "
                          f"raise the master's cores")
    cores = os.cpu_count() or 1
    if is_local_machine(master) and cfg.workers * cfg.threads_per_worker > cores:
        warnings.warn(f"spark.workers x spark.threads_per_worker = {cfg.workers * cfg.threads_per_worker} exceeds "
                      f"the {cores} cores of this machine; workers will oversubscribe the CPU", stacklevel=2)
    if master.startswith(("spark://", "k8s://")):
        probe_master(master, cfg.connect_timeout_s)


def probe_master(master: str, timeout_s: float) -> None:
    """TCP-connect to a spark:// or k8s:// master; ConfigError naming spark.master if it does not answer."""
    url = master[len("k8s://"):] if master.startswith("k8s://") else master
    if "://" not in url:
        url = "https://" + url
    parsed = urlparse(url.split(",")[0])
    default = {"spark": 7077, "https": 443, "http": 80}.get(parsed.scheme, 7077)
    host, port = parsed.hostname, parsed.port or default
    if not host:
        raise ConfigError(f"spark.master: cannot read a host from {master!r}")
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ConfigError(f"spark.master: cannot reach {master!r} ({host}:{port}) within "
                          f"{timeout_s:g} s (spark.connect_timeout_s): {exc}") from exc


def _code_zip() -> str:
    """models/ + spark_training/ as one zip for addPyFile (remote executors)."""
    fd, path = tempfile.mkstemp(prefix="transsrgan-code-", suffix=".zip")
    os.close(fd)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for pkg in ("models", "spark_training"):
            for f in (ROOT / pkg).rglob("*.py"):
                zf.write(f, f.relative_to(ROOT).as_posix())
    return path


def build_session(cfg: SparkConfig, app_name: str = "transsrgan-dfagd"):
    """A SparkSession for DFAGD (validated first). The caller stops it; prefer spark_session()."""
    check_settings(cfg)
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    local = is_local_machine(cfg.master.strip())
    if local and cfg.driver_host in ("127.0.0.1", "localhost", "::1"):
        # Safe default: every port Spark opens on this machine (driver RPC, block managers, local-cluster's
        # master, workers and executors) listens on the loopback interface only.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1" if cfg.driver_host == "localhost" else cfg.driver_host)
    if local:
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        # executors on this machine import models/ and spark_training/ from the project root
        paths = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    builder = (SparkSession.builder.master(cfg.master.strip()).appName(app_name)
               .config("spark.driver.host", cfg.driver_host)
               .config("spark.executor.memory", cfg.executor_memory)
               .config("spark.task.maxFailures", str(cfg.task_max_failures))
               .config("spark.stage.maxConsecutiveAttempts", str(cfg.task_max_failures))
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.python.worker.reuse", "true")
               # a barrier stage that cannot get all its slots fails after ~interval x maxFailures, not 10 min
               .config("spark.scheduler.barrier.maxConcurrentTasksCheck.interval", "5s")
               .config("spark.scheduler.barrier.maxConcurrentTasksCheck.maxFailures", "12")
               .config("spark.sql.shuffle.partitions", str(max(cfg.workers, 1))))
    for key, value in cfg.extra_conf.items():
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    if not local:
        spark.sparkContext.addPyFile(_code_zip())
    return spark


@contextlib.contextmanager
def spark_session(cfg: SparkConfig, app_name: str = "transsrgan-dfagd") -> Iterator:
    """`with spark_session(config.spark) as spark:` — stopped on exit, even on error."""
    had_local_ip = "SPARK_LOCAL_IP" in os.environ
    spark = build_session(cfg, app_name)
    try:
        yield spark
    finally:
        spark.stop()
        if not had_local_ip:            # the loopback default applies to this session, not to the next master
            os.environ.pop("SPARK_LOCAL_IP", None)
