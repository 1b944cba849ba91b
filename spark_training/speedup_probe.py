"""DFAGD's speed-up over 1 worker for one training config: its own step, timed before (not inside) training.

`time_dfagd` runs a throwaway GANState for `warmup` untimed and `steps` timed iterations in one barrier job (the
unit every speed-up ratio is built from; `transsrgan bench speedup` times its runs with it too). `speedup_probe`
times a config with its N workers and with 1 worker, side by side on one Spark session and a small slice of the
data, so that a training run can log `speedup_vs_1_worker` and `efficiency` measured on its own model, global
batch and cluster. `measure_speedup` does the same on a session of its own.
"""

import time
from collections.abc import Callable
from typing import Any

from models.config import Config
from models.data import ImageSet, load_dataset
from models.step import build_state
from models.trainer import train
from spark_training.dfagd import DFAGDJob, DFAGDStats, train_dfagd, validate_dfagd
from spark_training.session import spark_session

__all__ = ["time_dfagd", "probe_config", "speedup_probe", "measure_speedup"]


def time_dfagd(spark: Any, cfg: Config, data: ImageSet, warmup: int, steps: int,
               on_mark: Callable[[str], None] | None = None) -> tuple[float, dict[str, float], DFAGDStats]:
    """One long-lived DFAGD job on a fresh state; returns (seconds for `steps`, breakdown per iteration, stats of
    the timed iterations).

    spark.reduction decides what is timed: `star` through the driver, `allreduce` among the workers' replicas.
    on_mark("start") and on_mark("end") are called right at the two clock readings (e.g. to read byte counters)."""
    validate_dfagd(cfg)
    mark = on_mark or (lambda _name: None)
    if cfg.spark.reduction == "allreduce":
        return _time_allreduce(spark, cfg, data, warmup, steps, mark)
    state = build_state(cfg)
    with DFAGDJob(spark, cfg, data) as source:
        train(state, source, steps=warmup, print_fn=None)
        source.stats.reset()
        mark("start")
        t0 = time.perf_counter()
        train(state, source, steps=warmup + steps, print_fn=None)
        wall = time.perf_counter() - t0
        mark("end")
        stats = source.stats
    return wall, {k: round(v, 4) for k, v in stats.breakdown(wall).items()}, stats


def _time_allreduce(spark: Any, cfg: Config, data: ImageSet, warmup: int, steps: int,
                    mark: Callable[[str], None]) -> tuple[float, dict[str, float], DFAGDStats]:
    """time_dfagd for spark.reduction=allreduce: rank 0 runs the loop, so the clock is the driver's receipt of rank
    0's log lines at the last warm-up step and at the last step (one log per step; the relay is off rank 0's
    critical path), and the breakdown is rank 0's cumulative timing between those two lines."""
    warmup = max(warmup, 1)            # the first log line marks the start: the job's start-up stays untimed
    cfg = cfg.updated({"train.steps": warmup + steps, "train.log_every": 1})
    stats = DFAGDStats()
    marks: dict[int, tuple[float, dict[str, Any]]] = {}

    def on_log(state: Any, _metrics: dict[str, float]) -> None:
        if state.step in (warmup, warmup + steps):
            marks[state.step] = (time.perf_counter(), dict(stats.__dict__))
            mark("start" if state.step == warmup else "end")

    train_dfagd(cfg, state=build_state(cfg), spark=spark, data=data, print_fn=None, stats_out=stats, on_log=on_log)
    if len(marks) != 2:
        raise RuntimeError(f"time_dfagd: rank 0 relayed no log line for step(s) "
                           f"{sorted({warmup, warmup + steps} - set(marks))}")
    (t0, first), (t1, last) = marks[warmup], marks[warmup + steps]
    window = DFAGDStats(**{k: last[k] - first[k] for k in last})
    wall = t1 - t0
    return wall, {k: round(v, 4) for k, v in window.breakdown(wall).items()}, window


def probe_config(config: Config, steps: int, *, single: bool) -> Config:
    """`config` for a timing job: no logging, samples or checkpoints; `single`: one worker holding one data
    partition (the same model, global batch and Spark settings otherwise)."""
    over: dict[str, Any] = {"train.steps": steps, "train.log_every": 0, "train.sample_every": 0,
                            "train.checkpoint_every": 0}
    if single:
        over.update({"spark.workers": 1, "data.partitions": 1})
    return config.updated(over)


def probe_images(config: Config, steps: int, warmup: int = 1) -> int:
    """Images the probe reads: what `warmup + steps` iterations draw (+1 for slack), at least one per partition.
    Speed does not depend on the dataset's size, so the 1-worker job need not hold the whole dataset."""
    tc = config.train
    return max(tc.batch_size * tc.n_critic * (warmup + steps + 1), config.partitions)


def speedup_probe(spark: Any, config: Config, data: ImageSet, steps: int, warmup: int = 1) -> dict[str, float]:
    """DFAGD s/iter with config.spark.workers and with 1 worker, and their ratios, on a slice of `data`."""
    if steps < 1:
        raise ValueError(f"steps: expected >= 1 timed iterations, got {steps}")
    need = probe_images(config, steps, warmup)
    part = ImageSet(data.images[:need], data.labels[:need] if data.labels is not None else None, data.source)
    wall_n, _, _ = time_dfagd(spark, probe_config(config, warmup + steps, single=False), part, warmup, steps)
    wall_1, _, _ = time_dfagd(spark, probe_config(config, warmup + steps, single=True), part, warmup, steps)
    speedup = wall_1 / wall_n          # same global batch and iterations: the throughput ratio
    return {"dfagd_s_per_iter": wall_n / steps, "dfagd_1_worker_s_per_iter": wall_1 / steps,
            "speedup_vs_1_worker": speedup, "efficiency": speedup / config.spark.workers}


def measure_speedup(config: Config, data: ImageSet | None = None) -> dict[str, float]:
    """speedup_probe for `config.spark.speedup_probe_steps` iterations on a SparkSession built from config.spark
    and stopped afterwards; {} when there is nothing to compare (1 worker, or the probe set to 0 steps).

    data: an already-loaded dataset (default: the probe's slice of config.data.source, loaded on the driver).
    """
    steps = config.spark.speedup_probe_steps
    if config.spark.workers < 2 or steps < 1:
        return {}
    validate_dfagd(config)
    if data is None:
        need = probe_images(config, steps)
        limit = min(config.data.limit, need) if config.data.limit else need
        data = load_dataset(config.data.source, config.model.resolution, config.model.channels, limit)
    with spark_session(config.spark, "transsrgan-speedup-probe") as spark:
        return speedup_probe(spark, config, data, steps)
