"""Seconds per DFAGD iteration of one config, timed in one barrier job: the unit of the speed-up ratios.

`time_dfagd` runs a throwaway GANState for `warmup` untimed and `steps` timed iterations (the benchmark's (b)
and (c)). `speedup_probe` times a training config with its N workers and with 1 worker, side by side on the
same Spark session and a small slice of the data, so that every training run logs `speedup_vs_1_worker` and
`efficiency` measured on its own model, global batch and cluster (the full comparison with plain PyTorch and
DDP is `transsrgan bench speedup`).
"""

import dataclasses
import time
from typing import Any

from models.config import Config
from models.data import ImageSet
from models.step import build_state
from models.trainer import train
from spark_training.dfagd import DFAGDJob, validate_dfagd


def time_dfagd(spark, cfg: Config, data: ImageSet, warmup: int, steps: int) -> tuple[float, dict[str, float], Any]:
    """One long-lived DFAGD job on a fresh state; returns (seconds for `steps`, breakdown per iteration, stats)."""
    validate_dfagd(cfg)
    state = build_state(cfg)
    with DFAGDJob(spark, cfg, data) as source:
        train(state, source, steps=warmup, print_fn=None)
        source.stats.reset()
        t0 = time.perf_counter()
        train(state, source, steps=warmup + steps, print_fn=None)
        wall = time.perf_counter() - t0
        stats = source.stats
    return wall, {k: round(v, 4) for k, v in stats.breakdown(wall).items()}, stats


def probe_config(config: Config, steps: int, *, single: bool) -> Config:
    """`config` for a timing job: no logging, samples, checkpoints or test hooks; `single`: one worker holding
    one data partition (the same model, global batch and Spark settings otherwise)."""
    quiet = dataclasses.replace(config.train, steps=steps, log_every=0, sample_every=0, checkpoint_every=0,
                                chaos_nan_steps="")
    data = dataclasses.replace(config.data, partitions=1) if single else config.data
    spark = dataclasses.replace(config.spark, workers=1 if single else config.spark.workers,
                                fail_once_partition=-1, chaos_kill="")
    return dataclasses.replace(config, train=quiet, data=data, spark=spark)


def speedup_probe(spark, config: Config, data: ImageSet, steps: int, warmup: int = 1) -> dict[str, float]:
    """DFAGD s/iter with config.spark.workers and with 1 worker, and their ratios, on a slice of `data`.

    The slice holds what `warmup + steps` iterations read (speed does not depend on the dataset's size), so the
    1-worker job does not ship the whole dataset to one executor.
    """
    tc = config.train
    need = max(tc.batch_size * tc.n_critic * (warmup + steps + 1), config.partitions)
    part = ImageSet(data.images[:need], data.labels[:need] if data.labels is not None else None, data.source)
    n = config.spark.workers
    wall_n, _, _ = time_dfagd(spark, probe_config(config, warmup + steps, single=False), part, warmup, steps)
    wall_1, _, _ = time_dfagd(spark, probe_config(config, warmup + steps, single=True), part, warmup, steps)
    speedup = wall_1 / wall_n
    return {"dfagd_s_per_iter": wall_n / steps, "dfagd_1_worker_s_per_iter": wall_1 / steps,
            "speedup_vs_1_worker": speedup, "efficiency": speedup / n}
