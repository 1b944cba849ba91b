"""ICNR or not: the same config, seed and steps with model.icnr off and on, judged on the digit metrics and a
checkerboard measure. `python -m benchmarks.icnr --steps 300 --seeds 2 --json icnr.json` (docs/quality.md)."""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.config import EvalConfig, resolve_config
from models.data import load_dataset
from models.grid import sample, to_uint8
from models.metrics import evaluate_images
from models.metrics.evaluate import real_subsets
from models.step import build_state
from models.trainer import LocalGradSource, train

SAMPLE_SEED = 0
KEEP = ("fd_digits", "fd_digits_floor", "kd_digits", "recognisable", "recognisable_real", "class_balance")


def nyquist_share(images: np.ndarray) -> float:
    """uint8 (N, C, H, W) -> the share of the mean power spectrum (DC removed) on the Nyquist row and column.

    A period-2 pattern (the checkerboard PixelShuffle can leave) puts its energy on the Nyquist row ky = H/2 and
    column kx = W/2 of the FFT; smooth strokes put almost none there. 1.0 for a pure checkerboard, 0 for a
    constant image.
    """
    x = images.astype(np.float64).mean(axis=1)                       # (N, H, W) gray
    x -= x.mean(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.fft2(x)) ** 2).mean(axis=0)               # (H, W) mean power spectrum
    h, w = power.shape
    total = power.sum()
    if total <= 0:
        return 0.0
    nyq = power[h // 2, :].sum() + power[:, w // 2].sum() - power[h // 2, w // 2]
    return float(nyq / total)


def arm(preset: str, seed: int, icnr: bool, steps: int, checks: list[int], data, real, partner,
        ev: EvalConfig, say) -> list[dict[str, Any]]:
    """Train one arm from scratch; evaluate the EMA generator at every step in `checks`."""
    cfg = resolve_config(preset, {"train.steps": steps, "train.seed": seed, "model.icnr": icnr,
                                  "train.log_every": 0, "train.sample_every": 0, "train.checkpoint_every": 0})
    state = build_state(cfg)
    source = LocalGradSource(data, cfg)
    rows = []
    t0 = time.perf_counter()
    for stop in checks:
        train(state, source, steps=stop, print_fn=None)
        mc = cfg.model
        fake = to_uint8(sample(state.G_ema, ev.n_samples, SAMPLE_SEED, mc.z_dim, mc.num_classes))
        fake = fake.transpose(0, 3, 1, 2).copy()                       # (N, C, H, W)
        res = evaluate_images(fake, real, config=ev, floor_real=partner, domain="digits", seed=SAMPLE_SEED)
        row = {"seed": seed, "icnr": icnr, "step": state.step, "train_s": round(time.perf_counter() - t0, 1),
               **{k: res.metrics[k] for k in KEEP if k in res.metrics}, "nyquist_share": nyquist_share(fake)}
        say(json.dumps(row))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default="demo")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--checks", type=int, default=3, help="evaluations per arm, evenly spaced (default 3)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--n", type=int, default=256, help="samples per evaluation (default 256)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = resolve_config(args.preset)
    data = load_dataset("digits", base.model.resolution, base.model.channels, None)
    real, partner = real_subsets(data.images, args.n)
    ev = EvalConfig(**{**base.eval.to_dict(), "n_samples": args.n, "metrics": ("msssim_diversity",),
                       "allow_random_features": True})
    checks = [round(args.steps * (i + 1) / args.checks) for i in range(args.checks)]
    rows = []
    for seed in range(args.seeds):
        for icnr in (False, True):               # both arms of a seed back to back, same seed, same batches
            rows += arm(args.preset, seed, icnr, args.steps, checks, data, real, partner, ev,
                        lambda m: print(m, flush=True))
    Path(args.json).write_text(json.dumps({"preset": args.preset, "steps": args.steps, "n": args.n,
                                           "real_nyquist_share": nyquist_share(real), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
