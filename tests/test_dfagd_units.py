"""DFAGD's pure pieces without Spark: wire protocol, averaging, per-partition math, reconnects, cost model."""

import math
import socket
import threading
import time

import pytest
import torch

from models.config import ConfigError, SparkConfig, resolve_config
from models.data import load_dataset
from models.step import G_PHASE, build_state, get_flat
from models.trainer import LocalGradSource, train
from spark_training.cost_model import CostModel, Measurement, bytes_per_worker, fit, predict_grid
from spark_training.dfagd import SparkGradSource, shard, validate_dfagd
from spark_training.exchange import Message, ProtocolError, mean_of, recv_message, send_message
from spark_training.reduction import ReductionServer
from spark_training.session import check_settings
from spark_training.worker import InjectedFailure, PartitionWorker, WorkerSpec, owned_partitions, serve


@pytest.fixture(scope="module")
def digits16():
    return load_dataset("digits", 16, 1, limit=256)


def cfg(**over):
    base = {"train.log_every": 0, "train.sample_every": 0, "train.checkpoint_every": 0, "train.steps": 3,
            "spark.master": "local[2]"}
    return resolve_config("tiny", {**base, **over})


# -- wire protocol ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,tol", [("float32", 0.0), ("bfloat16", 1e-2), ("float16", 1e-3)])
def test_message_round_trip(dtype, tol):
    a, b = socket.socketpair()
    x, y = torch.randn(1000), torch.randn(7)
    send_message(a, Message("result", {"step": 3, "phase": G_PHASE, "stats": {"loss_d": 1.5}}, [x, y]), dtype)
    msg = recv_message(b)
    assert msg.kind == "result" and msg.meta == {"step": 3, "phase": G_PHASE, "stats": {"loss_d": 1.5}}
    assert [t.dtype for t in msg.arrays] == [torch.float32, torch.float32]
    for got, want in zip(msg.arrays, (x, y)):
        assert got.shape == want.shape
        assert torch.allclose(got, want, rtol=tol, atol=tol) if tol else torch.equal(got, want)
    a.close()
    with pytest.raises(ProtocolError):
        recv_message(b)
    b.close()


def test_mean_of_equals_global_mean_for_equal_slices():
    parts = [torch.randn(50) for _ in range(4)]
    assert torch.allclose(mean_of(parts), torch.stack(parts).mean(0), atol=1e-6)
    with pytest.raises(ValueError):
        mean_of([])


def test_owned_partitions_cover_all_once():
    assert [owned_partitions(w, 2, 4) for w in range(2)] == [[0, 1], [2, 3]]
    assert sum((owned_partitions(w, 3, 6) for w in range(3)), []) == list(range(6))


# -- per-partition math ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("phase", [0, G_PHASE])
def test_partition_average_matches_global_batch_gradient(digits16, phase):
    c = cfg(**{"data.partitions": 2, "spark.workers": 2})
    state = build_state(c)
    ref = LocalGradSource(digits16, c)
    want = (ref.d_grad(state, 2, 0) if phase == 0 else ref.g_grad(state, 2))[0]
    blocks = {w: parts for w, parts in shard(digits16, c)}
    grads = []
    for w in range(2):
        from models.data import ImageSet

        pw = PartitionWorker(c.to_dict(), len(digits16),
                             {p: ImageSet(x, y, "t") for p, (x, y) in blocks[w].items()})
        pw.set_weights(get_flat(state.G), get_flat(state.D))
        grads.append(pw.gradient(2, phase)[0])
    assert torch.allclose(mean_of(grads), want, atol=1e-6, rtol=1e-4)


# -- reduction server with thread workers (what Spark's stage retry does, without Spark) ---------------------
def _thread_dfagd(c, data, fail: int = -1):
    from models.data import ImageSet

    server = ReductionServer("127.0.0.1", c.spark.workers, c.spark.exchange_dtype)
    spec = WorkerSpec(c.to_dict(), "127.0.0.1", server.port, len(data), c.spark.workers, fail_once_partition=fail)
    blocks = {w: {p: ImageSet(x, y, "t") for p, (x, y) in parts.items()} for w, parts in shard(data, c)}
    errors: list[BaseException] = []

    def run(w: int) -> None:
        while True:                      # a failed task is re-run, as Spark re-runs the barrier stage
            try:
                serve(spec, w, blocks[w], torch.get_num_threads())
                return
            except InjectedFailure:
                continue
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                return

    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in range(c.spark.workers)]
    for t in threads:
        t.start()
    source = SparkGradSource(server)
    try:
        server.wait_for_workers()
        state = train(build_state(c), source, print_fn=None)
    finally:
        server.stop()
        for t in threads:
            t.join(timeout=30)
    assert not errors
    return state, server, source


def test_reconnecting_worker_is_counted_once(digits16):
    c = cfg(**{"spark.workers": 2, "data.partitions": 2})
    ref = train(build_state(c), LocalGradSource(digits16, c), print_fn=None)
    state, server, source = _thread_dfagd(c, digits16, fail=1)
    assert server.hellos == {0: 1, 1: 2}             # worker 1 connected twice
    assert source.stats.reconnects == 1 and source.stats.iterations == 3
    assert torch.allclose(get_flat(state.G), get_flat(ref.G), atol=1e-5)
    assert torch.allclose(get_flat(state.D), get_flat(ref.D), atol=1e-5)


def test_bf16_exchange_halves_gradient_bytes_and_stays_close(digits16):
    c32 = cfg(**{"spark.workers": 2})
    c16 = cfg(**{"spark.workers": 2, "spark.exchange_dtype": "bfloat16"})
    s32, _, src32 = _thread_dfagd(c32, digits16)
    s16, _, src16 = _thread_dfagd(c16, digits16)
    assert src16.stats.bytes_received * 2 == src32.stats.bytes_received
    assert src16.stats.bytes_sent == src32.stats.bytes_sent       # weights always travel in float32
    assert torch.allclose(get_flat(s16.G), get_flat(s32.G), atol=2e-3)


# -- settings ------------------------------------------------------------------------------------------------
def test_bad_settings_name_the_setting():
    with pytest.raises(ConfigError, match="spark.workers"):
        cfg(**{"spark.workers": 0})
    with pytest.raises(ConfigError, match="train.batch_size"):
        cfg(**{"spark.workers": 3})                  # tiny batch 16 does not split in 3
    with pytest.raises(ConfigError, match="spark.workers"):
        check_settings(SparkConfig(master="local[2]", workers=4))
    with pytest.raises(ConfigError, match="spark.master"):
        check_settings(SparkConfig(master="locl[2]"))
    with pytest.raises(ConfigError, match="spark.sync_every"):
        validate_dfagd(cfg(**{"spark.sync_every": 2}))


def test_unreachable_master_fails_fast():
    with socket.socket() as s:                       # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="spark.master"):
        check_settings(SparkConfig(master=f"spark://127.0.0.1:{port}", connect_timeout_s=2))
    assert time.perf_counter() - t0 < 5


def test_oversubscription_warns():
    import os

    with pytest.warns(UserWarning, match="oversubscribe"):
        check_settings(SparkConfig(master="local[2]", workers=2, threads_per_worker=(os.cpu_count() or 1)))


# -- cost model ----------------------------------------------------------------------------------------------
def test_cost_model_fit_recovers_parameters_and_scales_sensibly():
    true = CostModel(64, 3, 45e6, c0=0.2, c_img=0.1, x0=0.01, x1=0.02, s0=0.05, s1=0.03)
    ms = []
    for n in (1, 2, 4):
        comp = true.c0 + true.c_img * 64 / n
        ms.append(Measurement(n, comp, true.x0 + true.x1 * n, true.s0 + true.s1 * math.log2(n)))
    got = fit(ms, 64, 3, 45e6)
    for k in ("c0", "c_img", "x0", "x1", "s0", "s1"):
        assert getattr(got, k) == pytest.approx(getattr(true, k), abs=1e-9)
    preds = {(p["executors"], p["network_gbit"]): p for p in predict_grid(got)}
    assert set(preds) == {(n, g) for n in (8, 32, 128) for g in (1, 10)}
    for n in (8, 32, 128):
        assert preds[(n, 10)]["speedup"] >= preds[(n, 1)]["speedup"]
        assert 0 < preds[(n, 10)]["efficiency"] <= 1
    assert preds[(8, 10)]["efficiency"] >= preds[(128, 10)]["efficiency"]
    assert got.assumptions() and got.predict(1, 10)["speedup"] == pytest.approx(1.0)


def test_bytes_per_worker_counts_weights_out_and_gradients_back():
    assert bytes_per_worker(10, 5, 2) == (10 + 2 * 5) * 8
    assert bytes_per_worker(10, 5, 2, "bfloat16") == (10 + 2 * 5) * 6
