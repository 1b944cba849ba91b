"""Pictures for MLflow: real next to fake, and the training loss curves (matplotlib, Agg canvas, no GUI)."""

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from models.files import atomic_path
from models.grid import make_grid

LOSS_KEYS = ("loss_d", "loss_g", "gradient_penalty")


def _grid(images: np.ndarray, n: int) -> np.ndarray:
    """uint8 (N, C, H, W) -> grid (H', W') or (H', W', 3) of the first n images."""
    g = make_grid(np.ascontiguousarray(images[:n].transpose(0, 2, 3, 1)))
    return g[..., 0] if g.shape[-1] == 1 else g


def _save(fig: Figure, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def save_real_vs_fake(real: np.ndarray, fake: np.ndarray, path: str | Path, n: int = 64) -> Path:
    """Two grids side by side, titled 'real' and 'fake'; real and fake are uint8 (N, C, H, W)."""
    fig = Figure(figsize=(10, 5.4), dpi=100)
    FigureCanvasAgg(fig)
    for ax, images, title in zip(fig.subplots(1, 2), (real, fake), ("real", "fake")):
        grid = _grid(images, n)
        ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(f"{title} ({min(n, len(images))} of {len(images)})")
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def save_loss_curves(history: list[dict], path: str | Path, keys: tuple[str, ...] = LOSS_KEYS) -> Path:
    """GANState.history (dicts with 'step' and metric values) -> one panel per key present, against the step."""
    present = [k for k in keys if any(k in h for h in history)]
    if not present:
        raise ValueError(f"history: no entries with any of {list(keys)} to plot ({len(history)} entries)")
    fig = Figure(figsize=(4.5 * len(present), 3.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, len(present)))
    for ax, key in zip(axes, present):
        pts = [(h.get("step", i), h[key]) for i, h in enumerate(history) if key in h]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
