"""Save/load the whole pyramid: per-scale G/D state dicts, noise amps, the fixed noise, image and config."""

from pathlib import Path
from typing import Any

import torch

from models.config import singan_config_from_dict
from models.files import atomic_path
from models.singan.networks import build_scale, freeze
from models.singan.state import SinGANState, resolve_device

FORMAT = "singan/1"


def state_to_dict(state: SinGANState) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "config": state.config.to_dict(),
        "sizes": [list(s) for s in state.sizes],
        "image": state.image.detach().cpu(),                  # (1, C, H, W) float in [-1, 1]
        "z_rec": state.z_rec.detach().cpu(),                  # (1, 1, h0, w0)
        "noise_amps": [float(a) for a in state.noise_amps],
        "G": [{k: v.cpu() for k, v in G.state_dict().items()} for G in state.Gs],
        "D": [{k: v.cpu() for k, v in D.state_dict().items()} for D in state.Ds],
        "history": [dict(h) for h in state.history],
    }


def save_singan(state: SinGANState, path: str | Path) -> Path:
    """Atomic (models.files.atomic_path): a crash never leaves a torn file, and an older one stays until replaced."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(state_to_dict(state), fh)
    return Path(path)


def state_from_dict(ckpt: dict[str, Any], device: str | None = None) -> SinGANState:
    if ckpt.get("format") != FORMAT:
        raise ValueError(f"checkpoint: expected format {FORMAT!r}, got {ckpt.get('format')!r}")
    cfg = singan_config_from_dict(ckpt["config"])
    if device is not None:
        cfg.device = device
    dev = resolve_device(cfg)
    state = SinGANState(config=cfg, image=ckpt["image"].to(dev), sizes=[tuple(s) for s in ckpt["sizes"]],
                        z_rec=ckpt["z_rec"].to(dev), noise_amps=list(ckpt["noise_amps"]),
                        history=list(ckpt.get("history", [])))
    if not (len(ckpt["G"]) == len(ckpt["D"]) == len(state.noise_amps) <= state.num_scales):
        raise ValueError(f"checkpoint: inconsistent pyramid ({len(ckpt['G'])} G, {len(ckpt['D'])} D, "
                         f"{len(state.noise_amps)} noise amps, {state.num_scales} scales)")
    for n, (g_sd, d_sd) in enumerate(zip(ckpt["G"], ckpt["D"], strict=True)):
        G, D = build_scale(cfg, n)
        G.load_state_dict(g_sd)
        D.load_state_dict(d_sd)
        state.Gs.append(freeze(G.to(dev)))
        state.Ds.append(freeze(D.to(dev)))
    return state


def load_singan(path: str | Path, device: str | None = None) -> SinGANState:
    """Rebuild the pyramid (weights_only=True); training resumes at the first unfinished scale."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return state_from_dict(torch.load(path, map_location="cpu", weights_only=True), device)
