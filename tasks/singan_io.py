"""Log a trained SinGAN as an MLflow model and load it back (weights_only, no pickles); sample from a URI.

What a logged SinGAN holds (pyfunc flavor, models-from-code, like tasks/model_io.py's generator):
    MLmodel                signature: column `seed` (int64) -> images float32 (-1, C, -1, -1); params
                           scale_h, scale_w (float), start_scale (int)
    python_model.py        tasks/singan_pyfunc.py, plain source (no cloudpickle)
    code/models/           the model code, so `mlflow.pyfunc.load_model` works without this repo
    artifacts/singan.pt    models.singan.save_singan: the whole pyramid, read with torch.load(weights_only=True)
`load_singan_model` reads only `singan.pt` and rebuilds with this checkout's `models` package.
`is_singan_uri` tells a SinGAN from a TransSRGAN generator so `transsrgan sample` can dispatch.
"""

import os
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from models.grid import make_grid, save_png, to_uint8
from models.singan import SinGANState, load_singan, sample, sample_at_size, save_singan
from tasks.model_io import _MODELS_URI, ModelNotFoundError, check_model_uri, log_code_model
from tasks.singan_pyfunc import CHECKPOINT_KEY, SEED_COLUMN

PYFUNC_SOURCE = Path(__file__).with_name("singan_pyfunc.py")
ARTIFACT_PATH = "singan"          # the logged model's name in a run: runs:/<id>/singan
REGISTERED_NAME = "singan"
TAG_FAMILY = "model_family"       # version tag model_family=singan (set by tasks.singan_registry)


def signature(channels: int) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec("long", SEED_COLUMN)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, channels, -1, -1))]),
        params=ParamSchema([ParamSpec("scale_h", "double", 1.0), ParamSpec("scale_w", "double", 1.0),
                            ParamSpec("start_scale", "long", 0)]))


def log_singan(state: SinGANState, name: str = ARTIFACT_PATH, *, run_id: str | None = None) -> ModelInfo:
    """Log the trained pyramid of the active run (or `run_id`) as an MLflow pyfunc model named `name`."""
    if not state.done:
        raise ValueError(f"state: expected a fully trained pyramid, got {state.trained_scales}/{state.num_scales} "
                         "scales")
    example = pd.DataFrame({SEED_COLUMN: np.array([0, 1], dtype=np.int64)})
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_singan(state, Path(tmp) / "singan.pt")
        return log_code_model(name, PYFUNC_SOURCE, {CHECKPOINT_KEY: str(ckpt)}, signature(state.config.channels),
                              example, run_id=run_id, who="log_singan")


def _pyfunc_artifacts(model_dir: Path) -> dict:
    return Model.load(str(model_dir)).flavors.get("python_function", {}).get("artifacts", {})


def is_singan_uri(uri: str) -> bool:
    """True for a SinGAN logged by log_singan: by the registered version (name `singan` or tag
    model_family=singan) for models:/NAME@ALIAS and models:/NAME/N, else by the model's MLmodel file."""
    m = _MODELS_URI.match(uri)
    if m and (m["alias"] or m["version"]):
        check_model_uri(uri)
        client = MlflowClient()
        mv = (client.get_model_version_by_alias(m["name"], m["alias"]) if m["alias"]
              else client.get_model_version(m["name"], m["version"]))
        return m["name"] == REGISTERED_NAME or mv.tags.get(TAG_FAMILY) == REGISTERED_NAME
    local = Path(uri)
    if local.is_dir():
        return CHECKPOINT_KEY in _pyfunc_artifacts(local)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            mlmodel = mlflow.artifacts.download_artifacts(artifact_uri=f"{uri.rstrip('/')}/MLmodel", dst_path=tmp)
        except (MlflowException, OSError):
            return False     # not a model folder we can read; the generator loader reports the details
        return CHECKPOINT_KEY in _pyfunc_artifacts(Path(mlmodel).parent)


def load_singan_model(uri: str) -> SinGANState:
    """`models:/singan@champion`, `models:/singan/3`, `runs:/<id>/singan` or a local model dir -> the pyramid.

    Only artifacts/singan.pt is read (torch.load weights_only=True); no pickled or logged code runs.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    check_model_uri(uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(uri) if Path(uri).is_dir() else None
        if local is None:
            try:
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
            except MlflowException as exc:
                raise ModelNotFoundError(f"{uri}: could not download the model: {exc.message}") from exc
        arts = _pyfunc_artifacts(local)
        if CHECKPOINT_KEY not in arts:
            raise ModelNotFoundError(f"{uri}: not a SinGAN logged by tasks.singan_io.log_singan "
                                     f"(expected the pyfunc artifact {CHECKPOINT_KEY!r})")
        return load_singan(local / arts[CHECKPOINT_KEY]["path"], device="cpu")


def singan_samples(state: SinGANState, n: int, seed: int = 0, *, scale_h: float = 1.0, scale_w: float = 1.0,
                   height: int | None = None, width: int | None = None):
    """(n, C, H, W) in [-1, 1]: exactly height x width if given (the other side keeps the aspect ratio),
    else the training size times (scale_h, scale_w). The same arguments always give the same images."""
    if height is None and width is None:
        return sample(state, n, seed, scale_h=scale_h, scale_w=scale_w)
    h0, w0 = state.sizes[-1]
    height = height or max(1, round(h0 * width / w0))
    width = width or max(1, round(w0 * height / h0))
    return sample_at_size(state, n, height, width, seed=seed)


def write_singan_samples(uri: str, n: int, out: str | Path, *, seed: int = 0, each_dir: str | Path | None = None,
                         scale: int = 1, scale_h: float = 1.0, scale_w: float = 1.0, height: int | None = None,
                         width: int | None = None) -> tuple[Path, Path | None, tuple[int, int]]:
    """n SinGAN samples from `uri` as one grid PNG (and one PNG each); returns (grid, each_dir, (H, W))."""
    state = load_singan_model(uri)
    images = to_uint8(singan_samples(state, n, seed, scale_h=scale_h, scale_w=scale_w, height=height,
                                     width=width))                              # (n, H, W, C) uint8
    grid = save_png(make_grid(images), out, scale=scale)
    if each_dir is not None:
        each_dir = Path(each_dir)
        for i, img in enumerate(images):
            save_png(img, each_dir / f"sample_{i:04d}.png")
    return grid, each_dir, (int(images.shape[1]), int(images.shape[2]))
