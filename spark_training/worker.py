"""DFAGD executor side: one long-lived barrier task per worker keeps its data partitions and G/D replicas alive.

A worker owns data partitions [w*P/W, (w+1)*P/W). Per update (step, phase) it receives the weights that
changed since it last heard from the driver, computes the mean gradient of each owned partition's slice of
the global batch, averages them locally (the thesis' per-machine average) and sends ONE flat vector back.
Nothing on that path allocates per update: weights arrive in place in the connection's buffers and are
copied into the replicas, and each network's gradient is summed in one flat buffer that is then sent as is.
"""

import functools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models import build_discriminator, build_generator
from models.config import config_from_dict
from models.data import ImageSet, PartitionedSampler
from models.step import (
    G_PHASE,
    Nets,
    compute_nets,
    d_loss,
    draw_noise,
    flat_grad,
    g_loss,
    params_of,
    set_flat,
)
from spark_training.exchange import Buffers, Message, connect, recv_message, send_message

# Called by a worker before it answers a request: (worker, attempt, request number from 1). It travels pickled
# inside WorkerSpec, so executors must be able to unpickle it (importable there, or pickled by value).
OnRequest = Callable[[int, int, int], None]
# Called during the last owned partition's backward pass with (parameter index, its slice of the mean gradient)
# as soon as that slice is final, so its all-reduce can start while the backward pass goes on.
OnFinal = Callable[[int, torch.Tensor], None]


@dataclass
class WorkerSpec:
    """Everything a task needs, shipped in the closure (small: no weights, no data)."""

    config: dict[str, Any]          # Config.to_dict()
    host: str
    port: int
    n_items: int                    # images in the whole dataset (partition bounds are a function of it)
    workers: int
    on_request: OnRequest | None = None


def resolve_device(device: str) -> torch.device:
    """train.device on an executor: cuda if asked (or auto and available), else cpu."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device: 'cuda' requested but this executor has no CUDA device; use 'auto' or 'cpu'")
    if device in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


class PartitionWorker:
    """The per-partition math, free of Spark and sockets (so it is unit-testable).

    G and D may be replaced after construction (a peer that computes on the replica its optimizer updates
    assigns its own); they are prepared for computing (models.step.compute_nets) at the first gradient after.
    """

    def __init__(self, config: dict[str, Any], n_items: int, blocks: dict[int, ImageSet], device: str = "cpu"):
        self.cfg = config_from_dict(config)
        tc = self.cfg.train
        self.blocks = blocks                                     # {data partition p: ImageSet of its block}
        self.sampler = PartitionedSampler(n_items, self.cfg.partitions, tc.batch_size, tc.seed)
        self.b = self.sampler.per_partition                      # slice of the global batch per partition
        self.device = resolve_device(device)
        self.G = build_generator(self.cfg.model).to(self.device)
        self.D = build_discriminator(self.cfg.model).to(self.device)
        self._nets: tuple[torch.nn.Module, torch.nn.Module, Nets] | None = None
        self._grads: dict[str, torch.Tensor] = {}     # "g"/"d" -> the sum; "g+"/"d+" -> a later partition's

    def nets(self) -> Nets:
        if self._nets is None or self._nets[0] is not self.G or self._nets[1] is not self.D:
            self._nets = (self.G, self.D, compute_nets(self.G, self.D, self.cfg.train))
        return self._nets[2]

    def set_weights(self, g: torch.Tensor | None, d: torch.Tensor | None) -> None:
        if g is not None:
            set_flat(self.G, g)                                  # copy_ moves it to the device too
        if d is not None:
            set_flat(self.D, d)

    def _buffer(self, key: str, params: list[torch.nn.Parameter]) -> torch.Tensor:
        if key not in self._grads:
            self._grads[key] = torch.empty(sum(p.numel() for p in params), device=self.device)
        return self._grads[key]

    def gradient(self, step: int, phase: int, on_final: OnFinal | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean over owned partitions of each partition's mean gradient; float32 on CPU.

        The vector is this worker's buffer for the network: the next gradient of that network overwrites it.
        With `on_final`, each parameter's slice is finished (summed and divided) inside the last partition's
        backward pass, when autograd hands over that parameter's gradient; the bits are the same either way.
        """
        c, tc = self.cfg, self.cfg.train
        nets = self.nets()
        which, net = ("g", self.G) if phase == G_PHASE else ("d", self.D)
        params = params_of(net)
        total = self._buffer(which, params)
        stats: dict[str, float] = {}
        n = len(self.blocks)
        for i, (p, block) in enumerate(sorted(self.blocks.items())):
            noise = draw_noise(tc.seed, step, phase, tc.batch_size, c.model.z_dim, c.model.num_classes,
                               start=p * self.b, stop=(p + 1) * self.b)
            noise.z = noise.z.to(self.device)
            noise.eps = noise.eps.to(self.device)
            noise.labels = noise.labels.to(self.device) if noise.labels is not None else None
            if phase == G_PHASE:
                loss, s = g_loss(nets.G, nets.D, noise, tc)
            else:
                real, labels = block.batch(self.sampler.local_indices(step * tc.n_critic + phase, p))
                real = real.to(self.device)
                labels = labels.to(self.device) if labels is not None else None
                loss, s = d_loss(nets.G, nets.D, real, labels, noise, tc, nets.D_penalty)
            if on_final is not None and i == n - 1:
                _final_backward(loss, params, total, i == 0, n, on_final)
            elif i == 0:
                flat_grad(loss, params, out=total)
            else:
                total.add_(flat_grad(loss, params, out=self._buffer(which + "+", params)))
            for k, v in s.items():
                stats[k] = stats.get(k, 0.0) + float(v)
        assert stats, "a worker owns at least one partition"
        if on_final is None:
            total.div_(n)
        return total.cpu(), {k: v / n for k, v in stats.items()}


def _final_backward(loss: torch.Tensor, params: list[torch.nn.Parameter], total: torch.Tensor, first: bool, n: int,
                    on_final: OnFinal) -> None:
    """The last partition's backward: a hook per parameter finishes its slice of `total` (the earlier partitions'
    sum, or nothing when this is the only one) with the same add and divide as gradient(), then reports it.

    A leaf's hook fires once, with its whole gradient: autograd sums every path into it first, the gradient
    penalty's double backward included.
    """
    slices, i = [], 0
    for p in params:
        slices.append(total[i:i + p.numel()])
        i += p.numel()

    def finish(j: int, g: torch.Tensor | None) -> None:
        dst = slices[j]
        if g is None:
            if first:
                dst.zero_()                              # unused parameter: flat_grad writes zeros
        elif first:
            dst.copy_(g.reshape(-1))
        else:
            dst.add_(g.reshape(-1))
        on_final(j, dst.div_(n))

    done = [False] * len(params)

    def hook(j: int, g: torch.Tensor) -> None:
        done[j] = True
        finish(j, g)

    handles = [p.register_hook(functools.partial(hook, j)) for j, p in enumerate(params)]
    try:
        torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    for j in range(len(params)):
        if not done[j]:
            finish(j, None)


def owned_partitions(worker: int, workers: int, partitions: int) -> list[int]:
    per = partitions // workers
    return list(range(worker * per, (worker + 1) * per))


def serve(spec: WorkerSpec, worker: int, blocks: dict[int, ImageSet], threads: int) -> dict[str, Any]:
    """The task body: connect, then answer work requests until the driver says stop.

    The driver's welcome carries this worker's attempt number (how many times it connected before), which
    PySpark's BarrierTaskContext does not expose; spec.on_request gets it with every request.
    """
    torch.set_num_threads(threads)
    cfg = spec.config
    pw = PartitionWorker(cfg, spec.n_items, blocks, cfg["train"]["device"])
    dtype = cfg["spark"]["exchange_dtype"]
    sock = connect(spec.host, spec.port)
    buffers = Buffers()                     # this connection's receive slots and send scratch
    requests = 0
    try:
        send_message(sock, Message("hello", {"worker": worker, "partitions": sorted(blocks),
                                             "device": str(pw.device), "pid": os.getpid(),
                                             "executor_pid": executor_pid()}))
        attempt = int(recv_message(sock).meta["attempt"])
        while True:
            t_wait = time.perf_counter()
            msg = recv_message(sock, buffers)
            t_got = time.perf_counter()
            if msg.kind == "stop":
                break
            m = msg.meta
            requests += 1
            if spec.on_request is not None:
                spec.on_request(worker, attempt, requests)
            arrays = iter(msg.arrays)
            pw.set_weights(next(arrays) if m["has_g"] else None, next(arrays) if m["has_d"] else None)
            t0, c0 = time.perf_counter(), time.process_time()
            grad, stats = pw.gradient(int(m["step"]), int(m["phase"]))
            t1 = time.perf_counter()
            timing = {"wait_s": t_got - t_wait, "compute_s": t1 - t0, "decode_s": t0 - t_got,
                      "compute_cpu_s": time.process_time() - c0}   # < compute_s when the CPU is contended
            send_message(sock, Message("result", {"step": m["step"], "phase": m["phase"], "worker": worker,
                                                  "stats": stats, "timing": timing}, [grad]), dtype, buffers)
    finally:
        sock.close()
    return {"worker": worker, "attempt": attempt, "requests": requests}


def executor_pid(pid: int | None = None) -> int | None:
    """The JVM (executor, or the driver in local[N]) above this Python worker, from /proc; None elsewhere."""
    pid = os.getpid() if pid is None else pid
    for _ in range(8):
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            return None
        comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if comm == "java":
            return pid
        pid = int(rest[1])              # field 4: the parent's pid
        if pid <= 1:
            return None
    return None


def make_task(spec: WorkerSpec, threads: int):
    """The mapPartitions function for rdd.barrier(); each RDD partition holds one worker's data blocks."""

    def task(rows: Iterator[tuple[int, dict[int, tuple[np.ndarray, np.ndarray | None]]]]) -> Iterator[dict]:
        from pyspark import BarrierTaskContext

        ctx = BarrierTaskContext.get()
        worker = ctx.partitionId()
        blocks: dict[int, ImageSet] = {}
        for _w, parts in rows:
            for p, (images, labels) in parts.items():
                blocks[p] = ImageSet(images, labels, f"partition {p}")
        yield serve(spec, worker, blocks, threads)

    return task
