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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from models.files import atomic_path

ROOT = Path(__file__).resolve().parents[1]
SPARK_PORT = 7077


class NotRoot(RuntimeError):
    """Namespaces, links and tc need root."""


SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")   # where iproute2 lives; a root shell's PATH may lack them
TOOLS = ("ip", "tc")


def tool_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default os.environ) with the sbin folders appended to PATH where missing: `ip` and `tc`, and what
    `ip netns exec` starts, are found whatever PATH the caller had."""
    env = dict(os.environ if base is None else base)
    parts = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p]
    env["PATH"] = os.pathsep.join(parts + [d for d in SBIN if d not in parts])
    return env


def missing_tools() -> list[str]:
    """The names of TOOLS found neither on PATH nor in SBIN."""
    path = tool_env()["PATH"]
    return [t for t in TOOLS if shutil.which(t, path=path) is None]


def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, env=tool_env())


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
        env = {**tool_env(), "SPARK_LOCAL_IP": self.address(host), "PYSPARK_PYTHON": sys.executable,
               "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_DAEMON_MEMORY": "256m",
               "SPARK_LOG_DIR": self.tmp, "SPARK_WORKER_DIR": f"{self.tmp}/{host}", "PYTHONPATH": str(ROOT)}
        env.pop("SPARK_HOME", None)
        return env

    def _spawn(self, host: str, *args: str, stdout=subprocess.DEVNULL, log: str = "",
               extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(f"{self.tmp}/{host}{log}.log", "ab") as err:
            p = subprocess.Popen(["ip", "netns", "exec", self.ns(host), *args], env={**self.env(host), **(extra_env or {})},
                                 stdout=stdout, stderr=err, start_new_session=True)
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


# -- the link probe: idle gloo messages among the workers' namespaces -------------------------------------------------------
PROBE_PORT = 29517                # the probe's TCPStore, on the first worker's address inside its namespace
PROBE_TIMEOUT_S = 120             # every probe process stops itself (SIGALRM) after this
PROBE_MIN_BYTES = 1 << 20         # the bandwidth tensor: one reduction, at least this (a transfer, not a latency)


def probe_links(cluster: Cluster, reduction_bytes: float, warmup: int = 3, reps: int = 15) -> dict:
    """Time, with the cluster otherwise idle, a gloo ring all-reduce among one fresh process per worker namespace
    (a 256-byte tensor: per-message latency = time / (2 (N - 1)); a tensor of one reduction's bytes, at least
    PROBE_MIN_BYTES: bandwidth) and
    a point-to-point exchange between the driver's namespace and the first worker's (the star's link)."""
    workers = cluster.hosts()[1:]
    spec = {"workers": len(workers), "store": [cluster.address(workers[0]), PROBE_PORT],
            "addresses": [cluster.address(h) for h in workers] + [cluster.address("d")],
            "reduction_bytes": int(max(reduction_bytes, PROBE_MIN_BYTES)), "warmup": warmup, "reps": reps, "timeout_s": PROBE_TIMEOUT_S}
    env = {"OMP_NUM_THREADS": "1"}
    procs = [cluster._spawn(h, sys.executable, "-m", "benchmarks.cluster", "--probe", json.dumps({**spec, "rank": r}),
                            stdout=subprocess.PIPE if r == 0 else subprocess.DEVNULL, log="-probe", extra_env=env)
             for r, h in enumerate([*workers, "d"])]
    t0 = time.perf_counter()
    try:
        out, _ = procs[0].communicate(timeout=PROBE_TIMEOUT_S + 30)
        codes = [p.wait(timeout=30) for p in procs]
    except subprocess.TimeoutExpired:
        codes = [None]
        out = b""
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            cluster.procs.remove(p)
    if any(codes):
        logs = "".join(Path(f"{cluster.tmp}/{h}-probe.log").read_text()[-800:] for h in [workers[0], "d"])
        raise RuntimeError(f"bench cluster: the link probe with {len(workers)} workers at {cluster.gbit:g} Gbit "
                           f"failed (exit codes {codes}):\n{logs}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    return {"workers": len(workers), "gbit": cluster.gbit, **result, "probe_s": round(time.perf_counter() - t0, 1)}


def probe_process(spec: dict) -> dict | None:
    """One probe process: workers are ranks 0..N-1 of the ring, the driver's process is rank N; the first worker
    also runs the point-to-point exchange with the driver and returns the numbers (the others return None)."""
    import signal as _signal
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    _signal.alarm(spec["timeout_s"])                    # default action: the process ends, whatever it waits on
    n, rank, timeout = spec["workers"], spec["rank"], timedelta(seconds=spec["timeout_s"])
    store = dist.TCPStore(spec["store"][0], spec["store"][1], n + 1, is_master=rank == 0, timeout=timeout)

    def group(name: str, ranks: list[int]):
        opts = dist.ProcessGroupGloo._Options()
        opts._devices = [dist.ProcessGroupGloo.create_device(hostname=spec["addresses"][rank])]
        opts._timeout = timeout
        return dist.ProcessGroupGloo(dist.PrefixStore(name, store), ranks.index(rank), len(ranks), opts)

    tiny = torch.zeros(64)                                                           # 256 bytes
    big = torch.zeros(max(spec["reduction_bytes"] // 4, 1))
    p2p = group("p2p", [0, n]) if rank in (0, n) else None
    ring = group("ring", list(range(n))) if rank < n and n > 1 else None
    out: dict = {"reduction_bytes": big.numel() * 4, "reps": spec["reps"], "ring": None}
    if ring is not None:
        def allreduce_time(t: torch.Tensor) -> float:
            """median over reps of (last rank done - last rank started): all processes share one clock."""
            starts, ends = [], []
            for i in range(spec["warmup"] + spec["reps"]):
                ring.barrier().wait()
                t0 = time.perf_counter()
                ring.allreduce([t]).wait()
                if i >= spec["warmup"]:
                    starts.append(t0)
                    ends.append(time.perf_counter())
            se = torch.tensor([starts, ends], dtype=torch.float64)
            opts = dist.AllreduceOptions()
            opts.reduceOp = dist.ReduceOp.MAX
            ring.allreduce([se], opts).wait()
            return float(torch.median(se[1] - se[0]))

        tiny_s, big_s = allreduce_time(tiny), allreduce_time(big)
        moved = 2.0 * (n - 1) / n * big.numel() * 4                    # per link, per direction
        out["ring"] = {"tiny_s": tiny_s, "big_s": big_s, "message_s": tiny_s / (2 * (n - 1)),
                       "bandwidth_Bps": moved / max(big_s - tiny_s, 1e-9)}
    if p2p is not None:
        me, peer = (0, 1) if rank == 0 else (1, 0)

        def ping(t: torch.Tensor) -> float:
            """first worker: send t, wait for a tiny reply; the driver's process echoes. median seconds."""
            times = []
            for i in range(spec["warmup"] + spec["reps"]):
                t0 = time.perf_counter()
                if me == 0:
                    p2p.send([t], peer, 0).wait()
                    p2p.recv([tiny], peer, 1).wait()
                else:
                    p2p.recv([t], peer, 0).wait()
                    p2p.send([tiny], peer, 1).wait()
                if i >= spec["warmup"]:
                    times.append(time.perf_counter() - t0)
            return float(np.median(times))

        rtt, big_s = ping(tiny), ping(big)
        out["p2p"] = {"rtt_s": rtt, "latency_s": rtt / 2, "big_s": big_s,
                      "bandwidth_Bps": big.numel() * 4 / max(big_s - rtt, 1e-9)}
    return out if rank == 0 else None


# -- one timed run, in the driver's namespace -------------------------------------------------------------------------------
def driver_run(spec: dict) -> dict:
    """Warm-up, then timed iterations of one DFAGD mode on the emulated cluster (spark_training.speedup_probe's
    time_dfagd, the unit of every speed-up ratio); returns the breakdown and the bytes moved per iteration."""
    from models.config import resolve_config
    from models.data import load_dataset
    from spark_training.session import spark_session
    from spark_training.speedup_probe import time_dfagd

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
    counters: dict[str, dict] = {}

    def on_mark(name: str) -> None:
        counters[name] = read_counters(spec["namespaces"])

    with spark_session(cfg.spark, f"bench-cluster-{spec['mode']}") as spark:
        wall, _, window = time_dfagd(spark, cfg, data, warmup, steps, on_mark=on_mark)
    per = window.breakdown(wall)
    moved = {h: {k: (counters["end"][h][k] - counters["start"][h][k]) / steps for k in ("sent", "received")}
             for h in counters["end"]}
    return {"s_per_iter": wall / steps, "compute_s_per_iter": per["compute_s"],
            "exchange_s_per_iter": per["exchange_s"], "scheduling_s_per_iter": per["scheduling_s"],
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
               modes: tuple[str, ...] = ("star", "allreduce"), warmup: int = 2, steps: int = 8,
               print_fn=print) -> tuple[list[dict], list[dict]]:
    """Every (N, rate, mode) once, after a link probe per (N, rate); one cluster per N, re-shaped between rates.
    Returns (runs, link probes)."""
    from benchmarks.cost_model import probed_link

    sizes = net_sizes(preset)
    cores = len(os.sched_getaffinity(0))
    runs, probes = [], []
    for n in workers:
        cluster = Cluster(n, gbits[0])
        with cluster.up():
            for gbit in gbits:
                cluster.set_rate(gbit)
                probe = probe_links(cluster, sizes.reduced_bytes / sizes.reductions)
                probes.append(probe)
                if print_fn:
                    ring = probe["ring"] or {"message_s": float("nan"), "bandwidth_Bps": float("nan")}
                    print_fn(f"bench cluster: link probe N={n} {gbit:g} Gbit: ring {ring['message_s'] * 1e6:.0f} us/msg "
                             f"{ring['bandwidth_Bps'] * 8 / 1e9:.2f} Gbit/s, driver<->worker "
                             f"{probe['p2p']['latency_s'] * 1e6:.0f} us {probe['p2p']['bandwidth_Bps'] * 8 / 1e9:.2f} "
                             f"Gbit/s ({probe['probe_s']:.0f} s)")
                for mode in modes:
                    spec = {"preset": preset, "workers": n, "mode": mode, "warmup": warmup, "steps": steps,
                            "master": cluster.master, "driver_host": cluster.address("d"),
                            "namespaces": {h: cluster.ns(h) for h in cluster.hosts()}}
                    t0 = time.perf_counter()
                    load0 = os.getloadavg()[0]
                    out = _sh("ip", "netns", "exec", cluster.ns("d"), sys.executable, "-m", "benchmarks.cluster",
                              "--driver", json.dumps(spec), check=False)
                    if out.returncode:
                        raise RuntimeError(f"bench cluster: {mode} with {n} workers at {gbit:g} Gbit failed:\n"
                                           f"{out.stderr[-3000:]}")
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    moved = r.pop("bytes_per_iter")
                    workers_moved = [moved[h]["sent"] + moved[h]["received"] for h in moved if h != "d"]
                    processes = n + 2                         # the N workers, the driver and the master
                    link = probed_link(mode, probe, processes, cores)
                    run = {"mode": mode, "workers": n, "gbit": gbit, "preset": preset, **r,
                           "driver_bytes_per_iter": moved["d"]["sent"] + moved["d"]["received"],
                           "worker_bytes_per_iter": max(workers_moved), "bytes_per_iter_by_host": moved,
                           "processes": processes, "cores": cores, "link": asdict(link),
                           "loadavg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
                           "run_s": round(time.perf_counter() - t0, 1)}
                    runs.append(run)
                    if print_fn:
                        print_fn(f"bench cluster: {mode:9} N={n} {gbit:g} Gbit: {r['s_per_iter']:.3f} s/iter, "
                                 f"exchange {r['exchange_s_per_iter']:.3f} s, driver "
                                 f"{run['driver_bytes_per_iter'] / 1e6:.1f} MB/iter ({run['run_s']:.0f} s)")
    return runs, probes


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


WIRE_DELAY_S = 100e-6           # one way, the issue's 0.2 ms round trip: a sensitivity only (the veth has no switch)


def report(runs: list[dict], preset: str, probes: list[dict]) -> dict:
    """runs + the fitted exchange model's prediction for each + the scaling grid for `preset` and full."""
    from dataclasses import replace

    from benchmarks.cost_model import DedicatedHosts, IterationModel, Link, fit_exchange
    from models.config import resolve_config

    sizes = net_sizes(preset)
    fits = {m: fit_exchange(m, [r for r in runs if r["mode"] == m], sizes) for m in sorted({r["mode"] for r in runs})}
    for r in runs:
        r["predicted_exchange_s_per_iter"] = round(fits[r["mode"]].exchange_s(r["workers"], sizes, Link(**r["link"])), 5)
        r["prediction_error"] = round(r["predicted_exchange_s_per_iter"] / r["exchange_s_per_iter"] - 1, 3)
    two = [r for r in runs if r["workers"] == min(x["workers"] for x in runs)]
    # compute per image from the least contended runs (fewest workers on this machine's cores)
    c_img = float(np.median([r["compute_s_per_iter"] * r["workers"] / r["global_batch"] for r in two]))
    overhead = float(np.median([r["scheduling_s_per_iter"] for r in two]))
    batch = resolve_config(preset).train.batch_size
    hosts = DedicatedHosts.from_probes(probes)
    model = IterationModel(sizes, c_img, overhead, fits, hosts)
    full_sizes = net_sizes("full")
    full = IterationModel(full_sizes, FULL_GPU_S_PER_IMAGE, overhead, fits, hosts)
    wired = IterationModel(sizes, c_img, overhead, fits, replace(hosts, wire_delay_s=WIRE_DELAY_S))
    sensitivity = {f"{m} weak {n} x 10 Gbit": wired.scaling(m, "weak", n, 10, batch)["efficiency"]
                   for m in fits for n in (32, 128)}
    cores = runs[0]["cores"] if runs else len(os.sched_getaffinity(0))
    fitted = "; ".join(f"{m}: r0 {f.per_reduction_s * 1e3:.2f} ms/reduction, g {f.contention_s * 1e6:.0f} us/message "
                       f"per unit of contention, k {f.bandwidth_factor:.2f}, c {f.cpu_s_per_byte * 1e9:.2f} ns/byte "
                       f"(residual {f.residual_rel_rms:.0%} RMS, {f.residual_rel_max:.0%} max, {f.fitted_runs} runs)"
                       for m, f in fits.items())
    return {
        "preset": preset, "runs": runs, "link_probe": probe_table(probes),
        "exchange_fit": {m: asdict(f) for m, f in fits.items()},
        "dedicated_hosts": asdict(hosts),
        "cost_model": model.grid(batch),
        "cost_model_full": full.grid(resolve_config("full").train.batch_size),
        "cost_model_wire_delay_sensitivity": {"wire_delay_s": WIRE_DELAY_S, "efficiency": sensitivity},
        "cost_model_assumptions": [
            f"{preset}: compute {c_img * 1e3:.2f} ms per image per iteration and {overhead * 1e3:.1f} ms other "
            f"per-iteration time, measured in the runs with the fewest workers here ({cores} CPU cores shared by all)",
            f"full: compute {FULL_GPU_S_PER_IMAGE * 1e3:.1f} ms per image per iteration on one GPU executor: an "
            "ASSUMPTION (no GPU was measured); exchange as fitted on the emulated network",
            "exchange = R x (r0 + op + steps x (hop + g x contention)) + (k / bw + c) x bytes on the busiest link; "
            "hop (half a gloo point-to-point round trip, driver <-> first worker), op (an idle tiny all-reduce among "
            "the workers' namespaces minus its 2 (N - 1) hops; 0 for star) and bw (a reduction-sized transfer: ring "
            "all-reduce for allreduce, point to point for star) measured by the idle link probe at each run's N and "
            "rate; contention = max(0, N + 2 - cores) / cores "
            f"(N workers, the driver and the master on this machine's {cores} cores); r0, g, k, c fitted per mode "
            "(NNLS, relative errors, all >= 0): " + fitted,
            f"real clusters: one host per executor with its own cores (contention 0, so g drops out); hop = the "
            f"smallest idle point-to-point one-way time probed ({hosts.message_s * 1e6:.0f} us per message); the "
            f"fixed part of an all-reduce from the probe with the fewest workers "
            f"({hosts.reduction_s['allreduce'] * 1e6:.0f} us per reduction); bandwidth = "
            f"nominal rate x "
            f"{hosts.link_efficiency:.2f} (the point-to-point probe's share of the lowest probed rate); r0 and c as "
            "fitted here, under contention (conservative); flat ring all-reduce; the driver's link carries star's "
            "traffic",
            "the veth links have no switch or cable: a real LAN adds about 0.1 ms per message one way; with "
            f"{WIRE_DELAY_S * 1e3:.1f} ms added per message the weak-scaling efficiencies at 10 Gbit are "
            + ", ".join(f"{k} {v:.2f}" for k, v in sensitivity.items()),
            "strong: the global batch split over N (>= 1 image each); weak: each worker keeps the N = 2 slice; "
            "efficiency against one worker without any exchange",
        ],
        "sizes": asdict(sizes), "full_sizes": asdict(full_sizes),
    }


def probe_table(probes: list[dict]) -> dict:
    """`link_probe` -> N -> gbit -> the probe's numbers, as the JSON keeps them."""
    out: dict = {}
    for p in probes:
        out.setdefault(str(p["workers"]), {})[f"{p['gbit']:g}"] = p
    return out


def markdown(result: dict) -> str:
    lines = ["| mode | N | Gbit | s/iter | compute s | exchange s | predicted exchange s | error | driver MB/iter | "
             "busiest worker MB/iter |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["runs"]:
        lines.append(f"| {r['mode']} | {r['workers']} | {r['gbit']:g} | {r['s_per_iter']:.3f} | "
                     f"{r['compute_s_per_iter']:.3f} | {r['exchange_s_per_iter']:.4f} | "
                     f"{r['predicted_exchange_s_per_iter']:.4f} | {r['prediction_error']:+.0%} | "
                     f"{r['driver_bytes_per_iter'] / 1e6:.2f} | {r['worker_bytes_per_iter'] / 1e6:.2f} |")
    lines += ["", "Link probe (idle, gloo; median of the repetitions):", "",
              "| N | Gbit | ring tiny all-reduce us | us/message (/ 2(N-1)) | ring Gbit/s | driver<->worker one-way us | "
              "driver<->worker Gbit/s |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for n, by_g in result["link_probe"].items():
        for g, p in by_g.items():
            ring = (f"{p['ring']['tiny_s'] * 1e6:.0f} | {p['ring']['message_s'] * 1e6:.0f} | "
                    f"{p['ring']['bandwidth_Bps'] * 8e-9:.2f}" if p["ring"] else "- | - | -")
            lines.append(f"| {n} | {g} | {ring} | {p['p2p']['latency_s'] * 1e6:.0f} | "
                         f"{p['p2p']['bandwidth_Bps'] * 8e-9:.2f} |")
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
                  modes: tuple[str, ...] = ("star", "allreduce"), warmup: int = 2, steps: int = 8) -> dict:
    runs, probes = run_matrix(preset, workers, gbits, modes, warmup, steps)
    return report(runs, preset, probes)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmarks.cluster")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--driver", metavar="SPEC", help="one run's JSON spec (used by run_matrix)")
    which.add_argument("--probe", metavar="SPEC", help="one link-probe process's JSON spec (used by probe_links)")
    args = p.parse_args(argv)
    if args.probe:
        out = probe_process(json.loads(args.probe))
        if out is not None:
            print(json.dumps(out), flush=True)
        return 0
    print(json.dumps(driver_run(json.loads(args.driver))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
