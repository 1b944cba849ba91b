"""Roofline numbers for `bench speedup`: FLOPs of one iteration, this machine's matmul peak, a worker's profile."""

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from models.config import Config
from models.data import ImageSet, partition_bounds
from models.step import G_PHASE, build_state, get_flat
from models.trainer import LocalGradSource, train_iteration
from spark_training.worker import PartitionWorker, owned_partitions

FLOPS_COUNTED = ("torch.utils.flop_counter.FlopCounterMode on the reference trainer: matrix multiplies and "
                 "convolutions, forward and backward, the gradient penalty's double backward included; "
                 "elementwise ops, norms and the optimizer step are not counted")
PEAK_SIDE = 2048            # the square matmul whose best time defines peak FLOP/s
CONV_OPS = ("convolution", "conv2d")


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class _GlobalScope:
    """Stands in for FlopCounterMode's module tracker: its backward hooks fail on autograd.grad with respect to a
    leaf input, which is how the gradient penalty differentiates D; totals need no per-module attribution."""

    parents = frozenset({"Global"})

    def __enter__(self) -> "_GlobalScope":
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


def iteration_flops(config: Config, data: ImageSet) -> int:
    """FLOPs of one full iteration (n_critic D updates with the penalty, one G update) at the global batch.

    Counted on the eager fp32 math (compiled or bf16 runs do the same FLOPs), from a fresh state.
    """
    cfg = config.updated({"train.compile": "off", "train.precision": "fp32"})
    state, source = build_state(cfg), LocalGradSource(data, cfg)
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalScope()
    with counter:
        train_iteration(state, source)
    return int(counter.get_total_flops())


def bf16_matmul_supported(device: str = "cpu") -> bool:
    """Whether bf16 matmuls run on native units here (oneDNN's check on CPU; any CUDA device counts)."""
    if device.startswith("cuda"):
        return torch.cuda.is_available()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def matmul_peak(threads: int, dtype: torch.dtype = torch.float32, side: int = PEAK_SIDE, reps: int = 5) -> float:
    """Best GFLOP/s of a side x side matmul on `threads` torch threads (2 side^3 FLOPs each), after one warm-up."""
    with torch_threads(threads), torch.no_grad():
        a = torch.randn(side, side).to(dtype)
        b = torch.randn(side, side).to(dtype)
        a @ b
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    return 2 * side ** 3 / best / 1e9


def peaks(threads: list[int]) -> dict[str, Any]:
    """{"fp32": {threads: GFLOP/s}, "bf16": {threads: GFLOP/s} or None, "bf16_note": why not measured}."""
    ts = sorted(set(threads))
    out: dict[str, Any] = {"matmul_side": PEAK_SIDE,
                           "fp32": {str(t): round(matmul_peak(t), 1) for t in ts}, "bf16": None, "bf16_note": ""}
    if bf16_matmul_supported():
        out["bf16"] = {str(t): round(matmul_peak(t, torch.bfloat16), 1) for t in ts}
    else:
        out["bf16_note"] = ("not measured: this CPU has no native bf16 matrix units (oneDNN reports none), so "
                            "bf16 matmuls are emulated and far slower than fp32")
    return out


def achieved(flops: int, s_per_iter: float, peak_gflops: float | None) -> dict[str, float | None]:
    """GFLOP/s of a run and its fraction of the peak of the threads it used."""
    rate = flops / s_per_iter / 1e9
    return {"gflop_per_s": round(rate, 2),
            "fraction_of_peak": round(rate / peak_gflops, 3) if peak_gflops else None}


def _ops(prof: profile) -> dict[str, tuple[float, int]]:
    """{op name: (self CPU seconds, calls)} of one profiler session."""
    return {e.key: (e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages()}


def worker_profile(config: Config, data: ImageSet, threads: int, top: int = 10) -> dict[str, Any]:
    """torch.profiler over one iteration of DFAGD worker 0 (its partitions of config.spark.workers), per phase:
    receiving weights into the replicas, the n_critic D gradients, the G gradient. One warm-up iteration first."""
    cfg, workers = config, config.spark.workers
    bounds = partition_bounds(len(data), cfg.partitions)
    blocks = {p: ImageSet(data.images[a:b], data.labels[a:b] if data.labels is not None else None, "profile")
              for p, (a, b) in enumerate(bounds) if p in owned_partitions(0, workers, cfg.partitions)}
    pw = PartitionWorker(cfg.to_dict(), len(data), blocks, "cpu")
    state = build_state(cfg)
    g, d = get_flat(state.G), get_flat(state.D)
    n_critic = cfg.train.n_critic
    phases = {"set_weights": lambda step: pw.set_weights(g, d),
              "d_updates": lambda step: [pw.gradient(step, k) for k in range(n_critic)],
              "g_update": lambda step: pw.gradient(step, G_PHASE)}
    out: dict[str, Any] = {"worker": 0, "threads": threads, "partitions": sorted(blocks),
                           "batch_slice": pw.b * len(blocks), "phases": {}}
    total: dict[str, list[float]] = {}
    with torch_threads(threads):
        for run in phases.values():
            run(0)
        for name, run in phases.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                t0 = time.perf_counter()
                run(1)
                wall = time.perf_counter() - t0
            ops = _ops(prof)
            out["phases"][name] = {"wall_s": round(wall, 4), "top_ops": _top(ops, 5)}
            for op, (s, calls) in ops.items():
                acc = total.setdefault(op, [0.0, 0])
                acc[0] += s
                acc[1] += calls
    merged = {op: (s, int(c)) for op, (s, c) in total.items()}
    self_s = sum(s for s, _ in merged.values())
    out["self_cpu_s"] = round(self_s, 4)
    out["top_ops"] = _top(merged, top, self_s)
    out["conv_share"] = round(sum(s for op, (s, _) in merged.items() if any(c in op for c in CONV_OPS))
                              / max(self_s, 1e-12), 3)
    return out


def _top(ops: dict[str, tuple[float, int]], n: int, total: float | None = None) -> list[dict[str, Any]]:
    total = sum(s for s, _ in ops.values()) if total is None else total
    ranked = sorted(ops.items(), key=lambda kv: -kv[1][0])[:n]
    return [{"op": op, "self_s": round(s, 4), "calls": calls, "share": round(s / max(total, 1e-12), 3)}
            for op, (s, calls) in ranked]


def markdown(result: dict[str, Any]) -> list[str]:
    """The roofline table and the worker profile as Markdown lines (empty when the result has none)."""
    roof = result.get("roofline")
    if not roof:
        return []
    pk = roof["peak_gflop_per_s"]
    bf16 = (", bf16 " + ", ".join(f"{v:g} ({t} threads)" for t, v in pk["bf16"].items())) if pk["bf16"] else ""
    lines = ["", f"Roofline: {roof['gflop_per_iteration']:.2f} GFLOP per iteration ({FLOPS_COUNTED}). Peak of a "
             f"{pk['matmul_side']}x{pk['matmul_side']} matmul: fp32 "
             + ", ".join(f"{v:g} GFLOP/s ({t} threads)" for t, v in pk["fp32"].items()) + bf16 + "."
             + (f" bf16 {pk['bf16_note']}." if pk.get("bf16_note") else ""), "",
             "| mode | threads in all | s/iter | GFLOP/s | fraction of peak |", "|---|---:|---:|---:|---:|"]
    for r in result["runs"]:
        if "gflop_per_s" not in r:
            continue
        name = r["mode"] if r["mode"].startswith("torch") else f"{r['mode']}-{r['workers']}"
        frac = r.get("fraction_of_peak")
        lines.append(f"| {name} | {r.get('peak_threads', '')} | {r['s_per_iter']:.3f} | {r['gflop_per_s']:.1f} | "
                     + (f"{frac:.2f} |" if frac is not None else "|"))
    prof = result.get("worker_profile")
    if prof:
        lines += ["", f"Profile of one DFAGD worker iteration (worker 0, {prof['threads']} thread(s), batch slice "
                  f"{prof['batch_slice']}, torch.profiler self CPU time, profiler overhead included): "
                  + ", ".join(f"{k} {v['wall_s']:.3f} s" for k, v in prof["phases"].items())
                  + f"; convolutions take {prof['conv_share']:.0%} of the self time.", "",
                  "| op | self s | calls | share |", "|---|---:|---:|---:|"]
        lines += [f"| `{o['op']}` | {o['self_s']:.4f} | {o['calls']} | {o['share']:.1%} |" for o in prof["top_ops"]]
    return lines
