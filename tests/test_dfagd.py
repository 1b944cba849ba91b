"""DFAGD on a real local[2] Spark: equivalence with the reference trainer, progress line, task retry."""

import pytest
import torch

from models.config import resolve_config
from models.data import load_dataset
from models.step import build_state, get_flat
from models.trainer import LocalGradSource, train
from spark_training.dfagd import DFAGDHooks, DFAGDStats, train_dfagd

STEPS = 3


@pytest.fixture(scope="module")
def digits16():
    return load_dataset("digits", 16, 1, limit=256)


@pytest.fixture(scope="module")
def spark():
    from spark_training.session import spark_session

    with spark_session(cfg(2).spark, "transsrgan-tests") as session:
        yield session


def cfg(workers: int, **over):
    base = {"train.log_every": 1, "train.sample_every": 0, "train.checkpoint_every": 0, "train.steps": STEPS,
            "data.partitions": 2, "spark.workers": workers, "spark.master": "local[2]"}
    return resolve_config("tiny", {**base, **over})


@pytest.fixture(scope="module")
def reference(digits16):
    lines: list[str] = []
    state = train(build_state(cfg(1)), LocalGradSource(digits16, cfg(1)), print_fn=lines.append)
    return state, lines


def _assert_same_weights(a, b, atol=1e-5):
    for name in ("G", "D", "G_ema"):
        x, y = get_flat(getattr(a, name)), get_flat(getattr(b, name))
        assert torch.allclose(x, y, atol=atol, rtol=0), f"{name}: max diff {(x - y).abs().max():.3g}"


def test_one_and_two_workers_match_the_reference(spark, digits16, reference):
    ref, ref_lines = reference
    out = {}
    for w in (1, 2):
        lines: list[str] = []
        stats = DFAGDStats()
        out[w] = train_dfagd(cfg(w), spark=spark, data=digits16, print_fn=lines.append, stats_out=stats)
        assert out[w].step == STEPS
        assert stats.iterations == STEPS and stats.reductions == STEPS * (cfg(w).train.n_critic + 1)
        progress = [ln for ln in lines if ln.startswith("step ")]
        assert len(progress) == len(ref_lines) == STEPS
        for got, want in zip(progress, ref_lines):         # same line format; same losses to print precision
            assert got.split("|")[0] == want.split("|")[0]
            assert got.split("|")[1] == want.split("|")[1]
    _assert_same_weights(out[1], ref)
    _assert_same_weights(out[2], ref)
    _assert_same_weights(out[1], out[2], atol=0.0)          # same partitions, same order: bitwise equal


def test_augmentation_and_lazy_regularisation_match_the_reference(spark, digits16):
    """train.augment draws per sample of the global batch and train.reg_every counts D updates: DFAGD still
    reproduces the reference trainer."""
    over = {"train.augment": "color,translation,cutout", "train.reg_every": 2}
    ref = train(build_state(cfg(1, **over)), LocalGradSource(digits16, cfg(1, **over)), print_fn=None)
    out = {w: train_dfagd(cfg(w, **over), spark=spark, data=digits16, print_fn=None) for w in (1, 2)}
    _assert_same_weights(out[1], ref)
    _assert_same_weights(out[2], ref)
    _assert_same_weights(out[1], out[2], atol=0.0)


def test_class_conditional_training_matches_the_reference(spark, digits16):
    """model.num_classes > 0 (the demo on the digits): the labels travel with each worker's partitions."""
    over = {"model.num_classes": 10}
    ref = train(build_state(cfg(1, **over)), LocalGradSource(digits16, cfg(1, **over)), print_fn=None)
    out = train_dfagd(cfg(2, **over), spark=spark, data=digits16, print_fn=None)
    _assert_same_weights(out, ref)
    assert ref.G.label is not None and ref.D.label is not None


def test_callbacks_and_history_like_the_reference(spark, digits16):
    seen: list[int] = []
    state = train_dfagd(cfg(2, **{"train.steps": 2}), spark=spark, data=digits16, print_fn=None,
                        on_log=lambda s, m: seen.append(s.step))
    assert seen == [1, 2] and [h["step"] for h in state.history] == [1.0, 2.0]
    assert {"loss_d", "loss_g", "gradient_penalty", "grad_norm_d", "grad_norm_g"} <= set(state.history[-1])


@pytest.mark.slow
def test_failed_task_is_retried_and_counted_once(spark, digits16, reference):
    ref, _ = reference
    from chaos.faults import FailOnce

    stats = DFAGDStats()
    state = train_dfagd(cfg(2), spark=spark, data=digits16, print_fn=None, stats_out=stats,
                        hooks=DFAGDHooks(on_request=FailOnce(worker=1)))
    assert stats.reconnects >= 1, "the failed task did not make a worker reconnect"
    assert stats.iterations == STEPS
    _assert_same_weights(state, ref)


def test_speedup_probe_times_n_workers_and_one_side_by_side(spark, digits16, monkeypatch):
    """The probe's numbers are two real DFAGD jobs' timings (N workers, then 1), not one job's or a formula's."""
    from spark_training import speedup_probe as sp

    timed: list[tuple[int, int, int, int, float, int]] = []   # (workers, partitions, log_every, images, wall, its)
    real = sp.time_dfagd

    def spy(session, job, data, warmup, steps):
        wall, breakdown, stats = real(session, job, data, warmup, steps)
        timed.append((job.spark.workers, job.partitions, job.train.log_every, len(data), wall, stats.iterations))
        return wall, breakdown, stats

    monkeypatch.setattr(sp, "time_dfagd", spy)
    c = cfg(2, **{"train.log_every": 5})
    p = sp.speedup_probe(spark, c, digits16, steps=2)
    assert [t[:4] for t in timed] == [(2, 2, 0, 64), (1, 1, 0, 64)]   # 64 = batch 16 x (1 warm-up + 2 + 1)
    assert [t[5] for t in timed] == [2, 2]                           # each job timed exactly its 2 iterations
    wall_n, wall_1 = timed[0][4], timed[1][4]
    assert (p["dfagd_s_per_iter"], p["dfagd_1_worker_s_per_iter"]) == (wall_n / 2, wall_1 / 2)
    assert p["speedup_vs_1_worker"] == pytest.approx(wall_1 / wall_n)
    assert p["efficiency"] == pytest.approx(wall_1 / wall_n / 2)


def test_time_dfagd_times_allreduce_between_rank0s_log_lines(spark, digits16):
    """spark.reduction=allreduce is timed on its own path (rank 0 runs the loop): exactly the timed iterations'
    reductions, with rank 0's compute and all-reduce time, not a star job's."""
    from spark_training.speedup_probe import time_dfagd

    c = cfg(2, **{"spark.reduction": "allreduce", "train.log_every": 5})
    marks: list[str] = []
    wall, breakdown, stats = time_dfagd(spark, c, digits16, 1, 3, on_mark=marks.append)
    assert marks == ["start", "end"]                  # bench cluster reads its byte counters there
    assert stats.iterations == 3
    assert stats.reductions == 3 * (c.train.n_critic + 1)
    assert stats.bytes_sent == 0                      # nothing went through the driver's reduction server
    assert wall > 0 and breakdown["compute_s"] > 0 and breakdown["exchange_s"] > 0
    exact = stats.breakdown(wall)                     # the reported breakdown is this, rounded to 0.1 ms
    assert breakdown == {k: round(v, 4) for k, v in exact.items()}
    assert exact["compute_s"] + exact["exchange_s"] + exact["scheduling_s"] == pytest.approx(wall / 3, rel=1e-9)
