"""The model store: log both model families as MLflow models, load them back without unpickling, sample them."""

# What a logged model holds (pyfunc flavor, models-from-code; tasks/pyfunc.py says what predict() takes):
#   MLmodel               signature (tasks.pyfunc.signature): columns seed, label, z (generator) or seed (SinGAN)
#                         -> images float32 (-1, C, H, W); params n, output, SinGAN's scale_h, scale_w, start_scale
#   pyfunc.py             tasks/pyfunc.py, plain source (no cloudpickle)
#   code/models/          the model code, so `mlflow.pyfunc.load_model` works without this repository
#   artifacts/            generator: config.json + state_dict.pt; SinGAN: singan.pt (all read with weights_only)
# `load_model` reads only those artifacts and rebuilds with this checkout's `models` package: no code from the
# store runs at all. It dispatches on the artifacts, so runs:/ URIs and local folders work as well as models:/.

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient
from torch import nn

from models.config import Config
from models.files import OutputFolder
from models.grid import interpolate as generator_interpolate
from models.grid import make_grid, save_png, to_uint8
from models.grid import sample as generator_sample
from models.singan import SinGANState, sample_at_size, save_singan
from models.singan import sample as singan_sample
from models.step import GANState
from tasks.pyfunc import (
    CONFIG_KEY,
    SEED_COLUMN,
    SINGAN_KEY,
    STATE_DICT_KEY,
    rebuild_generator,
    rebuild_singan,
)
from tasks.pyfunc import signature as pyfunc_signature
from tasks.tracking import redact

PYFUNC_SOURCE = Path(__file__).with_name("pyfunc.py")
MODELS_CODE = Path(__file__).resolve().parents[1] / "models"
GENERATOR, SINGAN = "generator", "singan"    # the two kinds of logged model, and their names in a run
MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))?/?$")

LoadedModel = nn.Module | SinGANState          # what load_model returns: a generator or a SinGAN pyramid


class ModelNotFoundError(LookupError):
    """A URI names a model, alias or version that does not exist, or no model of ours; the message says what does."""


def artifact_path(family: str) -> str:
    """The logged model's name in its run for a model family: `singan` for SinGAN, else `generator`."""
    return SINGAN if family == SINGAN else GENERATOR


# ---------------------------------------------------------------- logging

def pip_requirements() -> list[str]:
    """Pinned explicitly so log_model does not spend seconds inferring them."""
    return [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"numpy=={np.__version__}"]


def generator_signature(config: Config) -> ModelSignature:
    mc = config.model
    return pyfunc_signature(z_dim=mc.z_dim, channels=mc.channels, resolution=mc.resolution)


def singan_signature(channels: int) -> ModelSignature:
    return pyfunc_signature(z_dim=None, channels=channels)


def _log_code_model(name: str, artifacts: dict[str, str], model_signature: ModelSignature, input_example: Any,
                    run_id: str | None, who: str) -> ModelInfo:
    """Log tasks/pyfunc.py with this repository's `models/` package as its code, into the active run or `run_id`;
    `artifacts` are local files that must exist during the call."""
    with tempfile.TemporaryDirectory() as tmp:
        code = shutil.copytree(MODELS_CODE, Path(tmp) / "code" / "models",
                               ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        active = mlflow.active_run()
        resume = run_id is not None and (active is None or active.info.run_id != run_id)
        # MLflow warns that predict() has no type hints, on purpose: the logged signature validates the input
        # (its own `simplefilter("once")` around class creation makes that warning impossible to filter here).
        with mlflow.start_run(run_id=run_id) if resume else contextlib.nullcontext():
            if mlflow.active_run() is None:
                raise RuntimeError(f"{who}: no active MLflow run; pass run_id= or use start_training_run")
            return mlflow.pyfunc.log_model(name=name, python_model=str(PYFUNC_SOURCE), artifacts=artifacts,
                                           code_paths=[str(code)], signature=model_signature,
                                           input_example=input_example, pip_requirements=pip_requirements())


def log_generator(state_or_G: GANState | nn.Module, config: Config, name: str = GENERATOR,
                  *, run_id: str | None = None) -> ModelInfo:
    """Log the EMA generator (or a given module) of the active run (or `run_id`) as an MLflow model."""
    G = state_or_G.G_ema if isinstance(state_or_G, GANState) else state_or_G
    state_dict = {k: v.detach().cpu().contiguous() for k, v in G.state_dict().items()}
    example = pd.DataFrame({SEED_COLUMN: np.array([0, 1], dtype=np.int64)})
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path, sd_path = Path(tmp) / "config.json", Path(tmp) / "state_dict.pt"
        cfg_path.write_text(config.to_json())
        torch.save(state_dict, sd_path)
        return _log_code_model(name, {CONFIG_KEY: str(cfg_path), STATE_DICT_KEY: str(sd_path)},
                               generator_signature(config), example, run_id, "log_generator")


def log_singan(state: SinGANState, name: str = SINGAN, *, run_id: str | None = None) -> ModelInfo:
    """Log the trained pyramid of the active run (or `run_id`) as an MLflow model."""
    if not state.done:
        raise ValueError(f"state: expected a fully trained pyramid, got {state.trained_scales}/{state.num_scales} "
                         "scales")
    example = pd.DataFrame({SEED_COLUMN: np.array([0, 1], dtype=np.int64)})
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_singan(state, Path(tmp) / "singan.pt")
        return _log_code_model(name, {SINGAN_KEY: str(ckpt)}, singan_signature(state.config.channels), example,
                               run_id, "log_singan")


# ---------------------------------------------------------------- loading

def check_model_uri(uri: str) -> None:
    """Fail early, naming what exists, when a models:/ URI points at no model, alias or version."""
    m = MODELS_URI.match(uri)
    if not m:
        return
    client = MlflowClient()
    name, alias, version = m["name"], m["alias"], m["version"]
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        names = sorted(rm.name for rm in client.search_registered_models())
        raise ModelNotFoundError(f"{uri}: no registered model named {name!r}; registered models: "
                                 f"{', '.join(names) or 'none'} (store {redact(mlflow.get_tracking_uri())})") from None
    if alias is not None and alias not in model.aliases:
        have = ", ".join(f"{a} (v{v})" for a, v in sorted(model.aliases.items())) or "none"
        raise ModelNotFoundError(f"{uri}: model {name!r} has no alias {alias!r}; aliases: {have}")
    if version is not None:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        if not version.isdigit() or int(version) not in versions:
            raise ModelNotFoundError(f"{uri}: model {name!r} has no version {version!r}; versions: "
                                     f"{', '.join(map(str, versions)) or 'none'}")


def load_model(uri: str) -> LoadedModel:
    """`models:/NAME@ALIAS`, `models:/NAME/N`, `runs:/<id>/generator|singan` or a local model folder -> the model.

    A generator comes back in eval mode with `.config` (the resolved Config); a SinGAN as its frozen pyramid on
    the CPU. Only the artifacts are read (torch.load weights_only=True); no pickled or logged code runs.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if not uri.strip():
        raise ModelNotFoundError(f"{uri!r}: expected a model URI such as models:/transsrgan@champion")
    check_model_uri(uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(uri) if Path(uri).is_dir() else None
        if local is None:
            try:
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
            except MlflowException as exc:
                raise ModelNotFoundError(f"{uri}: could not download the model: {exc.message}") from exc
        try:
            flavors = Model.load(str(local)).flavors
        except MlflowException as exc:      # a folder or run path without an MLmodel file
            raise ModelNotFoundError(f"{uri}: not a logged model: {exc.message}") from exc
        arts = {k: str(local / v["path"]) for k, v in flavors.get("python_function", {}).get("artifacts", {}).items()}
        if SINGAN_KEY in arts:
            return rebuild_singan(arts[SINGAN_KEY])
        if CONFIG_KEY in arts and STATE_DICT_KEY in arts:
            return rebuild_generator(arts[CONFIG_KEY], arts[STATE_DICT_KEY])
    raise ModelNotFoundError(f"{uri}: not a model logged by tasks.model_io (expected the pyfunc artifacts "
                             f"{CONFIG_KEY!r} and {STATE_DICT_KEY!r} of a generator, or {SINGAN_KEY!r} of a SinGAN)")


def load_generator(uri: str) -> nn.Module:
    """load_model for callers that need a generator (evaluation, `G(z)`); a SinGAN is a clear error."""
    model = load_model(uri)
    if isinstance(model, SinGANState):
        raise ModelNotFoundError(f"{uri}: a SinGAN pyramid, not a generator (use load_model or load_singan_model)")
    return model


def load_singan_model(uri: str) -> SinGANState:
    """load_model for callers that need a SinGAN pyramid; a generator is a clear error."""
    model = load_model(uri)
    if not isinstance(model, SinGANState):
        raise ModelNotFoundError(f"{uri}: a generator, not a SinGAN (use load_model or load_generator)")
    return model


# ---------------------------------------------------------------- sampling

def sample_images(model: LoadedModel, n: int, seed: int = 0, *, scale_h: float = 1.0, scale_w: float = 1.0,
                  height: int | None = None, width: int | None = None, truncation: float = 1.0,
                  interpolate_steps: int = 0) -> np.ndarray:
    """uint8 (n, H, W, C): the same arguments always give the same images.

    Sizes are for SinGAN only: exactly height x width if given (the other side keeps the aspect ratio), else the
    training size times (scale_h, scale_w). A generator has one size; asking it for another is a ValueError.
    truncation (psi in (0, 1], 1 = off) and interpolate_steps (> 0: n rows of that many images, each row a slerp
    between two seeds; models.grid.interpolate) are for generators only.
    """
    if not isinstance(model, SinGANState):
        if (scale_h, scale_w, height, width) != (1.0, 1.0, None, None):
            raise ValueError("scale_h, scale_w, height, width: only a SinGAN takes an output size; this is a "
                             "fixed-size generator")
        mc = model.config.model
        if interpolate_steps:
            return to_uint8(generator_interpolate(model, n, interpolate_steps, seed, mc.z_dim, mc.num_classes,
                                                  truncation=truncation))
        return to_uint8(generator_sample(model, n, seed, mc.z_dim, mc.num_classes, truncation=truncation))
    if (truncation, interpolate_steps) != (1.0, 0):
        raise ValueError("truncation, interpolate_steps: only for a generator's Gaussian latent; this is a SinGAN")
    if height is None and width is None:
        return to_uint8(singan_sample(model, n, seed, scale_h=scale_h, scale_w=scale_w))
    h0, w0 = model.sizes[-1]
    height = height or max(1, round(h0 * width / w0))
    width = width or max(1, round(w0 * height / h0))
    return to_uint8(sample_at_size(model, n, height, width, seed=seed))


def write_samples(model: LoadedModel, n: int, out: str | Path, *, seed: int = 0, each_dir: str | Path | None = None,
                  scale: int = 2, nrow: int | None = None, **size: Any) -> tuple[Path, Path | None, tuple[int, int]]:
    """n samples as one grid PNG (and one PNG each in `each_dir`); returns (grid, each_dir, (H, W)).

    `size` (scale_h, scale_w, height, width) is for SinGAN only, truncation and interpolate_steps for generators
    only, as in sample_images; an interpolation grid has one row per seed pair.
    """
    images = sample_images(model, n, seed, **size)                               # (n, H, W, C) uint8
    grid = save_png(make_grid(images, size.get("interpolate_steps") or nrow), out, scale=scale)
    if each_dir is not None:
        each_dir = Path(each_dir)
        with OutputFolder(each_dir, "sample") as folder:   # replaces only earlier samples (models.files)
            for i, img in enumerate(images):
                save_png(img, folder.claim(f"sample_{i:04d}.png"))
    return grid, each_dir, (int(images.shape[1]), int(images.shape[2]))
