"""The driver's reduction server: one TCP connection per DFAGD worker, one synchronous all-reduce per update.

Contributions are keyed by (step, phase, worker) and stored in a dict, so a result that arrives twice (a
restarted task answering a request its predecessor already answered) overwrites instead of adding: no
gradient is ever counted twice. When a worker disconnects mid-update (its barrier stage is being retried)
the server keeps waiting; the worker's new attempt says hello, gets the current weights in full and the
pending request, and training resumes from the driver's (step, phase, weights).
"""

import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from models.step import get_flat
from spark_training.exchange import Buffers, Message, ProtocolError, mean_of, recv_message, send_message


class DFAGDError(RuntimeError):
    """The Spark job behind DFAGD failed or its workers never connected; the message says which."""


@dataclass
class ReductionTiming:
    """One reduction, seconds. compute = slowest worker; exchange = (de)serialization + transfer."""

    wall_s: float = 0.0
    compute_s: float = 0.0
    compute_cpu_s: float = 0.0   # CPU seconds the slowest worker got during its compute_s
    exchange_s: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0
    reconnects: int = 0


class Weights:
    """A network's weights at a version; flattened at most once, and only if some worker needs them."""

    def __init__(self, version: int, module: nn.Module):
        self.version, self.module = version, module
        self._flat: torch.Tensor | None = None

    @property
    def flat(self) -> torch.Tensor:
        if self._flat is None:
            self._flat = get_flat(self.module)
        return self._flat


class _FlatCache:
    """One reusable flat buffer per network: refilled when a newer version of its weights is sent."""

    def __init__(self) -> None:
        self._bufs: dict[int, tuple[int, torch.Tensor]] = {}    # id(module) -> (version, flat weights)

    def flat(self, w: Weights) -> torch.Tensor:
        version, buf = self._bufs.get(id(w.module), (None, None))
        if version != w.version or buf is None:
            buf = get_flat(w.module, out=buf)
            self._bufs[id(w.module)] = (w.version, buf)
        return buf


@dataclass
class _Conn:
    sock: socket.socket
    worker: int
    g_version: int = -1     # last weights version this connection holds
    d_version: int = -1
    pid: int | None = None           # the worker's Python process, and its executor JVM (same host only)
    executor_pid: int | None = None
    buffers: Buffers = field(default_factory=Buffers)   # its gradients are received in place here


@dataclass(frozen=True)
class WorkerProcess:
    """A connected worker's process ids, as its hello reported them (None where unknown)."""

    pid: int | None               # the Python process running the task
    executor_pid: int | None      # the JVM above it (the executor, or the driver's JVM in local[N])


# Called once a reduction's requests are out, before its results are gathered: (workers, step, phase).
BeforeReduce = Callable[[dict[int, WorkerProcess], int, int], None]


@dataclass
class ReductionServer:
    host: str
    workers: int
    exchange_dtype: str = "float32"
    job_error: Callable[[], BaseException | None] = lambda: None   # the Spark job's failure, if any
    connect_timeout_s: float = 600.0
    before_reduce: BeforeReduce | None = None   # e.g. instrumentation; runs on the driver
    conns: dict[int, _Conn] = field(default_factory=dict)
    hellos: dict[int, int] = field(default_factory=dict)             # worker -> connections seen (attempts)

    def __post_init__(self) -> None:
        self._weights = _FlatCache()
        self._means: dict[int, torch.Tensor] = {}                 # size -> the averaged gradient (one per network)
        self.listener = socket.create_server((self.host, 0), backlog=max(8, 2 * self.workers))
        self.port = self.listener.getsockname()[1]
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)

    # -- connections -------------------------------------------------------------------------------------
    def _accept(self) -> int | None:
        sock, _ = self.listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(60.0)
        try:
            hello = recv_message(sock)
        except (OSError, ProtocolError):
            sock.close()
            return None
        if hello.kind != "hello":
            sock.close()
            return None
        worker = int(hello.meta["worker"])
        attempt = self.hellos.get(worker, 0)
        self.hellos[worker] = attempt + 1
        send_message(sock, Message("welcome", {"attempt": attempt}))
        sock.settimeout(None)
        self._drop(worker)                                  # a new attempt replaces the old connection
        self.conns[worker] = _Conn(sock, worker, pid=hello.meta.get("pid"),
                                   executor_pid=hello.meta.get("executor_pid"))
        self.selector.register(sock, selectors.EVENT_READ, worker)
        return worker

    def _drop(self, worker: int) -> None:
        conn = self.conns.pop(worker, None)
        if conn is not None:
            self.selector.unregister(conn.sock)
            conn.sock.close()

    def _check_job(self) -> None:
        err = self.job_error()
        if err is not None:
            raise DFAGDError(f"the DFAGD Spark job failed: {err}") from err

    def wait_for_workers(self) -> None:
        deadline = time.monotonic() + self.connect_timeout_s
        while len(self.conns) < self.workers:
            self._check_job()
            if time.monotonic() > deadline:
                raise DFAGDError(f"only {len(self.conns)} of {self.workers} DFAGD workers connected to "
                                 f"{self.host}:{self.port} within {self.connect_timeout_s:.0f} s; executors must "
                                 f"reach spark.driver_host and have enough free task slots")
            for key, _ in self.selector.select(timeout=0.5):
                if key.data is None:
                    self._accept()
                else:                                       # a connection died before any request
                    self._drop(key.data)

    # -- one reduction ---------------------------------------------------------------------------------------
    def _send_work(self, conn: _Conn, step: int, phase: int, g: Weights, d: Weights) -> int:
        arrays, has_g, has_d = [], conn.g_version != g.version, conn.d_version != d.version
        if has_g:
            arrays.append(self._weights.flat(g))
        if has_d:
            arrays.append(self._weights.flat(d))
        n = send_message(conn.sock, Message("work", {"step": step, "phase": phase, "has_g": has_g,
                                                     "has_d": has_d}, arrays))   # weights always float32
        conn.g_version, conn.d_version = g.version, d.version
        return n

    def reduce(self, step: int, phase: int, g: Weights, d: Weights
               ) -> tuple[torch.Tensor, dict[str, float], ReductionTiming]:
        """Send G's and D's weights where a worker's copy is stale, wait for all; return the mean gradient.

        The gradient is the server's buffer for that network: valid until its next reduction (the loop applies
        it before that).
        """
        t0 = time.perf_counter()
        timing = ReductionTiming()
        self.wait_for_workers()
        results: dict[int, tuple[torch.Tensor, dict[str, float], dict[str, float]]] = {}
        for w in list(self.conns):
            try:
                timing.bytes_sent += self._send_work(self.conns[w], step, phase, g, d)
            except OSError:
                self._drop(w)
        t_sent = time.perf_counter()
        if self.before_reduce is not None:
            self.before_reduce({w: WorkerProcess(c.pid, c.executor_pid) for w, c in self.conns.items()}, step, phase)
        recv_s = 0.0
        while len(results) < self.workers:
            self._check_job()
            for key, _ in self.selector.select(timeout=0.5):
                if key.data is None:
                    w = self._accept()
                    if w is not None:
                        timing.reconnects += 1
                        if w not in results:
                            timing.bytes_sent += self._send_work(self.conns[w], step, phase, g, d)
                    continue
                w = key.data
                tr = time.perf_counter()
                try:
                    msg = recv_message(self.conns[w].sock, self.conns[w].buffers)
                except (OSError, ProtocolError):
                    self._drop(w)                       # its stage attempt died; the retry reconnects
                    continue
                recv_s += time.perf_counter() - tr
                m = msg.meta
                if msg.kind == "result" and (m["step"], m["phase"]) == (step, phase):
                    results[w] = (msg.arrays[0], m["stats"], m["timing"])   # keyed: a retry overwrites
                    timing.bytes_received += msg.arrays[0].numel() * (4 if self.exchange_dtype == "float32" else 2)
        ta = time.perf_counter()
        ordered = [results[w] for w in sorted(results)]
        n = ordered[0][0].numel()
        if n not in self._means:
            self._means[n] = torch.empty(n)
        grad = mean_of([r[0] for r in ordered], out=self._means[n])
        stats: dict[str, float] = {}
        for _, s, _t in ordered:
            for k, v in s.items():
                stats[k] = stats.get(k, 0.0) + v / len(ordered)
        t1 = time.perf_counter()
        timing.wall_s = t1 - t0
        slowest = max(ordered, key=lambda r: r[2]["compute_s"])[2]
        timing.compute_s = slowest["compute_s"]
        timing.compute_cpu_s = slowest.get("compute_cpu_s", slowest["compute_s"])
        timing.exchange_s = (t_sent - t0) + recv_s + (t1 - ta) + max(r[2]["decode_s"] for r in ordered)
        return grad, stats, timing

    def stop(self) -> None:
        """Tell every connected worker to finish its task, then close everything."""
        for w in list(self.conns):
            try:
                send_message(self.conns[w].sock, Message("stop"))
            except OSError:
                pass
            self._drop(w)
        self.selector.close()
        self.listener.close()
