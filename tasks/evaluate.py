"""Thin adapter: evaluate a generator or a folder of fakes against real data; log to MLflow when a run is active."""

import tempfile
from pathlib import Path

import mlflow
import numpy as np
from torch import nn

from models.config import EvalConfig, ModelConfig
from models.data import load_dataset
from models.grid import make_grid, sample, save_png, to_uint8
from models.metrics import EvalResult, evaluate_images
from models.metrics.evaluate import real_subset
from models.metrics.plots import save_real_vs_fake

TAG_EXTRACTOR = "feature_extractor"
GRID_SEED, GRID_N = 0, 64  # fixed noise: successive evaluations show progress on the same z


def real_images(real_source: str, n: int, resolution: int, channels: int) -> np.ndarray:
    """uint8 (min(n, N), C, H, W): the fixed random subset of the real data (models.metrics.evaluate.real_subset)."""
    return real_subset(load_dataset(real_source, resolution, channels).images, n)


def generated_images(G: nn.Module, n: int, model_cfg: ModelConfig, seed: int) -> np.ndarray:
    """uint8 (n, C, H, W) from models.grid.sample (deterministic in seed)."""
    return to_uint8(sample(G, n, seed, model_cfg.z_dim, model_cfg.num_classes)).transpose(0, 3, 1, 2).copy()


def log_evaluation(result: EvalResult, real: np.ndarray, fake: np.ndarray, *, step: int | None = None,
                   fixed_grid: np.ndarray | None = None) -> None:
    """Metrics, the tag feature_extractor and pictures under samples/ into the active MLflow run."""
    mlflow.log_metrics(result.metrics, step=step)
    mlflow.log_metric("feature_images_per_s", result.feature_images_per_s, step=step)
    mlflow.set_tag(TAG_EXTRACTOR, result.extractor)
    suffix = f"_step_{step:06d}" if step is not None else ""
    with tempfile.TemporaryDirectory() as tmp:
        save_real_vs_fake(real, fake, Path(tmp) / f"real_vs_fake{suffix}.png")
        if fixed_grid is not None:
            save_png(fixed_grid, Path(tmp) / f"eval_fixed_noise{suffix}.png", scale=2)
        mlflow.log_artifacts(tmp, artifact_path="samples")


def evaluate_generator(G: nn.Module, real_source: str, eval_cfg: EvalConfig, model_cfg: ModelConfig,
                       fingerprint: str | None = None, seed: int = 0, step: int | None = None) -> EvalResult:
    """eval_cfg.n_samples images from G (noise seed `seed`) against as many real images from real_source."""
    real = real_images(real_source, eval_cfg.n_samples, model_cfg.resolution, model_cfg.channels)
    fake = generated_images(G, eval_cfg.n_samples, model_cfg, seed)
    result = evaluate_images(fake, real, config=eval_cfg, fingerprint=fingerprint)
    if mlflow.active_run() is not None:
        grid = make_grid(to_uint8(sample(G, GRID_N, GRID_SEED, model_cfg.z_dim, model_cfg.num_classes)))
        log_evaluation(result, real, fake, step=step, fixed_grid=grid)
    return result


def infer_image_format(folder: str) -> tuple[int, int]:
    """(resolution, channels) of the first image under folder: its shorter side; 1 for L/LA/I modes, else 3."""
    from PIL import Image

    from models.data import find_images

    paths = find_images(folder)
    if not paths:
        raise ValueError(f"--fake: no png/jpg/jpeg/webp images found under {folder}")
    with Image.open(paths[0]) as img:
        return min(img.size), (1 if img.mode in ("L", "LA", "I", "I;16", "1") else 3)


def evaluate_folder(fake_path: str, real_source: str, eval_cfg: EvalConfig, resolution: int | None = None,
                    channels: int | None = None) -> EvalResult:
    """A folder of generated images against real_source, both read at the fakes' size (or the one given)."""
    res, ch = infer_image_format(fake_path)
    resolution, channels = resolution or res, channels or ch
    fake = load_dataset(fake_path, resolution, channels).images
    if len(fake) > eval_cfg.n_samples:
        fake = fake[:eval_cfg.n_samples]
    real = real_images(real_source, eval_cfg.n_samples, resolution, channels)
    result = evaluate_images(fake, real, config=eval_cfg)
    if mlflow.active_run() is not None:
        log_evaluation(result, real, fake)
    return result
