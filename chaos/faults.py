"""The faults, injected from outside the product through its extension points: GradSource and DFAGDHooks."""

import functools
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from models.step import GANState
from models.trainer import GradSource
from spark_training.reduction import WorkerProcess
from spark_training.session import is_local_machine


# -- NaN gradients ---------------------------------------------------------------------------------------------
class NaNGradients:
    """GradSource wrapper: the first D gradient of every step in `steps` (0-based) comes back NaN."""

    def __init__(self, source: GradSource, steps: range):
        self.source, self.steps = source, steps

    def d_grad(self, state: GANState, step: int, k: int) -> tuple[torch.Tensor, dict[str, float]]:
        grad, stats = self.source.d_grad(state, step, k)
        if k == 0 and step in self.steps:
            grad = torch.full_like(grad, float("nan"))
        return grad, stats

    def g_grad(self, state: GANState, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        return self.source.g_grad(state, step)


def step_range(spec: str) -> range:
    """'S' or 'S-E' (0-based steps, inclusive) as a range; ValueError otherwise."""
    first, _, last = spec.partition("-")
    steps = range(int(first), int(last or first) + 1)
    if not steps:
        raise ValueError(f"empty step range {spec!r}")
    return steps


def nan_gradients(steps: range) -> Callable[[GradSource], GradSource]:
    """A DFAGDHooks.wrap_source that makes the first D gradient of `steps` NaN."""
    return functools.partial(NaNGradients, steps=steps)


# -- a worker's Python process or executor JVM killed ----------------------------------------------------------------
@dataclass
class KillWorker:
    """before_reduce hook: SIGKILL worker `worker`'s Python process or executor JVM once, during step `step`'s first
    update. Process ids are only meaningful on this machine, so check_master() refuses other masters."""

    target: str          # "python" or "executor"
    worker: int
    step: int
    fired: bool = False

    def check_master(self, master: str) -> None:
        master = master.strip()
        if not is_local_machine(master):
            raise ValueError(f"killing a worker needs a master on this machine (local[N], local-cluster); "
                             f"got {master!r}")
        if self.target == "executor" and not master.startswith("local-cluster"):
            raise ValueError(f"killing an executor needs separate executor JVMs (local-cluster[E,C,M]); in "
                             f"{master!r} the executor is the driver's own JVM")

    def __call__(self, workers: dict[int, WorkerProcess], step: int, phase: int) -> None:
        proc = workers.get(self.worker)
        if self.fired or step != self.step or phase != 0 or proc is None:
            return
        pid = proc.pid if self.target == "python" else proc.executor_pid
        if pid is None:
            raise RuntimeError(f"worker {self.worker} reported no {self.target} process id")
        time.sleep(0.05)                    # the request is out: let the worker start, so the kill lands mid-update
        os.kill(pid, signal.SIGKILL)
        self.fired = True


# -- a worker task that fails once ---------------------------------------------------------------------------------
class TaskFailure(RuntimeError):
    """Raised inside a worker task by FailOnce."""


class FailOnce:
    """on_request hook: worker `worker` raises TaskFailure at request `request` of its first attempt, never after.

    It travels to Spark executors pickled inside WorkerSpec; this module is pickled by value, so the executors
    need no chaos/ package.
    """

    def __init__(self, worker: int, request: int = 2):
        self.worker, self.request = worker, request
        from pyspark import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])

    def __call__(self, worker: int, attempt: int, request: int) -> None:
        if worker == self.worker and attempt == 0 and request == self.request:
            raise TaskFailure(f"worker {worker}: planned failure of its first attempt at request {request}")


class KillReplica:
    """wrap_source (spark.reduction=allreduce): rank `rank`'s Python worker SIGKILLs itself at the first D update of
    step `step`, in the stage's first attempt only. Built by `KillReplica.at(rank, step)`; it travels to the executors
    pickled by value, like FailOnce."""

    def __init__(self, source, rank: int, step: int):
        self.source, self.rank, self.step = source, rank, step

    @classmethod
    def at(cls, rank: int, step: int) -> Callable[[object], "KillReplica"]:
        from pyspark import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        return functools.partial(cls, rank=rank, step=step)

    def d_grad(self, state: GANState, step: int, k: int):
        if self.source.rank == self.rank and self.source.attempt == 0 and step == self.step and k == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.source.d_grad(state, step, k)

    def g_grad(self, state: GANState, step: int):
        return self.source.g_grad(state, step)
