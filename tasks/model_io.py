"""Log the EMA generator as an MLflow model and load it back, without unpickling anything.

What a logged generator holds (pyfunc flavor, models-from-code):
    MLmodel                       signature: noise float32 (-1, z_dim) -> images float32 (-1, C, H, W)
    python_model.py               tasks/generator_pyfunc.py, plain source (no cloudpickle)
    code/models/                  the model code, so `mlflow.pyfunc.load_model` works without this repo
    artifacts/config.json         the resolved Config
    artifacts/state_dict.pt       tensors only; torch.load(weights_only=True) refuses anything else
`load_generator` reads only the two artifacts and rebuilds with this checkout's `models` package: no
code from the store is executed at all. `mlflow.pyfunc.load_model` runs the logged source file, which
does the same.
"""

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec
from torch import nn

from models.config import Config
from models.step import GANState
from tasks.generator_pyfunc import CONFIG_KEY, STATE_DICT_KEY, rebuild_generator

PYFUNC_SOURCE = Path(__file__).with_name("generator_pyfunc.py")
MODELS_CODE = Path(__file__).resolve().parents[1] / "models"
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))?/?$")


class ModelNotFoundError(LookupError):
    """A registry URI names a model, alias or version that does not exist; the message lists what does."""


def pip_requirements() -> list[str]:
    """Pinned explicitly so log_model does not spend seconds inferring them."""
    return [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"numpy=={np.__version__}"]


def signature(config: Config) -> ModelSignature:
    mc = config.model
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, mc.z_dim))]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32),
                                                     (-1, mc.channels, mc.resolution, mc.resolution))]))


def log_code_model(name: str, python_model: Path, artifacts: dict[str, str], model_signature: ModelSignature,
                   input_example: Any, *, run_id: str | None = None, who: str = "log_code_model") -> ModelInfo:
    """Log a pyfunc model from code (no cloudpickle) with this repository's `models/` package as its code, into
    the active run or `run_id`; `artifacts` are local files that must exist during the call."""
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
            return mlflow.pyfunc.log_model(name=name, python_model=str(python_model), artifacts=artifacts,
                                           code_paths=[str(code)], signature=model_signature,
                                           input_example=input_example, pip_requirements=pip_requirements())


def log_generator(state_or_G: GANState | nn.Module, config: Config, name: str = "generator",
                  *, run_id: str | None = None) -> ModelInfo:
    """Log the EMA generator (or a given module) of the active run (or `run_id`) as an MLflow model."""
    G = state_or_G.G_ema if isinstance(state_or_G, GANState) else state_or_G
    state_dict = {k: v.detach().cpu().contiguous() for k, v in G.state_dict().items()}
    example = np.random.default_rng(0).standard_normal((2, config.model.z_dim)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path, sd_path = Path(tmp) / "config.json", Path(tmp) / "state_dict.pt"
        cfg_path.write_text(config.to_json())
        torch.save(state_dict, sd_path)
        return log_code_model(name, PYFUNC_SOURCE, {CONFIG_KEY: str(cfg_path), STATE_DICT_KEY: str(sd_path)},
                              signature(config), example, run_id=run_id, who="log_generator")


def check_model_uri(uri: str) -> None:
    """Fail early, naming what exists, when a models:/ URI points at no model, alias or version."""
    m = _MODELS_URI.match(uri)
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
                                 f"{', '.join(names) or 'none'} (store {_store()})") from None
    if alias is not None and alias not in model.aliases:
        have = ", ".join(f"{a} (v{v})" for a, v in sorted(model.aliases.items())) or "none"
        raise ModelNotFoundError(f"{uri}: model {name!r} has no alias {alias!r}; aliases: {have}")
    if version is not None:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        if not version.isdigit() or int(version) not in versions:
            raise ModelNotFoundError(f"{uri}: model {name!r} has no version {version!r}; versions: "
                                     f"{', '.join(map(str, versions)) or 'none'}")


def _store() -> str:
    from tasks.tracking import redact

    return redact(mlflow.get_tracking_uri())


def load_generator(uri: str) -> nn.Module:
    """`models:/transsrgan@champion`, `models:/transsrgan/3`, `runs:/<id>/generator` or a local model dir.

    Returns the generator in eval mode with `.config` (the resolved Config). Only the state dict
    (weights_only=True) and the config JSON are read; no pickled or logged code runs.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    check_model_uri(uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        except MlflowException as exc:
            raise ModelNotFoundError(f"{uri}: could not download the model: {exc.message}") from exc
        conf = Model.load(local).flavors.get("python_function", {})
        arts = conf.get("artifacts", {})
        if CONFIG_KEY not in arts or STATE_DICT_KEY not in arts:
            raise ModelNotFoundError(f"{uri}: not a generator logged by tasks.model_io.log_generator "
                                     f"(expected pyfunc artifacts {CONFIG_KEY!r} and {STATE_DICT_KEY!r})")
        return rebuild_generator(str(Path(local) / arts[CONFIG_KEY]["path"]),
                                 str(Path(local) / arts[STATE_DICT_KEY]["path"]))




def write_samples(uri: str, n: int, out: str | Path, *, seed: int = 0, each_dir: str | Path | None = None,
                  scale: int = 2) -> tuple[Path, Path | None]:
    """n images from the model at `uri` as one grid PNG (and one PNG each); the same seed, the same images."""
    from models.grid import make_grid, sample, save_png, to_uint8

    G = load_generator(uri)
    mc = G.config.model
    images = to_uint8(sample(G, n, seed, mc.z_dim, mc.num_classes))            # (n, H, W, C) uint8
    grid = save_png(make_grid(images), out, scale=scale)
    if each_dir is not None:
        each_dir = Path(each_dir)
        for i, img in enumerate(images):
            save_png(img, each_dir / f"sample_{i:04d}.png")
    return grid, each_dir
