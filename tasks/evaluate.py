"""Evaluation adapters: a generator, a folder of fakes or a SinGAN against real data, logged to the active run."""

import dataclasses
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

from models.config import DataConfig, EvalConfig, ModelConfig
from models.data import load_dataset
from models.data.folder import FolderImages, read_folder
from models.data.images import channels_of, load_paths
from models.grid import make_grid, sample, save_png, to_uint8
from models.metrics import EvalResult, evaluate_images
from models.metrics.evaluate import real_subset, real_subsets
from models.metrics.plots import save_real_vs_fake
from models.metrics.sifid import sifid, sifid_extractor, sifid_metric_name
from models.paths import data_home, user_path
from models.singan import SinGANState, diversity, reconstruct, reconstruction_rmse
from models.singan import sample as singan_sample
from tasks.tags import SAMPLES_DIR, TAG_EXTRACTOR
from tasks.tracking import EVALUATION, log_dataset

GRID_SEED, GRID_N = 0, 64  # fixed noise: successive evaluations show progress on the same z
FILE_CHECKS = DataConfig()  # folders are read with the data gate's default file checks (max_pixels, formats, modes)

OnRead = Callable[[str, FolderImages], None]   # ("fake" | "real", what reading the folder used and skipped)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What registration and a flow's summary need of an evaluation, for either family: small values only."""

    metrics: dict[str, float]
    extractor: str
    standard_weights: bool
    primary_metric: str
    feature_images_per_s: float = 0.0
    eval_size: tuple[int, int] | None = None    # SinGAN: (H, W) SIFID was measured at (it depends on the size)

    @classmethod
    def of(cls, result: EvalResult) -> "Evaluation":
        return cls({k: float(v) for k, v in result.metrics.items()}, result.extractor, bool(result.standard_weights),
                   result.primary_metric_name, float(result.feature_images_per_s))


def min_images(eval_cfg: EvalConfig) -> int:
    """Images each side needs: more than eval.prdc_k when PRDC is computed, else 2."""
    return eval_cfg.prdc_k + 1 if "prdc" in eval_cfg.metrics else 2


def _manifest_images(side: str, source: str, resolution: int | None, channels: int | None,
                     limit: int) -> np.ndarray:
    """A gate's manifest.parquet, read as is (its files passed the gate); ImageReadError names a file gone bad."""
    try:
        table = pq.read_table(source, columns=["path", "width", "height", "mode"]).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a file that is not a manifest
        raise ValueError(f"{side} images {source}: not a manifest.parquet written by `transsrgan validate` "
                         f"({type(exc).__name__}: {exc})") from None
    if not table:
        raise ValueError(f"{side} images {source}: the manifest lists no valid images")
    rows = table[:limit] if limit else table
    resolution = resolution or min(rows[0]["width"], rows[0]["height"])
    return load_paths([r["path"] for r in rows], resolution, channels or channels_of(rows[0]["mode"]))


def read_images(side: str, source: str, need: int = 2, resolution: int | None = None, channels: int | None = None,
                *, limit: int = 0, on_read: OnRead | None = None) -> np.ndarray:
    """uint8 (N, C, H, W) from 'digits', a gate's manifest.parquet (as is) or a folder read through the gate's file
    checks (models.data.folder.read_folder: bad files are skipped with a reason and reported to on_read).

    resolution / channels default to the first image's; ValueError names `source` when fewer than `need` images
    remain, or when it is none of the three.
    """
    path = user_path(source)
    if source == "digits":
        images = load_dataset(source, resolution or 32, channels or 1, limit).images
    elif path.suffix == ".parquet" and path.is_file():
        images = _manifest_images(side, str(path), resolution, channels, limit)
    elif path.is_dir():
        found = read_folder(path, resolution, channels, max_pixels=FILE_CHECKS.max_pixels,
                            formats=FILE_CHECKS.allowed_formats, modes=FILE_CHECKS.allowed_modes, limit=limit)
        if on_read is not None:
            on_read(side, found)
        images = found.images
        if len(images) < need:
            why = f" (skipped: {found.counts()})" if found.skipped else ""
            raise ValueError(f"{side} images {source}: {len(images)} usable of {found.n_entries} entries, expected "
                             f"at least {need}{why}")
    elif path.exists():
        raise ValueError(f"{side} images {source}: expected a folder of images or a manifest.parquet, got a file")
    else:
        raise FileNotFoundError(f"{side} images {source}: does not exist")
    if len(images) < need:
        raise ValueError(f"{side} images {source}: {len(images)} images, expected at least {need}")
    return images


def real_images(real_source: str, n: int, resolution: int, channels: int, need: int = 2,
                on_read: OnRead | None = None) -> np.ndarray:
    """uint8 (min(n, N), C, H, W): the fixed random subset of the real data (models.metrics.evaluate.real_subset)."""
    return real_subset(read_images("real", real_source, need, resolution, channels, on_read=on_read), n)


def real_sets(real_source: str, n: int, resolution: int, channels: int, need: int = 2,
              on_read: OnRead | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(compared, floor partner): models.metrics.evaluate.real_subsets of the real data, disjoint; the partner has
    n images when the data has 2n (else the floors halve the compared subset)."""
    return real_subsets(read_images("real", real_source, need, resolution, channels, on_read=on_read), n)


def _is_manifest(source: str) -> bool:
    path = user_path(source)
    return path.suffix == ".parquet" and path.is_file()


def data_domain(source: str) -> str | None:
    """'digits' when `source` is the embedded digits: the name, or their copy that the data gate validates
    (tasks.data_gate.materialise_digits: data_home()/datasets/digits[-<side>]) as a folder or through the
    `transsrgan.source` of its manifest; else None. The domain's own metrics (models.metrics.digits) then run."""
    if source == "digits":
        return "digits"
    path = user_path(source)
    if path.suffix == ".parquet" and path.is_file():
        try:
            meta = pq.read_schema(path).metadata or {}
        except Exception:  # noqa: BLE001 - not a manifest: no domain, and read_images names the problem
            return None
        path = Path(meta.get(b"transsrgan.source", b"").decode())
    named = re.fullmatch(r"digits(-\d+)?", path.name) is not None
    return "digits" if named and path.resolve().parent == (data_home() / "datasets").resolve() else None


def generated_images(G: nn.Module, n: int, model_cfg: ModelConfig, seed: int) -> np.ndarray:
    """uint8 (n, C, H, W) from models.grid.sample (deterministic in seed)."""
    return to_uint8(sample(G, n, seed, model_cfg.z_dim, model_cfg.num_classes)).transpose(0, 3, 1, 2).copy()


def log_evaluation(result: EvalResult, real: np.ndarray, fake: np.ndarray, *, step: int | None = None,
                   fixed_grid: np.ndarray | None = None) -> None:
    """Metrics, the tag feature_extractor and pictures under samples/ into the active MLflow run."""
    mlflow.log_metrics(result.metrics, step=step)
    mlflow.log_metric("feature_images_per_s", result.feature_images_per_s, step=step)
    if result.floor_n:                          # images per real subset behind the *_floor metrics
        mlflow.log_metric("floor_n", result.floor_n, step=step)
    mlflow.set_tag(TAG_EXTRACTOR, result.extractor)
    suffix = f"_step_{step:06d}" if step is not None else ""
    with tempfile.TemporaryDirectory() as tmp:
        save_real_vs_fake(real, fake, Path(tmp) / f"real_vs_fake{suffix}.png")
        if fixed_grid is not None:
            save_png(fixed_grid, Path(tmp) / f"eval_fixed_noise{suffix}.png", scale=2)
        mlflow.log_artifacts(tmp, artifact_path=SAMPLES_DIR)


def evaluate_generator(G: nn.Module, real_source: str, eval_cfg: EvalConfig, model_cfg: ModelConfig,
                       fingerprint: str | None = None, seed: int = 0, step: int | None = None,
                       on_read: OnRead | None = None) -> EvalResult:
    """eval_cfg.n_samples images from G (noise seed `seed`) against as many real images from real_source; with an
    active MLflow run also the metrics, pictures and (for a gate's manifest) the real subset as input dataset."""
    real, floor_real = real_sets(real_source, eval_cfg.n_samples, model_cfg.resolution, model_cfg.channels,
                                 min_images(eval_cfg), on_read)
    fake = generated_images(G, eval_cfg.n_samples, model_cfg, seed)
    result = evaluate_images(fake, real, config=eval_cfg, fingerprint=fingerprint, floor_real=floor_real,
                             domain=data_domain(real_source))
    if mlflow.active_run() is not None:
        grid = make_grid(to_uint8(sample(G, GRID_N, GRID_SEED, model_cfg.z_dim, model_cfg.num_classes)))
        log_evaluation(result, real, fake, step=step, fixed_grid=grid)
        if _is_manifest(real_source):              # the real subset as the run's `evaluation` dataset
            log_dataset(real_source, EVALUATION, subset=len(real))
    return result


def evaluate_folder(fake_path: str, real_source: str, eval_cfg: EvalConfig, resolution: int | None = None,
                    channels: int | None = None, on_read: OnRead | None = None) -> EvalResult:
    """A folder (or manifest) of generated images against real_source, both read at the fakes' size (or the one
    given); at most eval_cfg.n_samples fakes are decoded."""
    need = min_images(eval_cfg)
    fake = read_images("fake", fake_path, need, resolution, channels, limit=eval_cfg.n_samples, on_read=on_read)
    _, channels, resolution, _ = fake.shape                                  # (N, C, H, W)
    real, floor_real = real_sets(real_source, eval_cfg.n_samples, resolution, channels, need, on_read)
    result = evaluate_images(fake, real, config=eval_cfg, floor_real=floor_real, domain=data_domain(real_source))
    if mlflow.active_run() is not None:
        log_evaluation(result, real, fake)
    return result


def evaluate_singan(state: SinGANState, n_samples: int, allow_random_features: bool, seed: int = 0) -> Evaluation:
    """SIFID (models.metrics.sifid), diversity and reconstruction RMSE of n_samples random samples at the training
    size; with an active MLflow run also the metrics, the extractor tag and pictures under samples/."""
    net, extractor, standard = sifid_extractor(allow_random_features)
    fakes = singan_sample(state, n_samples, seed)                         # (n, C, H, W) in [-1, 1]
    rec = reconstruct(state)                                              # (1, C, H, W)
    name = sifid_metric_name(standard)
    metrics = {name: sifid(state.image, fakes, net), "diversity": diversity(fakes, state.image),
               "reconstruction_rmse": reconstruction_rmse(state)}
    if mlflow.active_run() is not None:
        mlflow.log_metrics(metrics)
        mlflow.set_tag(TAG_EXTRACTOR, extractor)
        with tempfile.TemporaryDirectory() as tmp:
            save_png(make_grid(to_uint8(fakes)), Path(tmp) / "eval_samples.png", scale=2)
            save_png(make_grid(to_uint8(torch.cat([state.image, rec]))), Path(tmp) / "real_vs_reconstruction.png",
                     scale=2)
            mlflow.log_artifacts(tmp, SAMPLES_DIR)
    h, w = state.sizes[-1]
    return Evaluation(metrics, extractor, standard, name, eval_size=(int(h), int(w)))
