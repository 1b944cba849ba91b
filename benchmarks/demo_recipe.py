"""Choose the demo's training recipe by measurement: candidates trained for one fixed wall-clock budget each.

    nice -n 5 python -m benchmarks.demo_recipe --budget-s 400 --out /tmp/demo_recipe
    nice -n 5 python -m benchmarks.demo_recipe --budget-s 600 --steps 1200 --candidates demo demo_lazy_r1_4

Every candidate (a preset plus overrides) trains on the embedded digits at 32x32 with the single-process reference
trainer (models.trainer.train, LocalGradSource, 1 torch thread): the same math as the demo's DFAGD, per step, at
about its cost per step with one worker (DFAGD's 2 workers on 2 cores measured 0.8x of that, docs/dfagd.md). All
candidates run at once, one process each, so they share whatever load the machine has equally; compare them by
the steps they completed as well as by quality. `--steps` also stops each candidate at that many steps: a
comparison at equal steps, with the seconds per step as each one's cost (for a busy machine). Then the EMA generator's samples are scored with the product's
digit metrics (models.metrics.digits through evaluate_images): recognisable, fd_digits and its real-vs-real floor,
kd_digits, class_balance, and msssim_diversity. Writes demo_recipe.json, demo_recipe.md and one grid per candidate.
"""

import argparse
import copy
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from models.config import EvalConfig, resolve_config
from models.data import load_dataset
from models.grid import make_grid, sample, save_png, to_uint8
from models.metrics import evaluate_images
from models.metrics.digits import load_or_train
from models.metrics.evaluate import real_subsets
from models.step import build_state
from models.trainer import LocalGradSource, train

SAMPLE_SEED = 0
GRID_N = 64
# name -> (preset, overrides). The thesis recipe is today's demo; NS + R1 is quality32's (docs/quality.md).
NS_R1 = {"train.loss": "ns", "train.penalty": "r1", "train.gp_weight": 1.0, "train.n_critic": 1,
         "train.lr_g": 5e-4, "train.lr_d": 5e-4, "train.betas": [0.5, 0.99], "train.ema_decay": 0.98,
         "train.ema_start": 20}
CANDIDATES: dict[str, tuple[str, dict[str, Any]]] = {
    "thesis_wgan_gp": ("thesis32", {}),
    "ns_r1_demo_size": ("thesis32", NS_R1),
    "ns_r1_q32_size": ("quality32", {}),
    "ns_r1_q32_size_b64": ("quality32", {"train.batch_size": 64}),
    "ns_r1_q32_size_lr1e-3": ("quality32", {"train.lr_g": 1e-3, "train.lr_d": 1e-3}),
    # round 2: the EMA's horizon once training runs thousands of steps
    "ns_r1_q32_size_ema0.995": ("quality32", {"train.ema_decay": 0.995}),
    "ns_r1_q32_size_ema0.999": ("quality32", {"train.ema_decay": 0.999}),
    "ns_r1_q32_size_lr1e-3_ema0.995": ("quality32", {"train.lr_g": 1e-3, "train.lr_d": 1e-3,
                                                     "train.ema_decay": 0.995}),
    # round 3: the demo preset (round 2's winner) with DiffAugment and/or lazy R1 (StyleGAN2's every 4th D update)
    "demo": ("demo", {}),
    "demo_diffaug_tc": ("demo", {"train.augment": "translation,cutout"}),
    "demo_diffaug_t": ("demo", {"train.augment": "translation"}),
    "demo_lazy_r1_4": ("demo", {"train.reg_every": 4}),
    "demo_diffaug_tc_lazy_r1_4": ("demo", {"train.augment": "translation,cutout", "train.reg_every": 4}),
    # round 5, at equal steps past the demo's 3,000: a longer EMA once the blobs are over, and DiffAugment's shift
    "demo_ema0.999_from500": ("demo", {"train.ema_decay": 0.999, "train.ema_start": 500}),
    # round 6, on a CPU with native bf16 (AVX512-BF16): bf16 autocast of the demo
    "demo_bf16": ("demo", {"train.precision": "bf16"}),
    # round 7: a discriminator of twice the width, and the demo conditioned on the digits' labels
    "demo_d2x": ("demo", {"model.d_channels": 32, "model.d_max_channels": 128}),
    "demo_cond10": ("demo", {"model.num_classes": 10}),
}
COLUMNS = ("steps", "s_per_step", "recognisable", "fd_digits", "fd_digits_floor", "fd_ratio", "kd_digits",
           "class_balance", "msssim_diversity", "g_params")


def check_steps(steps: int, checks: int) -> list[int]:
    """The steps at which --checks scores a candidate on the way: steps x k / checks for k = 1 .. checks - 1 (the
    final state is always scored)."""
    return sorted({steps * k // checks for k in range(1, checks)} - {0})


def run_candidate(name: str, budget_s: float, n: int, out: str, steps: int = 10**6, checks: int = 1,
                  truncations: tuple[float, ...] = ()) -> dict[str, Any]:
    """Train one candidate for budget_s wall seconds (checked before every iteration) or `steps` steps, whichever
    comes first, then score its EMA G; with checks > 1 also at check_steps(steps, checks) on the way (`curve`), and
    the final EMA G's samples truncated at every psi of `truncations` (`truncated`; models.grid.truncate)."""
    torch.set_num_threads(1)
    preset, overrides = CANDIDATES[name]
    config = resolve_config(preset, {"train.steps": steps, "train.threads": 1, "train.log_every": 0,
                                     "train.sample_every": 0, "train.checkpoint_every": 0, **overrides})
    data = load_dataset("digits", config.model.resolution, config.model.channels)
    state = build_state(config)
    pending, snapshots = check_steps(steps, checks), []
    t0 = time.perf_counter()

    def should_stop() -> bool:
        if pending and state.step == pending[0]:
            snapshots.append((pending.pop(0), time.perf_counter() - t0, copy.deepcopy(state.G_ema)))
        return time.perf_counter() - t0 >= budget_s

    train(state, LocalGradSource(data, config), should_stop=should_stop, print_fn=None)
    train_s = time.perf_counter() - t0
    real, partner = real_subsets(data.images, n)
    ev = EvalConfig(n_samples=n, metrics=("msssim_diversity",), allow_random_features=True, download_weights=False,
                    cache_real=False)

    def score(G: torch.nn.Module, png: str | None, psi: float = 1.0) -> dict[str, float]:
        mc = config.model
        fake = to_uint8(sample(G, n, SAMPLE_SEED, mc.z_dim, mc.num_classes, truncation=psi)).transpose(0, 3, 1, 2).copy()
        if png:
            save_png(make_grid(fake[:GRID_N].transpose(0, 2, 3, 1)), Path(out) / png, scale=2)
        return evaluate_images(fake, real, config=ev, seed=SAMPLE_SEED, floor_real=partner, domain="digits").metrics

    curve = [{"step": step, "train_s": round(t, 1), **_point(score(G, None))} for step, t, G in snapshots]
    m = score(state.G_ema, f"{name}.png")
    curve.append({"step": state.step, "train_s": round(train_s, 1), **_point(m)})
    truncated = [{"psi": psi, **_point(tm), "msssim_diversity": tm["msssim_diversity"]}
                 for psi in truncations for tm in [score(state.G_ema, f"{name}_psi{psi:g}.png", psi)]]
    return {"name": name, "preset": preset, "overrides": overrides, "steps": state.step, "train_s": round(train_s, 1),
            "s_per_step": round(train_s / max(state.step, 1), 4),
            "g_params": sum(p.numel() for p in state.G.parameters()),
            **{k: m[k] for k in COLUMNS if k in m},
            "fd_ratio": m.get("fd_digits_vs_floor", float("nan")), "real_recognisable": m.get("recognisable_real"),
            "curve": curve, "truncated": truncated, "metrics": m}


def _point(m: dict[str, float]) -> dict[str, float]:
    return {"recognisable": m["recognisable"], "fd_ratio": m["fd_digits_vs_floor"], "kd_digits": m["kd_digits"],
            "class_balance": m["class_balance"]}


def markdown(report: dict[str, Any]) -> str:
    rows = sorted(report["candidates"], key=lambda r: r["fd_ratio"])
    cap = f" or {report['max_steps']} steps, whichever came first" if report.get("max_steps", 10**6) < 10**6 else ""
    lines = [f"# Demo recipe search ({report['budget_s']:.0f} s of training each{cap}, all at once)", "",
             f"{report['conditions']}", "",
             "| candidate | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for r in rows:
        cells = [f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in COLUMNS]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    lines += ["", "fd_ratio = fd_digits / fd_digits_floor (the same distance between two disjoint real subsets "
              f"of n = {report['n']}); recognisable = share of samples whose top class has softmax >= 0.9.",
              f"Real digits' own recognisable: {report['real_recognisable']}."]
    if any(len(r.get("curve", [])) > 1 for r in rows):
        lines += ["", "On the way (the same n, noise and real subsets):", "",
                  "| candidate | step | train s | recognisable | fd_ratio | kd_digits | class_balance |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['name']} | {p['step']} | {p['train_s']} | {p['recognisable']:.3f} | {p['fd_ratio']:.2f} | "
                  f"{p['kd_digits']:.2f} | {p['class_balance']:.3f} |" for r in rows for p in r["curve"]]
    if any(r.get("truncated") for r in rows):
        lines += ["", "The final EMA generator's samples with the truncation trick (z scaled by psi; the same noise):",
                  "", "| candidate | psi | recognisable | fd_ratio | kd_digits | class_balance | msssim_diversity |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['name']} | {t['psi']:g} | {t['recognisable']:.3f} | {t['fd_ratio']:.2f} | "
                  f"{t['kd_digits']:.2f} | {t['class_balance']:.3f} | {t['msssim_diversity']:.3f} |"
                  for r in rows for t in r.get("truncated", [])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.demo_recipe", description=__doc__.splitlines()[0])
    p.add_argument("--budget-s", type=float, default=300.0, help="wall seconds of training per candidate")
    p.add_argument("--steps", type=int, default=10**6, help="stop a candidate at this many steps (default: none)")
    p.add_argument("--n", type=int, default=256, help="samples scored per candidate (and real images per side)")
    p.add_argument("--candidates", nargs="+", choices=sorted(CANDIDATES), default=list(CANDIDATES))
    p.add_argument("--checks", type=int, default=1, metavar="K",
                   help="with --steps: also score at steps x k/K, k = 1 .. K-1 (a curve per candidate; default 1)")
    p.add_argument("--truncation", type=float, nargs="+", default=[], metavar="PSI",
                   help="also score the final EMA generator's samples truncated at each PSI in (0, 1)")
    p.add_argument("--out", default="demo_recipe", help="folder for demo_recipe.json/.md and the grids")
    a = p.parse_args(argv)
    if a.budget_s <= 0 or a.n < 16 or a.steps < 1 or a.checks < 1 or not all(0 < x <= 1 for x in a.truncation):
        print("demo_recipe: --budget-s must be > 0, --n >= 16, --steps >= 1, --checks >= 1 and every --truncation "
              "in (0, 1]", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    load_or_train(32)              # the digit classifier once, here, not raced by every candidate
    load_before = os.getloadavg()
    t = time.time()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(len(a.candidates)) as pool:
        jobs = [pool.apply_async(run_candidate, (c, a.budget_s, a.n, str(out), a.steps, a.checks,
                                                 tuple(a.truncation))) for c in a.candidates]
        results = [j.get() for j in jobs]
    load_after = os.getloadavg()
    real = next((r["real_recognisable"] for r in results if r.get("real_recognisable") is not None), None)
    report = {"budget_s": a.budget_s, "max_steps": a.steps, "n": a.n,
              "engine": "models.trainer.train (local, 1 thread per candidate)",
              "load_avg_before": load_before, "load_avg_after": load_after, "wall_s": round(time.time() - t, 1),
              "cores": os.cpu_count(), "real_recognisable": real, "candidates": results,
              "conditions": f"{len(results)} candidates in parallel, 1 torch thread each, on {os.cpu_count()} cores; "
                            f"load average (1/5/15 min) {tuple(round(x, 2) for x in load_before)} before, "
                            f"{tuple(round(x, 2) for x in load_after)} after; {time.time() - t:.0f} s wall in all."}
    (out / "demo_recipe.json").write_text(json.dumps(report, indent=2, default=float))
    (out / "demo_recipe.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
