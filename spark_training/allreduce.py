"""DFAGD by all-reduce: every barrier task keeps a full replica and runs the one loop; gradients meet in torch.distributed.

spark.reduction = "allreduce". The tasks find each other with BarrierTaskContext.allGather (address, store port,
CUDA), form a process group (gloo on CPU, NCCL when train.device resolves to cuda) and each runs
models.trainer.train() with an AllReduceGradSource: its partitions' mean gradient, summed over the workers in
buckets of at most spark.bucket_mb (slices of one flat buffer per network, reused every update; in
spark.exchange_dtype on the wire; with spark.overlap started from inside the backward pass) and divided by N.
Every replica then takes the same clip, Adam and EMA step (models.step.apply_update): identical inputs and
deterministic arithmetic keep the replicas bitwise equal, which a fingerprint all-gather checks every
train.log_every steps. Per host, gradients are summed at the host's first rank, all-reduced among those leaders
and broadcast back (only when some host runs several workers and there are several hosts; otherwise the flat
all-reduce is already the cheapest).

The driver only talks to rank 0, off the critical path (a sender thread there): it sends the starting state once
per stage attempt and gets progress lines, metrics, and the full state at sample and checkpoint steps. A failed
task makes Spark re-run the barrier stage, which restarts from the driver's last state: data order and noise are
functions of the step, so the weights end equal to an uninterrupted run's.
"""

import datetime
import itertools
import json
import os
import queue
import selectors
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from models.config import Config, ConfigError, config_from_dict
from models.data import ImageSet
from models.step import GANState, build_state, params_of
from models.trainer import Callback, GradSource, train
from spark_training.exchange import Message, ProtocolError, connect, recv_message, send_message
from spark_training.reduction import DFAGDError
from spark_training.worker import PartitionWorker

__all__ = ["AllReduceSpec", "AllReduceGradSource", "BucketedSum", "Collective", "ReplicaMismatchError", "AllReduceDriver",
           "AllReduceJob", "host_groups", "pack_state", "unpack_state", "fingerprint", "make_allreduce_task"]

GROUP_TIMEOUT = datetime.timedelta(seconds=600)


class ReplicaMismatchError(RuntimeError):
    """Two workers' replicas differ: a bug or corrupted memory; retrying cannot fix it, so the run stops."""


@dataclass
class AllReduceSpec:
    """Everything a task needs, shipped in the closure (small: no weights, no data)."""

    config: dict[str, Any]                    # Config.to_dict()
    host: str                                 # the driver's address (spark.driver_host) and port
    port: int
    n_items: int
    workers: int
    want_sample: bool = False                 # the driver has on_sample / on_checkpoint callbacks
    want_checkpoint: bool = False
    wrap_source: Callable[[GradSource], GradSource] | None = None   # DFAGDHooks.wrap_source, run on every worker


# -- the process group -----------------------------------------------------------------------------------------------
def host_groups(hosts: list[str]) -> list[list[int]]:
    """Ranks grouped by host, hosts in order of their first rank: ['a','b','a'] -> [[0, 2], [1]]."""
    groups: dict[str, list[int]] = {}
    for rank, h in enumerate(hosts):
        groups.setdefault(h, []).append(rank)
    return list(groups.values())


def local_address(peer: str) -> str:
    """This machine's address on the route to `peer` (no packet is sent): what the other workers can reach."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((peer, 9))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


class Collective:
    """Sum all-reduce over the workers, flat or per host first; plus the all-gather and broadcast the loop needs."""

    def __init__(self, store: dist.Store, rank: int, hosts: list[str], backend: str, address: str):
        self.rank, self.size, self.backend = rank, len(hosts), backend
        self.groups = host_groups(hosts)
        self.hierarchical = len(self.groups) > 1 and any(len(g) > 1 for g in self.groups)
        self.world = self._group(store, "world", list(range(self.size)), address)
        self.local = self.leaders = None
        if self.hierarchical:
            mine = next(g for g in self.groups if rank in g)
            self.local = self._group(store, f"host{self.groups.index(mine)}", mine, address)
            heads = [g[0] for g in self.groups]
            if rank in heads:
                self.leaders = self._group(store, "leaders", heads, address)

    def _group(self, store: dist.Store, name: str, ranks: list[int], address: str):
        prefixed, rank, size = dist.PrefixStore(name, store), ranks.index(self.rank), len(ranks)
        if self.backend == "nccl":
            return dist.ProcessGroupNCCL(prefixed, rank, size)
        opts = dist.ProcessGroupGloo._Options()
        opts._devices = [dist.ProcessGroupGloo.create_device(hostname=address)]   # bind where peers reach us
        opts._timeout = GROUP_TIMEOUT
        return dist.ProcessGroupGloo(prefixed, rank, size, opts)

    def allreduce_sum(self, t: torch.Tensor) -> None:
        """In place: every rank ends with the same sum (the leaders' result is broadcast, so bytes agree)."""
        self.finish_sums([(t, self.start_sum(t))])

    def start_sum(self, t: torch.Tensor) -> dist.Work:
        """Start summing `t` in place, asynchronously; finish_sums completes it. Every rank must start the same
        tensors in the same order (gloo and NCCL match collectives by the order they were issued)."""
        if not self.hierarchical:
            return self.world.allreduce([t])
        opts = dist.ReduceOptions()
        opts.rootRank, opts.reduceOp = 0, dist.ReduceOp.SUM
        return self.local.reduce([t], opts)                  # host sum at the host's first rank

    def finish_sums(self, started: list[tuple[torch.Tensor, dist.Work]]) -> None:
        """Wait for started sums, in order; per host, then the leaders' all-reduces and the broadcasts back, each
        stage issued for every tensor at once and waited together."""
        for _, work in started:
            work.wait()
        if not self.hierarchical:
            return
        if self.leaders is not None:                          # one rank per host crosses the network
            for work in [self.leaders.allreduce([t]) for t, _ in started]:
                work.wait()
        for work in [self._broadcast(t, self.local) for t, _ in started]:
            work.wait()

    def broadcast(self, t: torch.Tensor, group=None) -> None:
        self._broadcast(t, group or self.world).wait()

    @staticmethod
    def _broadcast(t: torch.Tensor, group) -> dist.Work:
        opts = dist.BroadcastOptions()
        opts.rootRank, opts.rootTensor = 0, 0
        return group.broadcast([t], opts)

    def allgather(self, t: torch.Tensor) -> list[torch.Tensor]:
        out = [torch.empty_like(t) for _ in range(self.size)]
        self.world.allgather([out], [t]).wait()
        return out


# -- the replica's gradient source ------------------------------------------------------------------------------------
def fingerprint(modules: list[nn.Module]) -> torch.Tensor:
    """(2,) int64 checksum of the parameters' bits; equal replicas give equal fingerprints (a wrap-around sum)."""
    flat = torch.cat([p.detach().reshape(-1).float().cpu() for m in modules for p in params_of(m)])
    bits = flat.view(torch.int32).to(torch.int64)                      # (n,)
    weights = torch.arange(bits.numel(), dtype=torch.int64) % 1021 + 1   # position-sensitive second sum
    return torch.stack([bits.sum(), (bits * weights).sum()])


@dataclass
class ReplicaTiming:
    """Seconds summed since the start: compute = the slowest worker's gradients, exchange = the all-reduces less
    the wait for that worker, compute_cpu = this replica's CPU time."""

    iterations: int = 0
    reductions: int = 0
    compute_s: float = 0.0
    compute_cpu_s: float = 0.0
    exchange_s: float = 0.0


class BucketedSum:
    """One network's gradient summed over the workers in slices ("buckets") of at most `bucket_bytes` on the wire.

    `grad` (n,) float32 receives this worker's mean gradient and ends as the workers' mean. The wire is `grad`
    itself (float32) or a 16-bit copy (spark.exchange_dtype), summed in that type by the collective and widened
    after. Buckets start in one fixed order, the end of the vector first (a backward pass makes the last layers'
    gradients first), each only after every earlier one: every rank issues the same sequence of collectives,
    whatever order its hooks fire in.
    """

    def __init__(self, sizes: list[int], collective: Collective, wire: torch.dtype, bucket_bytes: float,
                 device: torch.device):
        n = sum(sizes)
        self.collective, self.sizes = collective, sizes
        self.offsets = [0, *itertools.accumulate(sizes)][:-1]
        self.grad = torch.zeros(n, device=device)
        self.wire = self.grad if wire == torch.float32 else torch.zeros(n, dtype=wire, device=device)
        per = max(1, int(bucket_bytes) // self.wire.element_size())          # elements per bucket
        count = -(-n // per)
        self.buckets = [(k * per, min((k + 1) * per, n)) for k in reversed(range(count))]   # [a, b) in start order
        # the buckets each parameter's slice falls in, and how many parameters each bucket waits for
        self.buckets_of = [[count - 1 - k for k in range(o // per, (o + m - 1) // per + 1)] if m else []
                           for o, m in zip(self.offsets, sizes)]
        self.needs = [0] * count
        for bs in self.buckets_of:
            for b in bs:
                self.needs[b] += 1
        self.begin()

    def begin(self) -> None:
        """Before each update's gradient."""
        self.waiting, self.next = list(self.needs), 0
        self.started: list[tuple[torch.Tensor, dist.Work]] = []

    def final(self, j: int, value: torch.Tensor) -> None:
        """Parameter j's slice is final (worker.OnFinal): copy it in, start every bucket that is now complete."""
        o = self.offsets[j]
        self.grad[o:o + self.sizes[j]].copy_(value)
        for b in self.buckets_of[j]:
            self.waiting[b] -= 1
        self._start_ready()

    def all_final(self, grad: torch.Tensor) -> None:
        """The whole gradient at once (no overlap): start every bucket."""
        self.grad.copy_(grad)
        self.waiting = [0] * len(self.buckets)
        self._start_ready()

    def _start_ready(self) -> None:
        while self.next < len(self.buckets) and self.waiting[self.next] == 0:
            a, b = self.buckets[self.next]
            w = self.wire[a:b]
            if self.wire is not self.grad:
                w.copy_(self.grad[a:b])                       # rounded to the wire's 16 bits
            self.started.append((w, self.collective.start_sum(w)))
            self.next += 1

    def finish(self, tail: torch.Tensor) -> torch.Tensor:
        """Sum `tail` (float32, after the buckets), wait for everything; returns `grad`, now the workers' mean."""
        assert self.next == len(self.buckets), "a slice of the gradient was never final"
        self.collective.finish_sums([*self.started, (tail, self.collective.start_sum(tail))])
        self.started = []
        if self.wire is not self.grad:
            self.grad.copy_(self.wire)
        return self.grad.div_(self.collective.size)


class AllReduceGradSource:
    """GradSource of one replica: its partitions' mean gradient, averaged over all workers by all-reduce.

    Per update and network: the gradient in buckets (BucketedSum; with `overlap`, started from inside the backward
    pass), then a float32 tail [loss statistics | compute seconds per rank | stop flag]. The statistics travel
    with the gradient, so every replica sees the same losses and skips the same non-finite updates; rank 0
    raises the stop flag when the driver asks to stop, and every replica stops after the same step.
    """

    def __init__(self, pw: PartitionWorker, collective: Collective, check_every: int, attempt: int = 0, *,
                 bucket_mb: float = 25.0, overlap: bool = False, exchange_dtype: str = "float32"):
        self.pw, self.collective = pw, collective
        self.rank, self.attempt, self.check_every = collective.rank, attempt, check_every
        self.bucket_bytes, self.overlap, self.wire = bucket_mb * 2**20, overlap, getattr(torch, exchange_dtype)
        self.sums: dict[str, BucketedSum] = {}
        self.stop_wanted = False        # set on rank 0 by the driver's "stop"
        self.stop_requested = False     # the all-reduced flag: the same on every rank
        self.timing = ReplicaTiming()

    def _sum(self, key: str) -> BucketedSum:
        if key not in self.sums:
            net = self.pw.G if key == "g" else self.pw.D
            self.sums[key] = BucketedSum([p.numel() for p in params_of(net)], self.collective, self.wire,
                                         self.bucket_bytes, self.pw.device)
        return self.sums[key]

    def _mean(self, key: str, step: int, phase: int) -> tuple[torch.Tensor, dict[str, float]]:
        buckets, size = self._sum(key), self.collective.size
        buckets.begin()
        t0, c0 = time.perf_counter(), time.process_time()
        grad, stats = self.pw.gradient(step, phase, buckets.final if self.overlap else None)
        t1 = time.perf_counter()
        compute_s, cpu_s = t1 - t0, time.process_time() - c0
        if not self.overlap:
            buckets.all_final(grad)
        names = sorted(stats)
        k = len(names)
        tail = torch.zeros(k + size + 1)
        tail[:k] = torch.tensor([stats[name] for name in names])
        tail[k + self.rank] = compute_s
        tail[-1] = 1.0 if self.stop_wanted else 0.0
        tail = tail.to(self.pw.device)
        mean = buckets.finish(tail)
        values = tail.tolist()
        self.stop_requested = values[-1] > 0
        # Like star's breakdown: compute = the slowest worker's; exchange = what is left after the backward pass,
        # less the wait for that worker (with overlap, the part hidden behind the backward pass is not counted)
        slowest = max(values[k:k + size])
        self.timing.compute_s += slowest
        self.timing.compute_cpu_s += cpu_s
        self.timing.exchange_s += max(time.perf_counter() - t1 - (slowest - compute_s), 0.0)
        self.timing.reductions += 1
        return mean, {name: v / size for name, v in zip(names, values[:k])}

    def d_grad(self, state: GANState, step: int, k: int) -> tuple[torch.Tensor, dict[str, float]]:
        return self._mean("d", step, k)

    def g_grad(self, state: GANState, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        from models.step import G_PHASE

        if self.check_every and step % self.check_every == 0:
            self.check_replicas(state, step)
        out = self._mean("g", step, G_PHASE)
        self.timing.iterations += 1
        return out

    def check_replicas(self, state: GANState, step: int) -> None:
        """All-gather every replica's fingerprint; ReplicaMismatchError on every rank when one differs."""
        prints = self.collective.allgather(fingerprint([state.G, state.D, state.G_ema]))
        bad = [r for r, p in enumerate(prints) if not torch.equal(p, prints[0])]
        if bad:
            raise ReplicaMismatchError(f"DFAGD all-reduce: the replicas of rank(s) {bad} differ from rank 0's at "
                                       f"step {step} (parameter fingerprints); replicas must stay bitwise equal, "
                                       f"so the run stops instead of averaging diverged models")


# -- the training state as flat arrays (driver <-> rank 0, and rank 0 -> every rank) -------------------------------------
def pack_state(state: GANState) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """(meta, flat float32 arrays): G, D, G_ema state dicts, then each Adam's state (when it has one)."""
    arrays = [_flat(m.state_dict().values()) for m in (state.G, state.D, state.G_ema)]
    opt: dict[str, list[list]] = {}
    for name in ("opt_g", "opt_d"):
        st = getattr(state, name).state_dict()["state"]
        opt[name] = [[int(i), k] for i in sorted(st) for k in sorted(st[i])]
        if opt[name]:
            arrays.append(_flat(st[i][k] for i, k in opt[name]))
    return {"step": state.step, "opt": opt}, arrays


def unpack_state(state: GANState, meta: dict[str, Any], arrays: list[torch.Tensor]) -> None:
    """Inverse of pack_state, into a state built from the same config (its modules may live on a GPU)."""
    it = iter(arrays)
    for module in (state.G, state.D, state.G_ema):
        flat, i = next(it), 0
        with torch.no_grad():
            for t in module.state_dict().values():
                t.copy_(flat[i:i + t.numel()].view_as(t))
                i += t.numel()
    for name in ("opt_g", "opt_d"):
        keys, opt = meta["opt"][name], getattr(state, name)
        if not keys:
            continue
        flat, i, params, new = next(it), 0, opt.param_groups[0]["params"], {}
        for idx, k in keys:
            shape = torch.Size([]) if k == "step" else params[idx].shape
            n = shape.numel()
            new.setdefault(idx, {})[k] = flat[i:i + n].reshape(shape).clone()
            i += n
        sd = opt.state_dict()
        sd["state"] = new
        opt.load_state_dict(sd)          # moves moments to the parameters' device
    state.step = int(meta["step"])


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).float().cpu() for t in tensors])


# -- the executor side ------------------------------------------------------------------------------------------------
class _DriverLink:
    """Rank 0's connection to the driver: a sender thread (training never waits on the driver) and a reader for stop."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.outbox: queue.Queue[Message | None] = queue.Queue()
        self.stop = threading.Event()
        self.sender = threading.Thread(target=self._send_loop, daemon=True)
        self.reader = threading.Thread(target=self._read_loop, daemon=True)

    def start(self) -> None:
        self.sender.start()
        self.reader.start()

    def _send_loop(self) -> None:
        while (msg := self.outbox.get()) is not None:
            send_message(self.sock, msg)

    def _read_loop(self) -> None:
        try:
            while recv_message(self.sock).kind != "stop":
                pass
        except (OSError, ProtocolError):
            pass
        self.stop.set()

    def send(self, kind: str, meta: dict[str, Any], arrays: list[torch.Tensor] | None = None) -> None:
        self.outbox.put(Message(kind, meta, arrays or []))

    def close(self, flush_s: float = 120.0) -> None:
        self.outbox.put(None)
        self.sender.join(timeout=flush_s)
        self.sock.close()


def _form_group(ctx, spec: AllReduceSpec) -> tuple[Collective, dist.Store, torch.device]:
    """allGather (address, store port, CUDA) among the barrier tasks, then the process group."""
    rank, size = ctx.partitionId(), len(ctx.getTaskInfos())
    address = local_address(spec.host)
    device_wanted = spec.config["train"]["device"]
    if device_wanted == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' with spark.reduction 'allreduce' needs CUDA (NCCL) on every "
                          "executor and this one has none; use 'auto' or 'cpu'")
    store = None
    if rank == 0:
        store = dist.TCPStore(address, 0, size, is_master=True, wait_for_workers=False, timeout=GROUP_TIMEOUT)
    mine = {"address": address, "port": store.port if store else 0, "cuda": torch.cuda.is_available()}
    peers = [json.loads(m) for m in ctx.allGather(json.dumps(mine))]        # in partition (= rank) order
    if store is None:
        store = dist.TCPStore(peers[0]["address"], peers[0]["port"], size, is_master=False, timeout=GROUP_TIMEOUT)
    use_cuda = device_wanted != "cpu" and all(p["cuda"] for p in peers)
    hosts = [p["address"] for p in peers]
    device = torch.device("cpu")
    if use_cuda:
        same_host = [r for r, h in enumerate(hosts) if h == address]
        device = torch.device("cuda", same_host.index(rank) % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return Collective(store, rank, hosts, "nccl" if use_cuda else "gloo", address), store, device


def run_replica(spec: AllReduceSpec, ctx, blocks: dict[int, ImageSet], threads: int) -> dict[str, Any]:
    """The task body of one worker: group, starting state, the training loop; rank 0 reports to the driver."""
    torch.set_num_threads(threads)
    collective, store, device = _form_group(ctx, spec)
    rank, cfg = collective.rank, config_from_dict(spec.config)
    link = None
    if rank == 0:
        link = _DriverLink(connect(spec.host, spec.port))
        send_message(link.sock, Message("hello", {"backend": collective.backend,
                                                  "hosts": len(collective.groups),
                                                  "hierarchical": collective.hierarchical, "pid": os.getpid()}))
        start = recv_message(link.sock)
        meta, flat = start.meta, torch.cat(start.arrays)
        meta["sizes"] = [a.numel() for a in start.arrays]
        store.set("start", json.dumps(meta))
        link.start()
    else:
        meta = json.loads(store.get("start"))
        flat = torch.zeros(sum(meta["sizes"]))
    flat = flat.to(device)
    collective.broadcast(flat)                                     # every replica starts from rank 0's state
    state = build_state(cfg)
    for m in (state.G, state.D, state.G_ema):
        m.to(device)
    unpack_state(state, meta, list(flat.cpu().split(meta["sizes"])))
    pw = PartitionWorker(spec.config, spec.n_items, blocks, str(device.type))
    pw.G, pw.D = state.G, state.D                                  # the worker computes on the replica itself
    attempt = int(meta["attempt"])                                 # stage attempts the driver has seen, from 0
    sc = cfg.spark
    source = AllReduceGradSource(pw, collective, cfg.train.log_every or 25, attempt, bucket_mb=sc.bucket_mb,
                                 overlap=sc.overlap, exchange_dtype=sc.exchange_dtype)
    grads = spec.wrap_source(source) if spec.wrap_source else source
    callbacks: dict[str, Any] = {"print_fn": None}
    if link is not None:
        callbacks = _rank0_callbacks(link, source, spec)
    try:
        train(state, grads, should_stop=lambda: source.stop_requested, **callbacks)
        if link is not None:
            link.send("done", *_snapshot(state, source, []))
    except ReplicaMismatchError as exc:
        if link is not None:
            link.send("error", {"message": str(exc)})
        raise
    finally:
        if link is not None:
            link.close()
    return {"worker": rank, "attempt": attempt, "iterations": source.timing.iterations}


def _snapshot(state: GANState, source: AllReduceGradSource, reasons: list[str]) -> tuple[dict, list[torch.Tensor]]:
    meta, arrays = pack_state(state)                       # copies: training may go on while these are sent
    meta.update(reasons=reasons, timing=source.timing.__dict__.copy())
    return meta, arrays


def _rank0_callbacks(link: _DriverLink, source: AllReduceGradSource, spec: AllReduceSpec) -> dict[str, Any]:
    def poll() -> None:
        source.stop_wanted = link.stop.is_set()

    def on_log(state: GANState, metrics: dict[str, float]) -> None:
        poll()
        link.send("log", {"step": state.step, "metrics": metrics, "timing": source.timing.__dict__.copy()})

    def print_fn(line: str) -> None:
        poll()
        link.send("line", {"text": line})

    def snapshot(reason: str) -> Callback:
        return lambda state, metrics: link.send("snapshot", *_snapshot(state, source, [reason]))

    return {"print_fn": print_fn, "on_log": on_log,
            "on_sample": snapshot("sample") if spec.want_sample else None,
            "on_checkpoint": snapshot("checkpoint") if spec.want_checkpoint else None}


def make_allreduce_task(spec: AllReduceSpec, threads: int):
    """The mapPartitions function for rdd.barrier(); each RDD partition holds one worker's data blocks."""

    def task(rows: Iterator[tuple[int, dict[int, tuple[Any, Any]]]]) -> Iterator[dict]:
        from pyspark import BarrierTaskContext

        blocks: dict[int, ImageSet] = {}
        for _w, parts in rows:
            for p, (images, labels) in parts.items():
                blocks[p] = ImageSet(images, labels, f"partition {p}")
        yield run_replica(spec, BarrierTaskContext.get(), blocks, threads)

    return task


# -- the driver side --------------------------------------------------------------------------------------------------
@dataclass
class AllReduceDriver:
    """Waits for rank 0, sends it the state, relays its reports to the callbacks; a retried stage restarts from the
    last state the driver holds."""

    host: str
    job_error: Callable[[], BaseException | None]
    connect_timeout_s: float = 600.0
    on_timing: Callable[[dict[str, float]], None] | None = None   # rank 0's cumulative ReplicaTiming, as it arrives
    attempts: int = 0
    timing: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.listener = socket.create_server((self.host, 0))
        self.port = self.listener.getsockname()[1]

    def _check_job(self) -> None:
        err = self.job_error()
        if err is not None:
            raise DFAGDError(f"the DFAGD Spark job failed: {err}") from err

    def _accept(self) -> socket.socket:
        deadline = time.monotonic() + self.connect_timeout_s
        self.listener.settimeout(0.5)
        while True:
            self._check_job()
            try:
                sock, _ = self.listener.accept()
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise DFAGDError(f"DFAGD rank 0 did not connect to {self.host}:{self.port} within "
                                     f"{self.connect_timeout_s:.0f} s; executors must reach spark.driver_host, "
                                     f"reach each other, and have enough free task slots") from None
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def run(self, state: GANState, *, on_log: Callback | None, on_sample: Callback | None,
            on_checkpoint: Callback | None, should_stop: Callable[[], bool] | None,
            print_fn: Callable[[str], None] | None, on_ready: Callable[[dict], None] | None = None) -> GANState:
        """Relay until rank 0 says done; returns `state` holding the final weights."""
        synced, logged = state.step, state.step       # step of the weights held here; last step logged
        while True:
            sock = self._accept()
            try:
                hello = recv_message(sock)
                self.attempts += 1
                self.info = hello.meta
                if on_ready and self.attempts == 1:
                    on_ready(hello.meta)
                state.step = synced
                meta, arrays = pack_state(state)
                send_message(sock, Message("start", {**meta, "attempt": self.attempts - 1}, arrays))
                done = self._relay(sock, state, on_log, on_sample, on_checkpoint, should_stop, print_fn, logged)
            except (OSError, ProtocolError):
                done = None                          # rank 0's stage attempt died; Spark re-runs the stage
            finally:
                sock.close()
            if done is not None and done[0] == "error":
                raise DFAGDError(done[1])
            if done is not None and done[0] == "done":
                return state
            synced, logged = self._synced, max(logged, self._logged)

    def _relay(self, sock, state, on_log, on_sample, on_checkpoint, should_stop, print_fn, logged):
        self._synced, self._logged = state.step, logged
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ)
        stop_sent = False
        try:
            while True:
                if should_stop and not stop_sent and should_stop():
                    send_message(sock, Message("stop"))
                    stop_sent = True
                if not sel.select(timeout=0.5):
                    self._check_job()
                    continue
                msg = recv_message(sock)
                m = msg.meta
                if msg.kind == "line":
                    if print_fn and not (m["text"].startswith("step ") and _line_step(m["text"]) <= self._logged):
                        print_fn(m["text"])
                elif msg.kind == "log":
                    self._timing(m["timing"])
                    if m["step"] > self._logged:          # a retried stage repeats steps already logged
                        self._logged = state.step = m["step"]
                        state.history.append({"step": float(m["step"]), **m["metrics"]})
                        if on_log:
                            on_log(state, m["metrics"])
                elif msg.kind in ("snapshot", "done"):
                    unpack_state(state, m, msg.arrays)
                    self._synced = state.step
                    self._timing(m["timing"])
                    latest = state.history[-1] if state.history else {}
                    metrics = {k: v for k, v in latest.items() if k != "step"}
                    if "sample" in m["reasons"] and on_sample:
                        on_sample(state, metrics)
                    if "checkpoint" in m["reasons"] and on_checkpoint:
                        on_checkpoint(state, metrics)
                    if msg.kind == "done":
                        return ("done", "")
                elif msg.kind == "error":
                    return ("error", m["message"])
        finally:
            sel.close()

    def _timing(self, timing: dict[str, float]) -> None:
        self.timing = timing
        if self.on_timing:
            self.on_timing(timing)

    def stop(self) -> None:
        self.listener.close()


class AllReduceJob:
    """The long-lived barrier stage of replicas plus the driver's relay; `run(state, ...)` trains."""

    def __init__(self, spark, config: Config, rows: list, n_items: int, *,
                 wrap_source: Callable[[GradSource], GradSource] | None = None, want_sample: bool = False,
                 want_checkpoint: bool = False, on_timing: Callable[[dict[str, float]], None] | None = None):
        self.spark, self.config, self.rows = spark, config, rows
        self.error: BaseException | None = None
        self.group = f"dfagd-allreduce-{uuid.uuid4().hex[:8]}"
        self.driver = AllReduceDriver(config.spark.driver_host, lambda: self.error, on_timing=on_timing)
        self.spec = AllReduceSpec(config.to_dict(), config.spark.driver_host, self.driver.port, n_items,
                                  config.spark.workers, want_sample, want_checkpoint, wrap_source)
        self.thread = threading.Thread(target=self._run, name="dfagd-allreduce-job", daemon=True)

    def _run(self) -> None:
        sc, cfg = self.spark.sparkContext, self.config
        try:
            sc.setJobGroup(self.group, "DFAGD all-reduce replicas (barrier stage)", interruptOnCancel=True)
            rdd = sc.parallelize(self.rows, cfg.spark.workers)
            # the shuffle after the barrier stage makes a failed attempt retried as a whole (see dfagd.DFAGDJob)
            rdd.barrier().mapPartitions(make_allreduce_task(self.spec, cfg.spark.threads_per_worker)) \
                .repartition(1).collect()
        except BaseException as exc:  # noqa: BLE001 - reported to the driver loop via job_error
            self.error = exc

    def run(self, state: GANState, **callbacks: Any) -> GANState:
        self.thread.start()
        try:
            return self.driver.run(state, **callbacks)
        except BaseException:
            self.spark.sparkContext.cancelJobGroup(self.group)   # no retry can mend a run the driver gave up
            raise
        finally:
            self.driver.stop()
            self.thread.join(timeout=60)
            if self.thread.is_alive():
                self.spark.sparkContext.cancelJobGroup(self.group)
                self.thread.join(timeout=30)


def _line_step(line: str) -> int:
    """The step a progress line ('step     12/800 | ...') reports."""
    try:
        return int(line.split()[1].split("/")[0].rstrip(":"))
    except (IndexError, ValueError):
        return -1
