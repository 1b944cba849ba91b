"""DFAGD's pure pieces without Spark: wire protocol, averaging, per-partition math, reconnects, cost model."""

import math
import re
import socket
import threading

import pytest
import torch

from benchmarks.cost_model import Measurement, bytes_per_worker, fit, predict_grid
from models.config import ConfigError, SparkConfig, resolve_config
from models.data import load_dataset
from models.step import G_PHASE, build_state, get_flat
from models.trainer import LocalGradSource, train
from spark_training.dfagd import SparkGradSource, shard, validate_dfagd
from spark_training.exchange import Message, ProtocolError, mean_of, recv_message, send_message
from spark_training.reduction import ReductionServer
from spark_training.session import check_settings
from spark_training.worker import PartitionWorker, WorkerSpec, owned_partitions, serve


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
    from chaos.faults import FailOnce, TaskFailure
    from models.data import ImageSet

    server = ReductionServer("127.0.0.1", c.spark.workers, c.spark.exchange_dtype)
    spec = WorkerSpec(c.to_dict(), "127.0.0.1", server.port, len(data), c.spark.workers,
                      on_request=FailOnce(fail) if fail >= 0 else None)
    blocks = {w: {p: ImageSet(x, y, "t") for p, (x, y) in parts.items()} for w, parts in shard(data, c)}
    errors: list[BaseException] = []

    def run(w: int) -> None:
        while True:                      # a failed task is re-run, as Spark re-runs the barrier stage
            try:
                serve(spec, w, blocks[w], torch.get_num_threads())
                return
            except TaskFailure:
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


def test_reductions_reuse_the_servers_buffers(digits16, monkeypatch):
    """After the first iteration no reduction allocates: the mean lands in the server's buffer for its network
    and each worker's gradient in its connection's receive slot (grown once, to G's size)."""
    c = cfg(**{"spark.workers": 2, "data.partitions": 2})
    seen: list[set[int]] = []                            # per reduction: the memory it used
    real_reduce = ReductionServer.reduce

    def spy(self, step, phase, g, d):
        grad, stats, timing = real_reduce(self, step, phase, g, d)
        seen.append({grad.data_ptr()} | {torch.frombuffer(conn.buffers.recv_slot(0, 4), dtype=torch.uint8).data_ptr()
                                         for conn in self.conns.values()})
        return grad, stats, timing

    monkeypatch.setattr(ReductionServer, "reduce", spy)
    state, _, source = _thread_dfagd(c, digits16)
    per_iteration = c.train.n_critic + 1
    assert source.stats.reductions == len(seen) == 3 * per_iteration
    first = set().union(*seen[:per_iteration])
    assert set().union(*seen[per_iteration:]) <= first
    assert len(set().union(*seen[-per_iteration:])) == 2 + 2     # a mean per network, a slot per worker
    ref = train(build_state(c), LocalGradSource(digits16, c), print_fn=None)
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


@pytest.mark.parametrize("key,value,expected", [
    ("spark.bucket_mb", -1, r"expected > 0\.0, got -1$"),
    ("spark.bucket_mb", 0, r"expected > 0\.0, got 0$"),
    ("spark.bucket_mb", "big", r"expected a number, got 'big'$"),
    ("spark.bucket_mb", float("inf"), r"expected a finite number, got inf$"),
    ("spark.overlap", "yes", r"expected true or false, got 'yes'$"),
    ("spark.overlap", 1, r"expected true or false, got 1$"),
])
def test_bad_all_reduce_settings_get_one_line_naming_the_setting(key, value, expected):
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}: {expected}") as err:
        cfg(**{key: value})
    assert "\n" not in str(err.value)


def test_unreachable_master_fails_fast(monkeypatch):
    """The check connects once, bounded by spark.connect_timeout_s, and names the setting when nobody answers."""
    with socket.socket() as s:                       # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    calls = []
    real = socket.create_connection
    monkeypatch.setattr(socket, "create_connection", lambda addr, timeout=None: calls.append((addr, timeout))
                        or real(addr, timeout=timeout))
    with pytest.raises(ConfigError, match=r"spark.master: cannot reach .* within 2 s \(spark.connect_timeout_s\)"):
        check_settings(SparkConfig(master=f"spark://127.0.0.1:{port}", connect_timeout_s=2))
    assert calls == [(("127.0.0.1", port), 2)]


def test_oversubscription_warns():
    import os

    with pytest.warns(UserWarning, match="oversubscribe"):
        check_settings(SparkConfig(master="local[2]", workers=2, threads_per_worker=(os.cpu_count() or 1)))


# -- cost model ----------------------------------------------------------------------------------------------
# Measured per-iteration breakdowns (s) of `bench speedup --preset demo --workers 1,2 --steps 20` (docs/dfagd.md):
# global batch 32, 3 reductions per iteration, 13.4 MB per worker.
DEMO_RUNS = [Measurement(1, compute_s=0.640, exchange_s=0.008, scheduling_s=0.016),
             Measurement(2, compute_s=0.320, exchange_s=0.014, scheduling_s=0.013)]


def test_cost_model_fit_on_measured_runs():
    got = fit(DEMO_RUNS, 32, 3, 13.4e6)
    # by hand: compute halves with half the images -> 0.02 s/image, no intercept; exchange 0.008 -> 0.014 is
    # 0.002 + 0.006 N; scheduling fell (0.016 -> 0.013): a negative slope is noise, so s1 = 0, s0 = the mean
    assert got.c_img == pytest.approx(0.02) and got.c0 == pytest.approx(0.0, abs=1e-12) and got.c0 >= 0
    assert (got.x0, got.x1) == (pytest.approx(0.002), pytest.approx(0.006))
    assert (got.s0, got.s1) == (pytest.approx(0.0145), 0.0)
    # fitted s/iter 0.6625 and 0.3485 against measured 0.664 and 0.347: 0.0015 s off each way
    assert got.residual_s == pytest.approx(0.0015)
    assert any("residual" in a for a in got.assumptions())
    preds = {(p["executors"], p["network_gbit"]): p for p in predict_grid(got)}
    assert set(preds) == {(n, g) for n in (8, 32, 128) for g in (1, 10)}
    for n in (8, 32, 128):
        assert preds[(n, 10)]["speedup"] >= preds[(n, 1)]["speedup"]      # a faster link never hurts
    assert got.predict(1, 10)["speedup"] == pytest.approx(1.0)


def test_cost_model_clamps_a_negative_compute_intercept():
    # superlinear: 2 workers took less than half (cache effects); the line 0.02125 x - 0.04 would say that a
    # worker with no images computes for -0.04 s. Clamped: through the origin, c_img = (32*0.64 + 16*0.30) /
    # (32^2 + 16^2) = 0.01975.
    runs = [Measurement(1, 0.640, 0.0, 0.0), Measurement(2, 0.300, 0.0, 0.0)]
    got = fit(runs, 32, 3, 1e6)
    assert got.c0 == 0.0 and got.c_img == pytest.approx(0.01975)
    assert got.residual_s == pytest.approx(math.sqrt(((0.632 - 0.640) ** 2 + (0.316 - 0.300) ** 2) / 2))


def test_cost_model_fits_cpu_time_when_measured():
    # a shared machine (docs/dfagd.md, run 3): wall-clock compute grew with 2 workers, their CPU time halved
    runs = [Measurement(1, 1.45, 0.02, 0.03, compute_cpu_s=1.17), Measurement(2, 1.90, 0.02, 0.03, compute_cpu_s=0.60)]
    got = fit(runs, 32, 3, 1e6)
    assert got.c_img == pytest.approx(0.57 / 16) and got.c0 == pytest.approx(0.03)


def test_bytes_per_worker_counts_weights_out_and_gradients_back():
    assert bytes_per_worker(10, 5, 2) == (10 + 2 * 5) * 8
    assert bytes_per_worker(10, 5, 2, "bfloat16") == (10 + 2 * 5) * 6


# -- speed-up probe (its timed jobs faked: the Spark runs are in test_dfagd.py) ------------------------------
def _fake_jobs(monkeypatch, walls: dict[int, float]) -> list[tuple[int, int, int, int]]:
    """time_dfagd answers walls[workers] seconds; returns the (workers, partitions, images, steps) it was asked."""
    from spark_training import speedup_probe as sp

    asked: list[tuple[int, int, int, int]] = []

    def fake(session, job, data, warmup, steps):
        asked.append((job.spark.workers, job.partitions, len(data), steps))
        return walls[job.spark.workers], {}, None

    monkeypatch.setattr(sp, "time_dfagd", fake)
    return asked


def test_speedup_probe_reports_the_two_jobs_timings(monkeypatch, digits16):
    from spark_training.speedup_probe import speedup_probe

    asked = _fake_jobs(monkeypatch, {2: 1.0, 1: 1.6})             # 4 iterations each: 0.25 and 0.4 s/iter
    p = speedup_probe(None, cfg(**{"spark.workers": 2}), digits16, steps=4)
    assert asked == [(2, 2, 96, 4), (1, 1, 96, 4)]                 # 96 = batch 16 x (1 warm-up + 4 + 1)
    assert p == {"dfagd_s_per_iter": 0.25, "dfagd_1_worker_s_per_iter": 0.4, "speedup_vs_1_worker": 1.6,
                 "efficiency": 0.8}
    with pytest.raises(ValueError, match="steps"):
        speedup_probe(None, cfg(**{"spark.workers": 2}), digits16, steps=0)


def test_measure_speedup_runs_on_a_session_of_its_own(monkeypatch):
    import contextlib

    from spark_training import speedup_probe as sp

    sessions: list[str] = []

    @contextlib.contextmanager
    def fake_session(spark_cfg, app_name):
        sessions.append(f"start {spark_cfg.master}")
        yield "session"
        sessions.append("stop")

    monkeypatch.setattr(sp, "spark_session", fake_session)
    asked = _fake_jobs(monkeypatch, {2: 3.0, 1: 4.5})
    c = cfg(**{"spark.workers": 2, "spark.speedup_probe_steps": 3})
    p = sp.measure_speedup(c)                                       # loads only the 80 images the probe reads
    assert sessions == ["start local[2]", "stop"] and asked == [(2, 2, 80, 3), (1, 1, 80, 3)]
    assert p["speedup_vs_1_worker"] == 1.5 and p["dfagd_s_per_iter"] == 1.0
    assert sp.measure_speedup(cfg(**{"spark.workers": 1})) == {}             # nothing to compare: no session
    assert sp.measure_speedup(c.updated({"spark.speedup_probe_steps": 0})) == {}
    assert sessions == ["start local[2]", "stop"]
