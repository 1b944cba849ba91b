"""The harness of `transsrgan chaos`: fault scenarios run for real on the tiny preset, each judged by its promise.

A scenario is a function registered with @scenario(name, expected). It gets a ChaosContext (a scratch folder,
the environment for subprocesses, shared servers started on demand) and returns an Outcome: what was observed,
whether the expectation held, how many training steps had to be redone, and whether any data was lost. A
scenario that raises counts as not held, with the error as its observation.

The scenarios live in chaos/training.py, spark.py, tracking.py and safety.py; the faults in chaos/faults.py.
"""

import contextlib
import dataclasses
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from chaos.services import REPO_ROOT, Service, prefect_server
from models.files import write_atomic

SCENARIO_MODULES = ("chaos.training", "chaos.spark", "chaos.tracking", "chaos.safety")


@dataclasses.dataclass
class Outcome:
    observed: str
    held: bool
    steps_lost: int = 0
    data_lost: bool = False


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    expected: str
    run: Callable[["ChaosContext"], Outcome]


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, expected: str) -> Callable:
    """Register a scenario; the registry keeps definition order, which is the order they run in."""

    def register(fn: Callable[["ChaosContext"], Outcome]) -> Callable[["ChaosContext"], Outcome]:
        SCENARIOS[name] = Scenario(name, expected, fn)
        return fn

    return register


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def brief(text: str, limit: int = 240) -> str:
    """One line for the table: no colour codes or newlines; long texts keep their start and their end."""
    text = " ".join(_ANSI.sub("", str(text)).split())
    return text if len(text) <= limit else f"{text[:limit // 2 - 3]} ... {text[-(limit // 2 - 3):]}"


def load_scenarios() -> dict[str, Scenario]:
    for module in SCENARIO_MODULES:
        importlib.import_module(module)
    return SCENARIOS


class ChaosContext:
    """A scratch folder per scenario, the subprocess environment, and servers shared between scenarios."""

    def __init__(self, root: Path, say: Callable[[str], None]):
        self.root, self.say = root, say
        self._prefect: Service | None = None
        self.current = root

    def folder(self, name: str) -> Path:
        path = self.current / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def home(self) -> Path:
        """TRANSSRGAN_HOME shared by the CLI runs of the session (MLflow store, validation cache, runs)."""
        path = self.root / "home"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def prefect_service(self) -> Service:
        """One real `prefect server start` for every CLI run of the session, started on first use."""
        if self._prefect is None:
            self.say("    starting a Prefect server for the CLI runs ...")
            self._prefect = prefect_server(self.root / "prefect", self.root / "prefect-server.log").start()
        return self._prefect

    def prefect_api(self) -> str:
        return self.prefect_service().api_url

    def env(self) -> dict[str, str]:
        """The environment of a `transsrgan` subprocess: this session's home, Prefect server and Python."""
        env = {**os.environ, "TRANSSRGAN_HOME": str(self.home), "PREFECT_API_URL": self.prefect_api(),
               "PREFECT_HOME": str(self.root / "prefect"), "PYTHONUNBUFFERED": "1",
               "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
        env.pop("MLFLOW_TRACKING_URI", None)           # the embedded SQLite store in TRANSSRGAN_HOME
        return env

    def cli(self, *args: str, faults: Sequence[str] = ()) -> list[str]:
        """A `transsrgan` command line; with `faults` (chaos.inject options) it runs with them installed."""
        if faults:
            return [sys.executable, "-m", "chaos.inject", *faults, "--", *args]
        return [sys.executable, "-m", "flows.cli", *args]

    def run_cli(self, *args: str, faults: Sequence[str] = (), timeout_s: float = 600.0) -> subprocess.CompletedProcess:
        return subprocess.run(self.cli(*args, faults=faults), env=self.env(), cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=timeout_s)

    def close(self) -> None:
        if self._prefect is not None:
            self._prefect.stop()


@contextlib.contextmanager
def tracking_store(uri: str) -> Iterator[str]:
    """Point this process's MLflow at `uri` for a while, then restore whatever was configured before."""
    from mlflow.tracking._model_registry import utils as reg_utils
    from mlflow.tracking._tracking_service import utils as track_utils

    from tasks.tracking import configure_tracking

    saved = track_utils._tracking_uri, reg_utils._registry_uri
    try:
        yield configure_tracking(uri)
    finally:
        track_utils._tracking_uri, reg_utils._registry_uri = saved


def run_chaos(names: list[str] | None = None, *, workdir: Path | None = None, keep: bool = False,
              print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the scenarios (all, or `names`, in registry order); returns {scenarios: [rows], held, seconds, workdir}."""
    registry = load_scenarios()
    unknown = sorted(set(names or []) - set(registry))
    if unknown:
        raise ValueError(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(registry)}")
    chosen = [s for s in registry.values() if not names or s.name in names]
    root = workdir or Path(tempfile.mkdtemp(prefix="transsrgan-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    ctx = ChaosContext(root, print_fn)
    results: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    try:
        for i, sc in enumerate(chosen, 1):
            print_fn(f"[{i}/{len(chosen)}] {sc.name}: {sc.expected}")
            ctx.current = root / sc.name
            ctx.current.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            try:
                out = sc.run(ctx)
            except Exception as exc:  # noqa: BLE001 - a scenario that breaks did not hold
                (ctx.current / "error.txt").write_text(traceback.format_exc())
                out = Outcome(f"error: {type(exc).__name__}: {str(exc)[:600]} (traceback in "
                              f"{ctx.current / 'error.txt'})", held=False)
            seconds = time.perf_counter() - t0
            observed = brief(out.observed.replace(str(root), "<work>"), 400)
            results.append({"name": sc.name, "expected": sc.expected, "observed": observed,
                            "steps_lost": int(out.steps_lost), "data_lost": bool(out.data_lost),
                            "held": bool(out.held), "seconds": round(seconds, 1)})
            print_fn(f"    {'held' if out.held else 'NOT HELD'} in {seconds:.0f}s: {observed}")
    finally:
        ctx.close()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return {"scenarios": results, "held": all(r["held"] for r in results),
            "seconds": round(time.perf_counter() - t_all, 1), "workdir": str(root) if keep else None}


def table(result: dict[str, Any]) -> str:
    """The scenarios as a Markdown table: scenario, expected, observed, steps lost, data lost, held."""
    lines = ["| scenario | expected | observed | steps lost | data lost | held |", "|---|---|---|---:|---|---|"]
    for r in result["scenarios"]:
        cells = [r["name"], r["expected"], r["observed"], str(r["steps_lost"]), "yes" if r["data_lost"] else "no",
                 "yes" if r["held"] else "**NO**"]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    held = sum(r["held"] for r in result["scenarios"])
    lines += ["", f"{held}/{len(result['scenarios'])} scenarios held in {result['seconds']:.0f}s"]
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: Path) -> Path:
    return write_atomic(path, json.dumps(result, indent=2))
