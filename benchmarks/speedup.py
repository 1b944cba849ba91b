"""`transsrgan bench speedup`: DFAGD against its peers on the same model, global batch and data, in one run.

Runs, each with `warmup` untimed iterations first:
  (a) torch           plain single-process PyTorch (the reference trainer), threads = the cores DFAGD-N uses
  (a') torch_compiled the same with train.compile (torch.compile of G and D; compile time is in its warm-up)
  (b) dfagd           DFAGD with 1 worker    } timed by spark_training.speedup_probe.time_dfagd, the same code
  (c) dfagd           DFAGD with N workers   } that times a training run's own speed-up probe
  (d) ddp             data-parallel PyTorch, gloo, N processes through pyspark's TorchDistributor
  (e) dfagd_previous_defaults  DFAGD-N with compile off and fp32, when the config's defaults differ from those
and fits the cost model (benchmarks.cost_model) to the DFAGD runs. Roofline numbers (benchmarks.roofline): FLOPs
per iteration, the matmul peak on each run's threads, achieved GFLOP/s and fraction of peak per run, and a
profile of one DFAGD worker iteration. Returns the `bench speedup` JSON dict; the caller logs to MLflow (this
package does not import it).
"""

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks import roofline
from benchmarks.cost_model import Measurement, bytes_per_worker, fit, predict_grid
from benchmarks.ddp_peer import run_ddp
from models import count_params
from models.config import Config, resolve_config
from models.data import ImageSet, load_dataset
from models.step import build_state
from models.trainer import LocalGradSource, train
from spark_training.session import spark_session
from spark_training.speedup_probe import time_dfagd


def bench_config(preset: str, workers: int, steps: int, overrides: dict[str, Any] | None = None) -> Config:
    over = {"train.steps": steps, "train.log_every": 0, "train.sample_every": 0, "train.checkpoint_every": 0,
            "spark.workers": workers, **(overrides or {})}
    return resolve_config(preset, over)


def _run(mode: str, workers: int, batch: int, wall_s: float, steps: int, **extra: Any) -> dict[str, Any]:
    s_per_iter = wall_s / steps
    return {"mode": mode, "workers": workers, **extra, "images_per_s": round(batch / s_per_iter, 3),
            "s_per_iter": round(s_per_iter, 4)}


_SPIN = ("import time\nt=time.perf_counter(); c=time.process_time()\n"
         "while time.perf_counter()-t < {s}: sum(range(10000))\n"
         "print(time.process_time()-c, time.perf_counter()-t)")


def effective_cores(n: int, seconds: float = 1.5) -> float:
    """CPU cores this machine really gives n busy processes right now (other tenants make it < n)."""
    procs = [subprocess.Popen([sys.executable, "-c", _SPIN.format(s=seconds)], stdout=subprocess.PIPE, text=True)
             for _ in range(n)]
    cpu = wall = 0.0
    for p in procs:
        c, w = map(float, p.communicate()[0].split())
        cpu, wall = cpu + c, max(wall, w)
    return round(cpu / wall, 2)


def time_torch(cfg: Config, data: ImageSet, warmup: int, steps: int, threads: int) -> tuple[float, float]:
    """(a): the reference trainer in this process with `threads` torch threads; (seconds for `steps` iterations,
    seconds of the warm-up, which holds any compilation)."""
    with roofline.torch_threads(threads):
        state, source = build_state(cfg), LocalGradSource(data, cfg)
        t0 = time.perf_counter()
        train(state, source, steps=warmup, print_fn=None)
        t1 = time.perf_counter()
        train(state, source, steps=warmup + steps, print_fn=None)
        return time.perf_counter() - t1, t1 - t0


PREVIOUS_DEFAULTS = {"train.compile": "off", "train.precision": "fp32"}
COMPILED_PEER_MODE = "default"          # train.compile of the compiled torch peer when the config has it off


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def bench_speedup(preset: str = "demo", workers: tuple[int, ...] = (1, 2), steps: int = 10, warmup: int = 2,
                  master: str | None = None, threads_per_worker: int = 1, ddp: bool = True,
                  overrides: dict[str, Any] | None = None, compiled_peer: bool = True, roofline_numbers: bool = True,
                  reductions: tuple[str, ...] = ("star",),
                  print_fn: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Measure (a)-(e), the roofline numbers, and fit the cost model; returns the `bench speedup` JSON dict.

    reductions: spark.reduction values DFAGD is timed with at every worker count; the first one's ratios are the
    top-level keys (speedup, efficiency, vs_*), every one's are under `reductions` -> mode."""
    say = print_fn or (lambda _m: None)
    ns = sorted(set(workers) | {1})
    top = max(ns)
    over = {"spark.threads_per_worker": threads_per_worker, **(overrides or {}), "spark.reduction": reductions[0]}
    if master:
        over["spark.master"] = master
    else:
        over.setdefault("spark.master", f"local[{top}]")
    # data.partitions defaults to spark.workers: each run uses its natural split (DFAGD-1 = whole batch at once)
    base = bench_config(preset, top, steps, over)
    data = load_dataset(base.data.source, base.model.resolution, base.model.channels, base.data.limit)
    batch = base.train.batch_size
    runs: list[dict[str, Any]] = []
    threads = top * threads_per_worker
    load_before = _load()

    cores_before = effective_cores(top)
    say(f"bench speedup: preset {preset}, global batch {batch}, {steps} timed + {warmup} warm-up iterations, "
        f"workers {ns}, {len(data)} images; {top} busy processes get {cores_before} cores right now "
        f"(load average {load_before})")
    wall, _ = time_torch(base, data, warmup, steps, threads)
    torch_tp = batch * steps / wall
    runs.append(_run("torch", 1, batch, wall, steps, threads=threads, peak_threads=threads))
    say(f"  torch  1 process x {threads} threads: {wall / steps:.3f} s/iter")
    compiled_tp = None
    if compiled_peer:
        mode = base.train.compile if base.train.compile != "off" else COMPILED_PEER_MODE
        wall, warm = time_torch(base.updated({"train.compile": mode}), data, warmup, steps, threads)
        compiled_tp = batch * steps / wall
        runs.append(_run("torch_compiled", 1, batch, wall, steps, threads=threads, peak_threads=threads,
                         compile_mode=mode, warmup_s=round(warm, 2)))
        say(f"  torch_compiled ({mode}) 1 process x {threads} threads: {wall / steps:.3f} s/iter "
            f"(warm-up with compilation {warm:.1f} s)")

    measurements: list[Measurement] = []
    dfagd_tp: dict[int, float] = {}
    ddp_tp: dict[int, float] = {}
    dedicated_tp: dict[int, float] = {}
    previous_tp: dict[int, float] = {}
    with spark_session(base.spark, "transsrgan-bench-speedup") as spark:
        for n in ns:
            cfg = bench_config(preset, n, steps, over)
            wall, breakdown, stats = time_dfagd(spark, cfg, data, warmup, steps)
            cpu_iter = stats.compute_cpu_s / max(stats.iterations, 1)     # seconds of CPU per iteration
            runs.append(_run("dfagd", n, batch, wall, steps, breakdown=breakdown,
                             cpu_share=round(stats.cpu_share(threads_per_worker), 3),
                             compute_cpu_s=round(cpu_iter, 4), peak_threads=n * threads_per_worker))
            dfagd_tp[n] = batch * steps / wall
            # the same run with the slowest worker's compute at its CPU time: what dedicated cores would give
            dedicated_tp[n] = batch / (wall / steps - breakdown["compute_s"] + cpu_iter / threads_per_worker)
            # compute at the CPU time the worker used = what a dedicated core would take (tenants excluded)
            measurements.append(Measurement(n, **breakdown, compute_cpu_s=cpu_iter))
            say(f"  dfagd  {n} worker(s): {wall / steps:.3f} s/iter  {breakdown}  "
                f"({stats.bytes_sent / max(stats.iterations, 1) / 1e6:.1f} MB out per iteration; the slowest "
                f"worker got {stats.cpu_share(threads_per_worker):.0%} of its cores while computing)")
        other_tp: dict[str, dict[int, float]] = {reductions[0]: dfagd_tp}
        for mode in reductions[1:]:
            other_tp[mode] = {}
            for n in ns:
                cfg = bench_config(preset, n, steps, {**over, "spark.reduction": mode})
                wall, breakdown, _ = time_dfagd(spark, cfg, data, warmup, steps)
                other_tp[mode][n] = batch * steps / wall
                runs.append(_run(f"dfagd_{mode}", n, batch, wall, steps, breakdown=breakdown,
                                 peak_threads=n * threads_per_worker, reduction=mode))
                say(f"  dfagd  {n} worker(s), spark.reduction={mode}: {wall / steps:.3f} s/iter  {breakdown}")
        for n in [n for n in ns if n > 1]:
            cfg = bench_config(preset, n, steps, over)
            old = cfg.updated(PREVIOUS_DEFAULTS)
            if old == cfg:       # the defaults are the previous ones: the DFAGD-N run above is that run
                previous_tp[n] = dfagd_tp[n]
                continue
            wall, breakdown, _ = time_dfagd(spark, old, data, warmup, steps)
            previous_tp[n] = batch * steps / wall
            runs.append(_run("dfagd_previous_defaults", n, batch, wall, steps, breakdown=breakdown,
                             peak_threads=n * threads_per_worker, overrides=PREVIOUS_DEFAULTS))
            say(f"  dfagd  {n} workers with {PREVIOUS_DEFAULTS}: {wall / steps:.3f} s/iter")
        if ddp:
            for n in [n for n in ns if n > 1]:
                cfg = bench_config(preset, n, steps, over)
                out = _ddp(cfg, n, warmup, steps, threads_per_worker)
                runs.append(_run("ddp", n, batch, out["wall_s"], steps, peak_threads=n * threads_per_worker))
                ddp_tp[n] = batch * steps / out["wall_s"]
                say(f"  ddp    {n} processes (TorchDistributor, gloo): {out['wall_s'] / steps:.3f} s/iter "
                    f"(all-reduce {out['allreduce_s'] / steps:.3f} s/iter)")

    result: dict[str, Any] = {"preset": preset, "global_batch": batch, "steps": steps, "runs": runs,
                              "speedup": {}, "efficiency": {}, "vs_torch": {}, "vs_ddp": {},
                              "speedup_dedicated_cores": {}, "vs_previous_defaults": {}, "vs_torch_compiled": {}}
    for n in ns:
        if n == 1:
            continue
        sp = dfagd_tp[n] / dfagd_tp[1]
        result["speedup"][str(n)] = round(sp, 3)
        result["efficiency"][str(n)] = round(sp / n, 3)
        result["speedup_dedicated_cores"][str(n)] = round(dedicated_tp[n] / dedicated_tp[1], 3)
        result["vs_torch"][str(n)] = round(dfagd_tp[n] / torch_tp, 3)
        result["vs_previous_defaults"][str(n)] = round(dfagd_tp[n] / previous_tp[n], 3)
        if compiled_tp:
            result["vs_torch_compiled"][str(n)] = round(dfagd_tp[n] / compiled_tp, 3)
        if n in ddp_tp:
            result["vs_ddp"][str(n)] = round(dfagd_tp[n] / ddp_tp[n], 3)
    result["reductions"] = {}
    for mode, tp in other_tp.items():
        result["reductions"][mode] = {
            "speedup": {str(n): round(tp[n] / tp[1], 3) for n in ns if n > 1},
            "efficiency": {str(n): round(tp[n] / tp[1] / n, 3) for n in ns if n > 1},
            "vs_torch": {str(n): round(tp[n] / torch_tp, 3) for n in ns if n > 1},
            "vs_ddp": {str(n): round(tp[n] / ddp_tp[n], 3) for n in ns if n in ddp_tp},
            "vs_torch_compiled": {str(n): round(tp[n] / compiled_tp, 3) for n in ns if n > 1 and compiled_tp},
            "vs_" + reductions[0]: {str(n): round(tp[n] / dfagd_tp[n], 3) for n in ns}}
    result["primary_reduction"] = reductions[0]
    result["previous_defaults"] = {"overrides": PREVIOUS_DEFAULTS,
                                   "same_as_defaults": base.updated(PREVIOUS_DEFAULTS) == base}
    st = build_state(base)
    model = fit(measurements, batch, base.train.n_critic + 1,
                bytes_per_worker(count_params(st.G), count_params(st.D), base.train.n_critic,
                                 base.spark.exchange_dtype))
    result["model_prediction"] = predict_grid(model)
    result["model_assumptions"] = model.assumptions()
    result["model_fit_residual_s"] = round(model.residual_s, 4)
    result["warmup_steps"] = warmup
    result["effective_cores"] = {"before": cores_before, "after": effective_cores(top)}
    result["master"] = base.spark.master
    if roofline_numbers:
        say("  roofline: FLOPs per iteration, matmul peak, worker profile")
        _roofline(result, base, data, threads_per_worker)
    result["load_average"] = {"before": load_before, "after": _load()}
    return result


def _roofline(result: dict[str, Any], base: Config, data: ImageSet, threads_per_worker: int) -> None:
    """Adds roofline, fraction_of_peak and worker_profile to `result`, and GFLOP/s to each run."""
    flops = roofline.iteration_flops(base, data)
    pk = roofline.peaks([r["peak_threads"] for r in result["runs"]])
    table = pk["bf16"] if base.train.precision == "bf16" and pk["bf16"] else pk["fp32"]
    result["fraction_of_peak"] = {}
    for r in result["runs"]:
        r.update(roofline.achieved(flops, r["s_per_iter"], table.get(str(r["peak_threads"]))))
        key = r["mode"] if r["mode"].startswith("torch") else f"{r['mode']}_{r['workers']}"
        result["fraction_of_peak"][key] = r["fraction_of_peak"]
    result["roofline"] = {"flops_per_iteration": flops, "gflop_per_iteration": round(flops / 1e9, 3),
                          "flops_counted": roofline.FLOPS_COUNTED, "peak_gflop_per_s": pk,
                          "precision": base.train.precision}
    result["worker_profile"] = roofline.worker_profile(base, data, threads_per_worker)   # base: top workers


def _ddp(cfg: Config, n: int, warmup: int, steps: int, threads: int) -> dict[str, float]:
    return run_ddp(cfg.to_dict(), n, warmup, steps, threads)


def markdown(result: dict[str, Any]) -> str:
    """The result as Markdown: runs, ratios, cost-model predictions and assumptions."""
    lines = [f"### DFAGD speed-up: preset `{result['preset']}`, global batch {result['global_batch']}, "
             f"{result['steps']} timed iterations", ""]
    load = result.get("load_average")
    if load:
        lines += [f"Load average (1, 5, 15 min) before the run {load['before']}, after {load['after']}.", ""]
    cores = result.get("effective_cores")
    if cores:
        lines += [f"Free CPU measured around the run (busy processes got this many cores): before {cores['before']}, "
                  f"after {cores['after']}. Worker core share = CPU time / wall time while computing.", ""]
    lines += ["| mode | workers | images/s | s/iter | compute s | exchange s | scheduling s | worker core share |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["runs"]:
        b = r.get("breakdown") or {}
        who = f"{r['workers']} ({r['threads']} threads)" if r["mode"].startswith("torch") else str(r["workers"])
        lines.append(f"| {r['mode']} | {who} | {r['images_per_s']:.2f} | {r['s_per_iter']:.3f} | "
                     + " | ".join(f"{b[k]:.3f}" if k in b else "" for k in ("compute_s", "exchange_s", "scheduling_s"))
                     + (f" | {r['cpu_share']:.2f} |" if "cpu_share" in r else " | |"))
    lines += ["", "| N | speed-up vs 1 worker | efficiency | vs plain torch | vs compiled torch | vs DDP | "
              "vs previous defaults |", "|---:|---:|---:|---:|---:|---:|---:|"]
    nan = float("nan")
    for n in result["speedup"]:
        lines.append(f"| {n} | {result['speedup'][n]:.2f} | {result['efficiency'][n]:.2f} | "
                     f"{result['vs_torch'][n]:.2f} | {result.get('vs_torch_compiled', {}).get(n, nan):.2f} | "
                     f"{result['vs_ddp'].get(n, nan):.2f} | {result.get('vs_previous_defaults', {}).get(n, nan):.2f} |")
    by_mode = result.get("reductions") or {}
    if len(by_mode) > 1:
        first = result.get("primary_reduction", "star")
        lines += ["", "By `spark.reduction` (each against its own 1-worker run):", "",
                  f"| reduction | N | speed-up | efficiency | vs plain torch | vs DDP | vs {first} |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for mode, r in by_mode.items():
            for n in r["speedup"]:
                lines.append(f"| {mode} | {n} | {r['speedup'][n]:.2f} | {r['efficiency'][n]:.2f} | "
                             f"{r['vs_torch'][n]:.2f} | {r['vs_ddp'].get(n, nan):.2f} | "
                             f"{r['vs_' + first].get(n, nan):.2f} |")
    prev = result.get("previous_defaults")
    if prev and prev["same_as_defaults"]:
        lines += ["", f"The defaults are the previous ones ({prev['overrides']}): vs previous defaults is 1 by "
                  "construction (not measured twice)."]
    lines += roofline.markdown(result)
    if result.get("speedup_dedicated_cores"):
        lines += ["", "On a shared machine the workers' wall time includes other tenants' work. With each worker's "
                  "compute counted at its CPU time (as on dedicated cores), the speed-up would be: "
                  + ", ".join(f"N={n}: {v:.2f} (efficiency {v / int(n):.2f})"
                              for n, v in result["speedup_dedicated_cores"].items()) + "."]
    residual = result.get("model_fit_residual_s")
    lines += ["", "Cost model prediction (extrapolated from the DFAGD runs above, not measured"
              + (f"; fit residual {residual:.4f} s/iter RMS on those runs" if residual is not None else "") + "):",
              "", "| executors | network | speed-up | efficiency |",
              "|---:|---:|---:|---:|"]
    for p in result["model_prediction"]:
        lines.append(f"| {p['executors']} | {p['network_gbit']:g} Gbit | {p['speedup']:.2f} | {p['efficiency']:.2f} |")
    lines += ["", "Assumptions:"] + [f"- {a}" for a in result.get("model_assumptions", [])]
    return "\n".join(lines) + "\n"
