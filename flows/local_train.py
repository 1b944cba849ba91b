"""Single-process training with sample grids and checkpoints: the reference path, and the fallback main job."""

import time
from pathlib import Path

import torch

from models.checkpoint import save_checkpoint
from models.config import Config
from models.data import load_dataset
from models.grid import make_grid, sample, save_png, to_uint8
from models.paths import data_home
from models.step import build_state
from models.trainer import LocalGradSource, train


def train_local(cfg: Config, out: str | Path | None = None) -> dict:
    out = Path(out) if out else data_home() / "runs" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    data = load_dataset(cfg.data.source, cfg.model.resolution, cfg.model.channels, cfg.data.limit)
    print(f"data: {len(data)} images from {cfg.data.source} at {cfg.model.resolution}px; "
          f"preset {cfg.preset}; {cfg.train.steps} steps, batch {cfg.train.batch_size}")
    state = build_state(cfg)
    t0 = time.perf_counter()

    def on_sample(s, _m):
        grid = make_grid(to_uint8(sample(s.G_ema, 64, seed=0, z_dim=cfg.model.z_dim, num_classes=cfg.model.num_classes)))
        save_png(grid, out / "samples" / f"step_{s.step:06d}.png", scale=2)

    def on_checkpoint(s, _m):
        save_checkpoint(s, out / "checkpoint.pt")

    train(state, LocalGradSource(data, cfg), on_sample=on_sample, on_checkpoint=on_checkpoint)
    grid = out / "samples" / f"step_{state.step:06d}.png"
    wall = time.perf_counter() - t0
    print(f"done in {wall:.0f}s; samples: {grid}; checkpoint: {out / 'checkpoint.pt'}")
    return {"out": str(out), "grid": str(grid), "wall_s": wall}
