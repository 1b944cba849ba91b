"""Speed without changing the math: compute layout, compile and bf16 options, buffer reuse, roofline numbers."""

import copy
import logging
import socket

import pytest
import torch

from benchmarks import roofline
from models.config import ConfigError, resolve_config
from models.data import ImageSet, load_dataset
from models.step import (
    G_PHASE,
    build_state,
    compute_nets,
    d_loss,
    draw_noise,
    flat_grad,
    get_flat,
    params_of,
    set_flat,
)
from models.trainer import LocalGradSource, train
from spark_training.dfagd import shard
from spark_training.exchange import Buffers, Message, mean_of, recv_message, send_message
from spark_training.worker import PartitionWorker

# bf16 autocast keeps 8 bits of mantissa: over 50 tiny steps the logged losses stay within this of fp32's
# (measured: at most 0.037 on loss_d ~ 7..10 and 0.047 on loss_g ~ 0..-2)
BF16_ATOL, BF16_RTOL = 0.05, 0.05


@pytest.fixture(scope="module")
def digits16():
    return load_dataset("digits", 16, 1, limit=256)


def cfg(**over):
    base = {"train.log_every": 0, "train.sample_every": 0, "train.checkpoint_every": 0, "train.steps": 3}
    return resolve_config("tiny", {**base, **over})


# -- config ---------------------------------------------------------------------------------------------------
def test_speed_fields_are_strict_and_default_to_the_exact_math():
    c = resolve_config("demo")
    assert (c.train.compile, c.train.precision) == ("off", "fp32")
    with pytest.raises(ConfigError, match=r"^train.compile: expected"):
        cfg(**{"train.compile": "fast"})
    with pytest.raises(ConfigError, match=r"^train.precision: expected"):
        cfg(**{"train.precision": "fp16"})


# -- flat vectors in logical order, whatever the memory format ------------------------------------------------
def test_flat_vectors_keep_the_logical_order_of_channels_last_weights(digits16):
    c = cfg()
    state = build_state(c)
    want_w = torch.cat([p.detach().reshape(-1) for p in params_of(state.D)])
    noise = draw_noise(0, 0, 0, 16, c.model.z_dim, 0)
    real = digits16.batch(list(range(16)))[0]
    loss, _ = d_loss(state.G, state.D, real, None, noise, c.train)
    want_g = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params_of(state.D))])

    state.G.to(memory_format=torch.channels_last)     # off by default (it changes conv summation order)
    state.D.to(memory_format=torch.channels_last)
    nets = compute_nets(state.G, state.D, c.train)
    conv = state.D.blocks[0].conv2.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    buf = torch.full_like(want_w, float("nan"))
    assert get_flat(state.D, out=buf) is buf and torch.equal(buf, want_w)
    loss, _ = d_loss(nets.G, nets.D, real, None, noise, c.train, nets.D_penalty)
    out = torch.full_like(want_g, float("nan"))
    assert flat_grad(loss, params_of(state.D), out=out) is out
    assert torch.allclose(out, want_g, atol=1e-6, rtol=1e-5)      # another conv algorithm, the same gradient
    set_flat(state.D, want_w * 2)
    assert torch.equal(get_flat(state.D), want_w * 2)


def test_reference_trainer_in_channels_last_matches_the_plain_layout(digits16):
    c = cfg()
    init = build_state(c)
    plain = copy.deepcopy(init)
    src = LocalGradSource(digits16, c)
    got = src.d_grad(init, 1, 0)[0]
    noise = draw_noise(c.train.seed, 1, 0, 16, c.model.z_dim, 0)
    real, labels = digits16.batch(src.sampler.batch_indices(1 * c.train.n_critic))
    loss, _ = d_loss(plain.G, plain.D, real, labels, noise, c.train)
    assert not plain.D.blocks[0].conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(got, flat_grad(loss, params_of(plain.D)), atol=1e-6, rtol=1e-5)


# -- compile --------------------------------------------------------------------------------------------------
def test_the_penalty_always_runs_on_the_uncompiled_critic(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: module)     # no compiling in a fast test
    c = cfg(**{"train.compile": "default"})
    state = build_state(c)
    nets = compute_nets(state.G, state.D, c.train)
    assert nets.D_penalty is state.D and nets.D is not state.D and nets.G is not state.G
    off = compute_nets(state.G, state.D, cfg().train)
    assert off.G is state.G and off.D is state.D is off.D_penalty


def test_a_failing_compile_falls_back_to_eager_with_the_reason_logged(monkeypatch, caplog, digits16):
    def broken(module, mode=None):
        def call(*args):
            raise RuntimeError("no C++ compiler found")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    c, eager = cfg(**{"train.compile": "max-autotune"}), cfg()
    with caplog.at_level(logging.WARNING, logger="models.step"):
        got = LocalGradSource(digits16, c).d_grad(build_state(c), 0, 0)[0]
    want = LocalGradSource(digits16, eager).d_grad(build_state(eager), 0, 0)[0]
    assert torch.equal(got, want)
    assert any("torch.compile failed" in r.message and "no C++ compiler found" in r.message for r in caplog.records)


@pytest.mark.slow
def test_compiled_training_equals_eager_training(digits16):
    """torch.compile for real (about 2 minutes of compiling on 2 cores): the same weights up to rounding."""
    runs = {}
    for mode in ("off", "default"):
        c = cfg(**{"train.compile": mode, "train.steps": 2})
        runs[mode] = train(build_state(c), LocalGradSource(digits16, c), print_fn=None)
    for name in ("G", "D"):
        a, b = get_flat(getattr(runs["off"], name)), get_flat(getattr(runs["default"], name))
        assert torch.allclose(a, b, atol=1e-5, rtol=0), f"{name}: {(a - b).abs().max():.3g}"


# -- bf16 -----------------------------------------------------------------------------------------------------
def _curves(digits16, steps: int, precision: str) -> list[dict[str, float]]:
    c = cfg(**{"train.steps": steps, "train.log_every": 1, "train.precision": precision})
    return train(build_state(c), LocalGradSource(digits16, c), print_fn=None).history


def _assert_close_curves(fp32, bf16):
    assert len(fp32) == len(bf16)
    for a, b in zip(fp32, bf16):
        for k in ("loss_d", "loss_g", "gradient_penalty"):
            assert abs(a[k] - b[k]) <= BF16_ATOL + BF16_RTOL * abs(a[k]), f"step {a['step']:.0f} {k}: {a[k]} vs {b[k]}"
    assert any(a["loss_d"] != b["loss_d"] for a, b in zip(fp32, bf16)), "bf16 changed nothing: autocast not applied"


def test_bf16_autocast_stays_near_fp32(digits16):
    _assert_close_curves(_curves(digits16, 3, "fp32"), _curves(digits16, 3, "bf16"))


@pytest.mark.slow
def test_bf16_loss_curve_follows_fp32_over_50_steps(digits16):
    """About 40 s here: this CPU has no native bf16 units, so autocast emulates them."""
    _assert_close_curves(_curves(digits16, 50, "fp32"), _curves(digits16, 50, "bf16"))


# -- buffers: nothing allocated per update on the exchange path -----------------------------------------------
def test_frames_are_received_in_place_into_the_connections_buffers():
    a, b = socket.socketpair()
    bufs, scratch = Buffers(), Buffers()
    ptrs = []
    for i in range(3):
        x = torch.randn(1000) + i
        send_message(a, Message("work", {"i": i}, [x]), "float32", scratch)
        got = recv_message(b, bufs).arrays[0]
        assert torch.equal(got, x)
        ptrs.append(got.data_ptr())
    assert len(set(ptrs)) == 1                           # the same slot every frame
    smaller = torch.randn(10)
    send_message(a, Message("work", {}, [smaller]), "float32")
    got = recv_message(b, bufs).arrays[0]
    assert torch.equal(got, smaller) and got.data_ptr() == ptrs[0]
    for _ in range(2):                                   # 16-bit: the send scratch and the float32 slot are reused
        x = torch.randn(500)
        send_message(a, Message("result", {}, [x]), "bfloat16", scratch)
        got = recv_message(b, bufs).arrays[0]
        assert got.dtype == torch.float32 and torch.allclose(got, x, rtol=1e-2, atol=1e-2)
        ptrs.append((got.data_ptr(), scratch.send_slot(0, 500, "bfloat16").data_ptr()))
    assert ptrs[-1] == ptrs[-2]
    a.close()
    b.close()


def test_mean_of_writes_into_the_given_buffer():
    parts = [torch.randn(50) for _ in range(3)]
    out = torch.empty(50)
    assert mean_of(parts, out=out) is out
    assert torch.equal(out, mean_of(parts))             # the same operations in the same order: bitwise equal


def test_partition_worker_sums_into_one_buffer_per_network(digits16):
    c = cfg(**{"data.partitions": 2, "spark.workers": 1})
    state = build_state(c)
    blocks = {p: ImageSet(x, y, "t") for p, (x, y) in shard(digits16, c)[0][1].items()}
    pw = PartitionWorker(c.to_dict(), len(digits16), blocks)
    pw.set_weights(get_flat(state.G), get_flat(state.D))
    d1 = pw.gradient(0, 0)[0].clone()
    ptr_d = pw.gradient(0, 0)[0].data_ptr()
    g = pw.gradient(0, G_PHASE)[0]
    assert pw.gradient(1, 0)[0].data_ptr() == ptr_d and g.data_ptr() != ptr_d
    fresh = PartitionWorker(c.to_dict(), len(digits16), blocks)
    fresh.set_weights(get_flat(state.G), get_flat(state.D))
    assert torch.equal(fresh.gradient(0, 0)[0], d1)       # reusing buffers changes no bit
    want = LocalGradSource(digits16, c).d_grad(state, 0, 0)[0]
    assert torch.allclose(d1, want, atol=1e-6, rtol=1e-4)


def test_partition_worker_computes_on_modules_assigned_later(digits16):
    """A peer that owns the replicas (DDP, all-reduce) assigns pw.G / pw.D; gradients follow the new modules."""
    c = cfg(**{"spark.workers": 1})
    blocks = {0: ImageSet(digits16.images, digits16.labels, "t")}
    pw = PartitionWorker(c.to_dict(), len(digits16), blocks)
    before = pw.gradient(0, 0)[0].clone()
    state = build_state(cfg(**{"spark.workers": 1, "train.seed": 1}))
    pw.G, pw.D = state.G, state.D
    after = pw.gradient(0, 0)[0]
    assert not torch.equal(before, after)


# -- roofline ---------------------------------------------------------------------------------------------------
def test_iteration_flops_count_every_update_and_the_double_backward(digits16):
    base = roofline.iteration_flops(cfg(), digits16)
    assert roofline.iteration_flops(cfg(**{"train.batch_size": 32}), digits16) == 2 * base
    no_penalty = roofline.iteration_flops(cfg(**{"train.penalty": "none"}), digits16)
    assert no_penalty < base * 0.9                       # tiny: the penalty (with its double backward) is 23 %
    two_critics = roofline.iteration_flops(cfg(**{"train.n_critic": 2}), digits16)
    assert base < two_critics < 2 * base                 # one more D update, the G update once


def test_peaks_and_fraction_of_peak(monkeypatch):
    assert roofline.matmul_peak(1, side=64, reps=1) > 0
    monkeypatch.setattr(roofline, "matmul_peak", lambda threads, dtype=torch.float32, **_: 10.0 * threads)
    monkeypatch.setattr(roofline, "bf16_matmul_supported", lambda device="cpu": False)
    pk = roofline.peaks([2, 1, 2])
    assert pk["fp32"] == {"1": 10.0, "2": 20.0} and pk["bf16"] is None and "native bf16" in pk["bf16_note"]
    monkeypatch.setattr(roofline, "bf16_matmul_supported", lambda device="cpu": True)
    assert roofline.peaks([1])["bf16"] == {"1": 10.0}
    assert roofline.achieved(4_000_000_000, 0.5, 16.0) == {"gflop_per_s": 8.0, "fraction_of_peak": 0.5}
    assert roofline.achieved(4_000_000_000, 0.5, None)["fraction_of_peak"] is None


def test_worker_profile_ranks_ops_per_phase(digits16):
    prof = roofline.worker_profile(cfg(**{"spark.workers": 2}), digits16, threads=1)
    assert set(prof["phases"]) == {"set_weights", "d_updates", "g_update"}
    assert prof["partitions"] == [0] and prof["batch_slice"] == 8
    top = prof["top_ops"]
    assert 1 <= len(top) <= 10 and [o["self_s"] for o in top] == sorted((o["self_s"] for o in top), reverse=True)
    assert sum(o["share"] for o in top) <= 1.0 + 1e-6
    assert any("conv" in o["op"] for o in top) and 0 < prof["conv_share"] <= 1
    lines = roofline.markdown({"roofline": {"gflop_per_iteration": 1.0, "peak_gflop_per_s": {
        "matmul_side": 2048, "fp32": {"1": 20.0}, "bf16": None, "bf16_note": "not measured"}},
        "runs": [{"mode": "dfagd", "workers": 1, "s_per_iter": 0.1, "gflop_per_s": 10.0, "fraction_of_peak": 0.5,
                  "peak_threads": 1}], "worker_profile": prof})
    assert "| dfagd-1 | 1 | 0.100 | 10.0 | 0.50 |" in lines and any(top[0]["op"] in ln for ln in lines)
