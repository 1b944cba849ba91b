"""Checkpoints: state dicts, optimizer states, step, history and the resolved config; atomic writes, weights_only loads."""

import shutil
from pathlib import Path
from typing import Any

import torch

from models.config import Config, config_from_dict
from models.files import atomic_path
from models.step import GANState, build_state

FORMAT_VERSION = 1


def state_to_dict(state: GANState) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "config": state.config.to_dict(),
        "step": state.step,
        "G": state.G.state_dict(),
        "D": state.D.state_dict(),
        "G_ema": state.G_ema.state_dict(),
        "opt_g": state.opt_g.state_dict(),
        "opt_d": state.opt_d.state_dict(),
        "history": state.history,
        # The data order and all noise are pure functions of (seed, step), so the step is the data position.
        "data_position": {"step": state.step, "seed": state.config.train.seed},
        "torch_rng": torch.get_rng_state(),
    }


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (a full disk, a read-only folder); the previous file is untouched."""


def save_checkpoint(state: GANState, path: str | Path) -> Path:
    """Atomic (models.files.atomic_path: temp file, fsync, rename): a crash or a full disk never leaves a torn
    file, and the previous checkpoint at `path` stays loadable until the new one is complete."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            torch.save(state_to_dict(state), fh)
    except (OSError, RuntimeError) as exc:   # torch.save reports a failed write as RuntimeError
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "the write failed"
        try:
            free = f"; {shutil.disk_usage(path.parent).free / 1e6:.1f} MB free there"
        except OSError:
            free = ""
        previous = f"the previous checkpoint {path} is untouched" if path.exists() else "no earlier checkpoint exists"
        raise CheckpointError(f"could not write the checkpoint of step {state.step} to {path}: {why}{free}; "
                              f"{previous}") from exc
    return path


def read_checkpoint(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """The checkpoint's dict (weights_only). `mmap`: tensors are mapped, not read, for a look at config and step."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def load_checkpoint(path: str | Path, config: Config | None = None) -> GANState:
    """Rebuild the full training state; `config` defaults to the one stored in the checkpoint."""
    ckpt = read_checkpoint(path)
    cfg = config or config_from_dict(ckpt["config"])
    state = build_state(cfg)
    state.G.load_state_dict(ckpt["G"])
    state.D.load_state_dict(ckpt["D"])
    state.G_ema.load_state_dict(ckpt["G_ema"])
    state.opt_g.load_state_dict(ckpt["opt_g"])
    state.opt_d.load_state_dict(ckpt["opt_d"])
    state.step = int(ckpt["step"])
    state.history = list(ckpt.get("history", []))
    if "torch_rng" in ckpt:
        torch.set_rng_state(ckpt["torch_rng"])
    return state
