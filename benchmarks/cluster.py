"""`bench cluster`: star vs all-reduce DFAGD on a real Spark standalone cluster emulated in Linux network namespaces.

Each host (the driver, which also runs the master, and every worker) lives in its own network namespace with one
veth link to a bridge; `tc tbf` shapes both directions of every link to the stated rate (a one-way delay needs
sch_netem, which the kernel here lacks: the links keep the veth's own latency, measured by ping).
Addresses come from 10.213.<id>.0/24, used only inside the namespaces made here (the bridge has no address, so
nothing reaches the host's own network). Every namespace, link and process is removed on success, failure and
Ctrl-C. Bytes are read from each host's link counters (netlink, the numbers behind /sys/class/net/<if>/statistics)
around the timed iterations.

    python -m benchmarks.cluster --driver RUN.json      (inside the driver's namespace: one timed training run)
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.files import atomic_path

ROOT = Path(__file__).resolve().parents[1]
SPARK_PORT = 7077


class NotRoot(RuntimeError):
    """Namespaces, links and tc need root."""


def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


@dataclass
class Cluster:
    """`with Cluster(workers=4, gbit=1).up() as c:` a master + N workers, each in its own namespace."""

    workers: int
    gbit: float = 1.0
    tag: str = field(default_factory=lambda: f"{os.getpid() % 1000:03d}")
    procs: list[subprocess.Popen] = field(default_factory=list)
    made_ns: list[str] = field(default_factory=list)
    made_links: list[str] = field(default_factory=list)

    @property
    def subnet(self) -> str:
        return f"10.213.{int(self.tag) % 250}"

    def hosts(self) -> list[str]:
        return ["d"] + [f"w{k}" for k in range(self.workers)]

    def ns(self, host: str) -> str:
        return f"tsg{self.tag}-{host}"

    def veth(self, host: str) -> str:            # the bridge-side end; <= 15 characters
        return f"tsg{self.tag}{host}"

    def address(self, host: str) -> str:
        return f"{self.subnet}.{1 if host == 'd' else 10 + int(host[1:])}"

    def _shape(self, verb: str) -> None:
        """tbf rate limit on both ends of every link (each direction shaped once), a 1 ms burst. This kernel has no
        sch_netem, so no delay is added: the one-way latency is the veth's own (the cost model fits it)."""
        burst = max(int(self.gbit * 1e9 / 8 / 1000), 64 * 1024)
        for h in self.hosts():
            for prefix, dev in ((["ip", "netns", "exec", self.ns(h)], "eth0"), ([], self.veth(h))):
                _sh(*prefix, "tc", "qdisc", verb, "dev", dev, "root", "tbf", "rate", f"{self.gbit:g}gbit",
                    "burst", str(burst), "latency", "20ms")

    def set_rate(self, gbit: float) -> None:
        self.gbit = gbit
        self._shape("change")

    @contextlib.contextmanager
    def up(self) -> Iterator["Cluster"]:
        if os.geteuid() != 0:
            raise NotRoot("bench cluster: needs root (network namespaces, veth links and tc); run it as root")
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
        for s in previous:
            signal.signal(s, _interrupt)                         # cleanup below runs on kill -TERM too
        try:
            self._make_network()
            self._start_spark()
            yield self
        finally:
            self.down()
            for s, h in previous.items():
                signal.signal(s, h)

    def _make_network(self) -> None:
        bridge = f"tsg{self.tag}br"
        _sh("ip", "link", "add", bridge, "type", "bridge")
        self.made_links.append(bridge)
        _sh("ip", "link", "set", bridge, "up")
        for h in self.hosts():
            ns, veth = self.ns(h), self.veth(h)
            _sh("ip", "netns", "add", ns)
            self.made_ns.append(ns)
            _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self.made_links.append(veth)
            _sh("ip", "link", "set", veth, "master", bridge, "up")
            _sh("ip", "-n", ns, "addr", "add", f"{self.address(h)}/24", "dev", "eth0")
            _sh("ip", "-n", ns, "link", "set", "eth0", "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        self._shape("add")

    def env(self, host: str) -> dict[str, str]:
        env = {**os.environ, "SPARK_LOCAL_IP": self.address(host), "PYSPARK_PYTHON": sys.executable,
               "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_DAEMON_MEMORY": "256m",
               "SPARK_LOG_DIR": self.tmp, "SPARK_WORKER_DIR": f"{self.tmp}/{host}", "PYTHONPATH": str(ROOT)}
        env.pop("SPARK_HOME", None)
        return env

    def _spawn(self, host: str, *args: str) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(host), *args], env=self.env(host),
                             stdout=subprocess.DEVNULL, stderr=open(f"{self.tmp}/{host}.log", "ab"),
                             start_new_session=True)
        self.procs.append(p)
        return p

    def _start_spark(self) -> None:
        import pyspark

        self.tmp = tempfile.mkdtemp(prefix="tsg-cluster-")
        spark_class = str(Path(pyspark.__file__).parent / "bin" / "spark-class")
        d = self.address("d")
        self._spawn("d", spark_class, "org.apache.spark.deploy.master.Master", "--host", d, "--port",
                    str(SPARK_PORT), "--webui-port", "0")
        _wait_port(self, "d", d, SPARK_PORT, 120)
        for h in self.hosts()[1:]:
            self._spawn(h, spark_class, "org.apache.spark.deploy.worker.Worker", "--host", self.address(h),
                        "--cores", "1", "--memory", "3g", "--webui-port", "0", f"spark://{d}:{SPARK_PORT}")

    @property
    def master(self) -> str:
        return f"spark://{self.address('d')}:{SPARK_PORT}"

    def counters(self) -> dict[str, dict[str, int]]:
        """Bytes each host has sent and received on its link so far."""
        return read_counters({h: self.ns(h) for h in self.hosts()})

    def down(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=30)
        for ns in reversed(self.made_ns):
            _sh("ip", "netns", "pids", ns, check=False)
            for pid in _sh("ip", "netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            _sh("ip", "netns", "del", ns, check=False)
        for link in reversed(self.made_links):
            _sh("ip", "link", "del", link, check=False)       # veth ends vanish with their namespace already
        self.procs, self.made_ns, self.made_links = [], [], []
        if getattr(self, "tmp", None):
            shutil.rmtree(self.tmp, ignore_errors=True)


def _interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _wait_port(cluster: Cluster, host: str, address: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    probe = f"import socket; socket.create_connection(('{address}', {port}), timeout=1).close()"
    while _sh("ip", "netns", "exec", cluster.ns(host), sys.executable, "-c", probe, check=False).returncode:
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench cluster: the Spark master did not listen on {address}:{port} in {timeout_s}s")
        time.sleep(1)


# -- one timed run, in the driver's namespace -------------------------------------------------------------------------------
def driver_run(spec: dict) -> dict:
    """Warm-up, then timed iterations of one DFAGD mode on the emulated cluster; returns the breakdown per iteration."""
    from models.config import resolve_config
    from models.data import load_dataset
    from models.step import build_state
    from models.trainer import train
    from spark_training.dfagd import DFAGDJob, DFAGDStats, train_dfagd
    from spark_training.session import spark_session

    warmup, steps = spec["warmup"], spec["steps"]
    cfg = resolve_config(spec["preset"], {
        "train.steps": warmup + steps, "train.log_every": 1, "train.sample_every": 0, "train.checkpoint_every": 0,
        "spark.workers": spec["workers"], "spark.master": spec["master"], "spark.driver_host": spec["driver_host"],
        "spark.reduction": spec["mode"], "spark.executor_memory": "768m", "spark.connect_timeout_s": 60.0,
        "spark.extra_conf": {"spark.executor.cores": 1, "spark.scheduler.minRegisteredResourcesRatio": 1.0,
                             "spark.scheduler.maxRegisteredResourcesWaitingTime": "180s"},
        **spec.get("overrides", {})})
    data = load_dataset(cfg.data.source, cfg.model.resolution, cfg.model.channels,
                        max(cfg.train.batch_size * cfg.train.n_critic * (warmup + steps + 1), 256))
    marks: dict[str, dict] = {}

    def mark(name: str, stats: DFAGDStats) -> None:
        marks[name] = {"t": time.perf_counter(), "stats": dict(stats.__dict__),
                       "counters": read_counters(spec["namespaces"])}

    with spark_session(cfg.spark, f"bench-cluster-{spec['mode']}") as spark:
        state = build_state(cfg)
        if spec["mode"] == "star":
            with DFAGDJob(spark, cfg, data) as source:
                train(state, source, steps=warmup, print_fn=None)
                mark("start", source.stats)
                train(state, source, print_fn=None)
                mark("end", source.stats)
        else:
            stats = DFAGDStats()      # rank 0's cumulative timing, updated with every relayed log
            train_dfagd(cfg, state=state, spark=spark, data=data, print_fn=None, stats_out=stats,
                        on_log=lambda s, _m: mark({warmup: "start", warmup + steps: "end"}.get(s.step, "other"), stats))
    first, last = marks["start"], marks["end"]
    wall = last["t"] - first["t"]
    per = {k: (last["stats"][k] - first["stats"][k]) / steps for k in ("compute_s", "compute_cpu_s", "exchange_s")}
    moved = {h: {k: (last["counters"][h][k] - first["counters"][h][k]) / steps for k in ("sent", "received")}
             for h in last["counters"]}
    return {"s_per_iter": wall / steps, "compute_s_per_iter": per["compute_s"], "exchange_s_per_iter": per["exchange_s"],
            "scheduling_s_per_iter": max(wall / steps - per["compute_s"] - per["exchange_s"], 0.0),
            "bytes_per_iter": moved, "reductions_per_iter": cfg.train.n_critic + 1,
            "global_batch": cfg.train.batch_size}


def read_counters(namespaces: dict[str, str]) -> dict[str, dict[str, int]]:
    """{host: {sent, received}} bytes of each namespace's eth0, over netlink (works from inside another namespace)."""
    out = {}
    for h, ns in namespaces.items():
        link = json.loads(_sh("ip", "-n", ns, "-s", "-j", "link", "show", "eth0").stdout)[0]
        stats = link.get("stats64", link.get("stats"))
        out[h] = {"sent": int(stats["tx"]["bytes"]), "received": int(stats["rx"]["bytes"])}
    return out


# -- the matrix, from the root namespace ----------------------------------------------------------------------------------
def run_matrix(preset: str = "demo", workers: tuple[int, ...] = (2, 4, 8), gbits: tuple[float, ...] = (1, 10),
               modes: tuple[str, ...] = ("star", "allreduce"), warmup: int = 2, steps: int = 5,
               print_fn=print) -> list[dict]:
    """Every (N, rate, mode) once; one cluster per N, re-shaped between rates."""
    runs = []
    for n in workers:
        cluster = Cluster(n, gbits[0])
        with cluster.up():
            for gbit in gbits:
                cluster.set_rate(gbit)
                for mode in modes:
                    spec = {"preset": preset, "workers": n, "mode": mode, "warmup": warmup, "steps": steps,
                            "master": cluster.master, "driver_host": cluster.address("d"),
                            "namespaces": {h: cluster.ns(h) for h in cluster.hosts()}}
                    t0 = time.perf_counter()
                    out = _sh("ip", "netns", "exec", cluster.ns("d"), sys.executable, "-m", "benchmarks.cluster",
                              "--driver", json.dumps(spec), check=False)
                    if out.returncode:
                        raise RuntimeError(f"bench cluster: {mode} with {n} workers at {gbit:g} Gbit failed:\n"
                                           f"{out.stderr[-3000:]}")
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    moved = r.pop("bytes_per_iter")
                    workers_moved = [moved[h]["sent"] + moved[h]["received"] for h in moved if h != "d"]
                    run = {"mode": mode, "workers": n, "gbit": gbit, "preset": preset, **r,
                           "driver_bytes_per_iter": moved["d"]["sent"] + moved["d"]["received"],
                           "worker_bytes_per_iter": max(workers_moved), "bytes_per_iter_by_host": moved,
                           "run_s": round(time.perf_counter() - t0, 1)}
                    runs.append(run)
                    if print_fn:
                        print_fn(f"bench cluster: {mode:9} N={n} {gbit:g} Gbit: {r['s_per_iter']:.3f} s/iter, "
                                 f"exchange {r['exchange_s_per_iter']:.3f} s, driver "
                                 f"{run['driver_bytes_per_iter'] / 1e6:.1f} MB/iter ({run['run_s']:.0f} s)")
    return runs


# -- the report -------------------------------------------------------------------------------------------------------------
# The full preset's compute per iteration on one GPU executor is NOT measured here (no GPU): an assumption.
FULL_GPU_S_PER_IMAGE = 0.40 / 32       # 0.40 s per iteration for a 32-image slice (64 px RGB, n_critic 5, GP)


def net_sizes(preset: str):
    from benchmarks.cost_model import NetSizes
    from models import build_discriminator, build_generator
    from models.config import resolve_config

    cfg = resolve_config(preset)
    count = lambda m: sum(p.numel() for p in m.parameters())          # noqa: E731
    return NetSizes(count(build_generator(cfg.model)), count(build_discriminator(cfg.model)), cfg.train.n_critic)


def report(runs: list[dict], preset: str) -> dict:
    """runs + the fitted exchange model's prediction for each + the scaling grid for `preset` and full."""
    from benchmarks.cost_model import IterationModel, fit_exchange
    from models.config import resolve_config

    sizes = net_sizes(preset)
    fits = {m: fit_exchange(m, [r for r in runs if r["mode"] == m], sizes) for m in sorted({r["mode"] for r in runs})}
    for r in runs:
        r["predicted_exchange_s_per_iter"] = round(fits[r["mode"]].exchange_s(r["workers"], r["gbit"], sizes), 5)
        r["prediction_error"] = round(r["predicted_exchange_s_per_iter"] / r["exchange_s_per_iter"] - 1, 3)
    two = [r for r in runs if r["workers"] == min(x["workers"] for x in runs)]
    # compute per image from the least contended runs (fewest workers on this machine's cores)
    c_img = float(np.median([r["compute_s_per_iter"] * r["workers"] / r["global_batch"] for r in two]))
    overhead = float(np.median([r["scheduling_s_per_iter"] for r in two]))
    batch = resolve_config(preset).train.batch_size
    model = IterationModel(sizes, c_img, overhead, fits)
    full_sizes = net_sizes("full")
    full = IterationModel(full_sizes, FULL_GPU_S_PER_IMAGE, overhead, fits)
    return {
        "preset": preset, "runs": runs,
        "exchange_fit": {m: f.__dict__ for m, f in fits.items()},
        "cost_model": model.grid(batch),
        "cost_model_full": full.grid(resolve_config("full").train.batch_size),
        "cost_model_assumptions": [
            f"{preset}: compute {c_img * 1e3:.2f} ms per image per iteration and {overhead * 1e3:.1f} ms other "
            f"per-iteration time, measured in the runs with the fewest workers here (2 CPU cores shared by all)",
            f"full: compute {FULL_GPU_S_PER_IMAGE * 1e3:.1f} ms per image per iteration on one GPU executor: an "
            "ASSUMPTION (no GPU was measured); exchange as fitted on the emulated network",
            "exchange as fitted per mode on the emulated links (tbf-shaped veth, no added delay); flat ring all-reduce "
            "(one worker per host); the driver's link carries star's traffic",
            "strong: the global batch split over N (>= 1 image each); weak: each worker keeps the N = 2 slice; "
            "efficiency against one worker without any exchange",
        ],
        "sizes": sizes.__dict__, "full_sizes": full_sizes.__dict__,
    }


def markdown(result: dict) -> str:
    lines = ["| mode | N | Gbit | s/iter | compute s | exchange s | predicted exchange s | error | driver MB/iter | "
             "busiest worker MB/iter |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["runs"]:
        lines.append(f"| {r['mode']} | {r['workers']} | {r['gbit']:g} | {r['s_per_iter']:.3f} | "
                     f"{r['compute_s_per_iter']:.3f} | {r['exchange_s_per_iter']:.4f} | "
                     f"{r['predicted_exchange_s_per_iter']:.4f} | {r['prediction_error']:+.0%} | "
                     f"{r['driver_bytes_per_iter'] / 1e6:.2f} | {r['worker_bytes_per_iter'] / 1e6:.2f} |")
    for name, grid in (("preset " + result["preset"], result["cost_model"]), ("full (assumed GPU compute)",
                                                                              result["cost_model_full"])):
        lines += ["", f"Predicted efficiency, {name} (speed-up in brackets):", "",
                  "| mode | scaling | executors | 1 Gbit | 10 Gbit | 25 Gbit |", "|---|---|---:|---:|---:|---:|"]
        for mode, kinds in grid.items():
            for kind, by_n in kinds.items():
                for n, by_g in by_n.items():
                    cells = " | ".join(f"{v['efficiency']:.2f} ({v['speedup']:.1f}x)" for v in by_g.values())
                    lines.append(f"| {mode} | {kind} | {n} | {cells} |")
    return "\n".join(lines) + "\n"


def figure(result: dict, path: str | Path) -> None:
    """Measured vs predicted exchange per iteration, by N, per mode and rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for (mode, gbit) in sorted({(r["mode"], r["gbit"]) for r in result["runs"]}):
        rs = sorted((r for r in result["runs"] if r["mode"] == mode and r["gbit"] == gbit), key=lambda r: r["workers"])
        ns = [r["workers"] for r in rs]
        line, = ax.plot(ns, [r["exchange_s_per_iter"] for r in rs], "o-", label=f"{mode}, {gbit:g} Gbit")
        ax.plot(ns, [r["predicted_exchange_s_per_iter"] for r in rs], "x--", color=line.get_color())
    ax.set_xlabel("workers (one per emulated host)")
    ax.set_ylabel("exchange s / iteration")
    ax.set_title(f"bench cluster, {result['preset']}: measured (o) vs cost model (x)")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def bench_cluster(preset: str = "demo", workers: tuple[int, ...] = (2, 4, 8), gbits: tuple[float, ...] = (1, 10),
                  modes: tuple[str, ...] = ("star", "allreduce"), warmup: int = 1, steps: int = 4) -> dict:
    return report(run_matrix(preset, workers, gbits, modes, warmup, steps), preset)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmarks.cluster")
    p.add_argument("--driver", metavar="SPEC", required=True, help="one run's JSON spec (used by run_matrix)")
    args = p.parse_args(argv)
    print(json.dumps(driver_run(json.loads(args.driver))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
