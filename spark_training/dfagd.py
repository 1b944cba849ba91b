"""DFAGD (Distributed Full-Average Gradient Descent) driver: the reference trainer's loop, Spark workers' gradients.

The driver holds the ONE GANState and runs models.trainer.train(); only the gradient source changes:
SparkGradSource asks every worker for the mean gradient over its data partitions' slices of the global
batch and averages those (equal slice sizes => the global-batch mean), then models.step.apply_update
clips and steps the optimizer on the driver. So DFAGD equals the reference trainer up to float summation
order.

Synchronous reductions per iteration: exactly n_critic + 1 (one per D update, one for the G update).
That is the minimum the math allows: D update k+1's gradient is taken at the weights that update k
produced (and the G update at the D that the last critic step produced), so no two updates' gradients
can be computed, let alone reduced, together without changing the algorithm. Everything else (data,
model replicas, the task itself) is set up once: one long-lived barrier stage runs for the whole training
and each reduction moves only the weights of the network that just changed (driver -> workers) and one
flat gradient per worker (workers -> driver).
"""

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from models.config import Config, ConfigError
from models.data import ImageSet, check_labels, load_dataset, partition_bounds
from models.step import G_PHASE, GANState, build_state
from models.trainer import Callback, GradSource, train
from spark_training.allreduce import AllReduceJob
from spark_training.reduction import BeforeReduce, DFAGDError, ReductionServer, ReductionTiming, Weights
from spark_training.session import check_settings, is_local_machine, spark_session
from spark_training.worker import OnRequest, WorkerSpec, make_task, owned_partitions

__all__ = ["train_dfagd", "SparkGradSource", "DFAGDStats", "DFAGDError", "DFAGDHooks", "DFAGDJob", "validate_dfagd"]


@dataclass
class DFAGDStats:
    """Accumulated over reductions since the last reset(); breakdown() gives per-iteration seconds."""

    iterations: int = 0
    reductions: int = 0
    wall_s: float = 0.0          # inside reductions
    compute_s: float = 0.0       # slowest worker's forward/backward, summed over reductions
    compute_cpu_s: float = 0.0   # CPU time that worker got meanwhile (compute_cpu_s / compute_s = its core share)
    exchange_s: float = 0.0      # serialization + transfer + averaging
    bytes_sent: int = 0
    bytes_received: int = 0
    reconnects: int = 0

    def add(self, t: ReductionTiming, iteration_done: bool) -> None:
        self.reductions += 1
        self.iterations += int(iteration_done)
        self.wall_s += t.wall_s
        self.compute_s += t.compute_s
        self.compute_cpu_s += t.compute_cpu_s
        self.exchange_s += t.exchange_s
        self.bytes_sent += t.bytes_sent
        self.bytes_received += t.bytes_received
        self.reconnects += t.reconnects

    def reset(self) -> None:
        self.__init__()

    def breakdown(self, wall_s: float | None = None) -> dict[str, float]:
        """Per iteration: compute_s, exchange_s, scheduling_s (= the rest of wall_s: waiting for the slowest
        worker, socket latency, and the driver's optimizer step; without wall_s only the part inside reductions)."""
        n = max(self.iterations, 1)
        total = self.wall_s if wall_s is None else wall_s
        rest = max(total - self.compute_s - self.exchange_s, 0.0)
        return {"compute_s": self.compute_s / n, "exchange_s": self.exchange_s / n, "scheduling_s": rest / n}

    def cpu_share(self, threads: int = 1) -> float:
        """Fraction of its `threads` cores the slowest worker actually got while computing (1.0 = uncontended)."""
        return self.compute_cpu_s / max(self.compute_s * threads, 1e-9)


class SparkGradSource:
    """GradSource whose gradients come from DFAGD workers through the reduction server."""

    def __init__(self, server: ReductionServer):
        self.server = server
        self.stats = DFAGDStats()
        self._g_version = self._d_version = 0
        self._last: str | None = None

    def _versions(self, state: GANState, calling: str) -> tuple[Weights, Weights]:
        # The update that followed the previous call changed exactly one network: bump its version, so only
        # that network's weights travel (workers that reconnect get both).
        if self._last == "d":
            self._d_version += 1
        elif self._last == "g":
            self._g_version += 1
        self._last = calling
        return Weights(self._g_version, state.G), Weights(self._d_version, state.D)

    def d_grad(self, state: GANState, step: int, k: int) -> tuple[torch.Tensor, dict[str, float]]:
        g, d = self._versions(state, "d")
        grad, stats, t = self.server.reduce(step, k, g, d)
        self.stats.add(t, iteration_done=False)
        return grad, stats

    def g_grad(self, state: GANState, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        g, d = self._versions(state, "g")
        grad, stats, t = self.server.reduce(step, G_PHASE, g, d)
        self.stats.add(t, iteration_done=True)
        return grad, stats


def validate_dfagd(config: Config) -> None:
    """Every DFAGD setting, up front, with errors naming the setting."""
    config.validate()
    check_settings(config.spark)
    if (config.spark.reduction == "allreduce" and config.train.device == "cuda" and is_local_machine(config.spark.master)
            and not torch.cuda.is_available()):
        raise ConfigError("train.device: 'cuda' with spark.reduction 'allreduce' needs CUDA (NCCL) and this machine "
                          "has none; use 'auto' or 'cpu'")
    if config.spark.sync_every != 1:
        raise ConfigError(f"spark.sync_every: only 1 (exact DFAGD, one averaging per update) is implemented; "
                          f"got {config.spark.sync_every}")


def shard(data: ImageSet, config: Config) -> list[tuple[int, dict[int, tuple[Any, Any]]]]:
    """One RDD element per worker: {data partition p: (uint8 images (n_p,C,H,W), labels (n_p,) | None)}."""
    bounds = partition_bounds(len(data), config.partitions)
    out = []
    for w in range(config.spark.workers):
        parts = {}
        for p in owned_partitions(w, config.spark.workers, config.partitions):
            a, b = bounds[p]
            parts[p] = (data.images[a:b], data.labels[a:b] if data.labels is not None else None)
        out.append((w, parts))
    return out


@dataclass(frozen=True)
class DFAGDHooks:
    """Optional extension points of a DFAGD run, set by callers that instrument it from outside; all off by default.

    wrap_source:   wraps the driver's gradient source for the training loop (e.g. to observe or alter gradients);
                   with spark.reduction 'allreduce' it wraps every worker's source (shipped pickled to executors).
    before_reduce: run on the driver once each reduction's requests are out (see ReductionServer).
    on_request:    run by each worker before it answers a request (see WorkerSpec; shipped to the executors).
    """

    wrap_source: Callable[[GradSource], GradSource] | None = None
    before_reduce: BeforeReduce | None = None
    on_request: OnRequest | None = None


class DFAGDJob:
    """The long-lived barrier stage plus its reduction server; `with DFAGDJob(...) as source:` trains."""

    def __init__(self, spark, config: Config, data: ImageSet, hooks: DFAGDHooks | None = None):
        self.spark, self.config, self.data = spark, config, data
        self.hooks = hooks or DFAGDHooks()
        self.error: BaseException | None = None
        self.result: list[dict] | None = None
        self.group = f"dfagd-{uuid.uuid4().hex[:8]}"
        sc = config.spark
        self.server = ReductionServer(sc.driver_host, sc.workers, sc.exchange_dtype, lambda: self.error,
                                      before_reduce=self.hooks.before_reduce)
        self.source = SparkGradSource(self.server)
        self.thread = threading.Thread(target=self._run, name="dfagd-spark-job", daemon=True)

    def _run(self) -> None:
        sc, cfg = self.spark.sparkContext, self.config
        try:
            sc.setJobGroup(self.group, "DFAGD workers (barrier stage)", interruptOnCancel=True)
            spec = WorkerSpec(cfg.to_dict(), cfg.spark.driver_host, self.server.port, len(self.data),
                              cfg.spark.workers, self.hooks.on_request)
            rdd = sc.parallelize(shard(self.data, cfg), cfg.spark.workers)
            # repartition(1) puts a shuffle after the barrier stage: a failed barrier ShuffleMapStage is retried
            # as a whole by Spark, a failed barrier ResultStage would abort the job.
            self.result = (rdd.barrier().mapPartitions(make_task(spec, cfg.spark.threads_per_worker))
                           .repartition(1).collect())
        except BaseException as exc:  # noqa: BLE001 - reported to the driver loop via job_error
            self.error = exc

    def __enter__(self) -> SparkGradSource:
        # The driver only clips and steps the optimizer; with few threads it does not fight the workers (in
        # local mode they share its cores, and oversubscribed OpenMP threads spin-wait for each other).
        self._driver_threads = torch.get_num_threads()
        torch.set_num_threads(self.config.spark.driver_threads)
        self.thread.start()
        try:
            self.server.wait_for_workers()
        except BaseException:
            self.__exit__()
            raise
        return self.source

    def __exit__(self, *exc_info) -> None:
        torch.set_num_threads(self._driver_threads)
        self.server.stop()
        self.thread.join(timeout=60)
        if self.thread.is_alive():
            self.spark.sparkContext.cancelJobGroup(self.group)
            self.thread.join(timeout=30)


def train_dfagd(config: Config, *, state: GANState | None = None, on_log: Callback | None = None,
                on_sample: Callback | None = None, on_checkpoint: Callback | None = None,
                should_stop: Callable[[], bool] | None = None, print_fn: Callable[[str], None] | None = print,
                spark=None, data: ImageSet | None = None, stats_out: DFAGDStats | None = None,
                hooks: DFAGDHooks | None = None) -> GANState:
    """Train with DFAGD on config.spark.master; returns the (driver's) GANState.

    spark: an existing SparkSession to reuse (not stopped); default: one is built from config.spark and stopped.
    data: an already-loaded dataset (default: load_dataset(config.data.source, ...) on the driver; each worker's
          partitions are shipped once, inside its RDD partition, and stay decoded in the worker's memory).
    stats_out: filled with the run's DFAGDStats (compute / exchange / scheduling breakdown).
    hooks: optional extension points (DFAGDHooks); none by default.
    """
    validate_dfagd(config)
    hooks = hooks or DFAGDHooks()
    if data is None:
        data = load_dataset(config.data.source, config.model.resolution, config.model.channels, config.data.limit)
    partition_bounds(len(data), config.partitions)       # fails early, naming data.partitions
    check_labels(data.labels, config.model.num_classes, data.source)   # and model.num_classes
    state = build_state(config) if state is None else state
    if spark is None:
        with spark_session(config.spark) as session:
            return _train(session, config, data, state, on_log, on_sample, on_checkpoint, should_stop,
                          print_fn, stats_out, hooks)
    return _train(spark, config, data, state, on_log, on_sample, on_checkpoint, should_stop, print_fn, stats_out,
                  hooks)


def _train(spark, config, data, state, on_log, on_sample, on_checkpoint, should_stop, print_fn, stats_out, hooks):
    if config.spark.reduction == "allreduce":
        return _train_allreduce(spark, config, data, state, on_log, on_sample, on_checkpoint, should_stop,
                                print_fn, stats_out, hooks)
    if print_fn:
        sc = config.spark
        print_fn(f"dfagd: {sc.workers} workers x {sc.threads_per_worker} threads on {spark.sparkContext.master}; "
                 f"{config.partitions} data partitions of {len(data)} images; global batch "
                 f"{config.train.batch_size}; {config.train.n_critic + 1} reductions per iteration")
    t0 = time.perf_counter()
    with DFAGDJob(spark, config, data, hooks) as source:
        if print_fn:
            print_fn(f"dfagd: workers ready in {time.perf_counter() - t0:.1f}s")
        grads = hooks.wrap_source(source) if hooks.wrap_source else source
        train(state, grads, on_log=on_log, on_sample=on_sample, on_checkpoint=on_checkpoint,
              should_stop=should_stop, print_fn=print_fn)
        if stats_out is not None:
            stats_out.__dict__.update(source.stats.__dict__)
    return state


def _train_allreduce(spark, config, data, state, on_log, on_sample, on_checkpoint, should_stop, print_fn, stats_out,
                     hooks):
    """spark.reduction = allreduce: the workers hold the replicas and run the loop (spark_training/allreduce.py)."""
    if hooks.before_reduce or hooks.on_request:
        raise ValueError("DFAGDHooks.before_reduce and on_request belong to spark.reduction 'star'; with "
                         "'allreduce' use wrap_source (it wraps every worker's gradient source)")
    sc = config.spark
    if print_fn:
        print_fn(f"dfagd: {sc.workers} workers x {sc.threads_per_worker} threads on {spark.sparkContext.master}; "
                 f"{config.partitions} data partitions of {len(data)} images; global batch "
                 f"{config.train.batch_size}; {config.train.n_critic + 1} all-reduces per iteration among workers")
    t0 = time.perf_counter()

    def ready(info: dict) -> None:
        if print_fn:
            layout = "per host, then across hosts" if info["hierarchical"] else "flat"
            print_fn(f"dfagd: replicas ready in {time.perf_counter() - t0:.1f}s; {info['backend']} all-reduce "
                     f"over {info['hosts']} host(s), {layout}")

    def timing(t: dict[str, float]) -> None:
        if stats_out is not None:
            stats_out.__dict__.update(iterations=int(t["iterations"]), reductions=int(t["reductions"]),
                                      compute_s=t["compute_s"], compute_cpu_s=t["compute_cpu_s"],
                                      exchange_s=t["exchange_s"], wall_s=t["compute_s"] + t["exchange_s"],
                                      reconnects=max(job.driver.attempts - 1, 0))

    job = AllReduceJob(spark, config, shard(data, config), len(data), wrap_source=hooks.wrap_source,
                       want_sample=on_sample is not None, want_checkpoint=on_checkpoint is not None,
                       on_timing=timing)
    return job.run(state, on_log=on_log, on_sample=on_sample, on_checkpoint=on_checkpoint,
                   should_stop=should_stop, print_fn=print_fn, on_ready=ready)
