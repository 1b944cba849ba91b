"""The MLflow pyfunc wrapper of every logged model (generator or SinGAN), logged as code, never as a pickle."""

# MLflow copies this file into the logged model and runs it on `mlflow.pyfunc.load_model(...)`; `load_context`
# rebuilds the model from plain artifacts with the `models` package shipped in the model's code/ folder:
#   generator  config.json (the resolved Config) + state_dict.pt (tensors only, torch.load weights_only=True)
#              predict(noise float32 (n, z_dim)) -> images float32 (n, C, H, W) in [-1, 1]
#   SinGAN     singan.pt (models.singan.save_singan: tensors, numbers, the config as a dict; weights_only=True)
#              predict(column `seed` int64, one row per image; params scale_h, scale_w, start_scale)
#              -> images float32 (n, C, H, W) in [-1, 1]; row s equals models.singan.sample(state, 1, seed=s)

import json

import numpy as np
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel, PythonModelContext

CONFIG_KEY = "config"          # artifact keys in the pyfunc flavor: config + state_dict = a generator,
STATE_DICT_KEY = "state_dict"
SINGAN_KEY = "singan"          # singan = a SinGAN pyramid
SEED_COLUMN = "seed"


def rebuild_generator(config_path: str, state_dict_path: str) -> torch.nn.Module:
    """Generator in eval mode with `.config` set to the resolved Config; no pickled code is run."""
    from models import build_generator
    from models.config import config_from_dict

    with open(config_path) as fh:
        cfg = config_from_dict(json.load(fh))
    G = build_generator(cfg.model)
    G.load_state_dict(torch.load(state_dict_path, map_location="cpu", weights_only=True))
    G.eval().requires_grad_(False)
    G.config = cfg   # replaces the ModelConfig the constructor stored; cfg.model is that same section
    return G


def rebuild_singan(checkpoint_path: str):
    """The frozen pyramid (models.singan.SinGANState) on the CPU; no pickled code is run."""
    from models.singan import load_singan

    return load_singan(checkpoint_path, device="cpu")


class ModelPyfunc(PythonModel):
    """predict() of the model its artifacts describe: noise -> images (generator) or seeds -> images (SinGAN)."""

    def load_context(self, context: PythonModelContext) -> None:
        arts = context.artifacts
        self.singan = rebuild_singan(arts[SINGAN_KEY]) if SINGAN_KEY in arts else None
        self.G = rebuild_generator(arts[CONFIG_KEY], arts[STATE_DICT_KEY]) if self.singan is None else None

    def predict(self, context, model_input, params=None):  # no hints: MLflow would re-validate input by them
        with torch.no_grad():
            if self.singan is not None:
                return self._predict_singan(model_input, params or {})
            return self._predict_generator(model_input)

    def _predict_generator(self, model_input) -> np.ndarray:
        """Class-conditional generators cycle labels 0..num_classes-1 over the rows."""
        z = torch.as_tensor(np.asarray(model_input, dtype=np.float32))          # (n, z_dim)
        z_dim = self.G.config.model.z_dim
        if z.ndim != 2 or z.shape[1] != z_dim:
            raise ValueError(f"model_input: expected noise of shape (n, {z_dim}), got {tuple(z.shape)}")
        k = self.G.config.model.num_classes
        labels = torch.arange(len(z)) % k if k else None
        return self.G(z, labels).numpy()                                        # (n, C, H, W)

    def _predict_singan(self, model_input, params: dict) -> np.ndarray:
        """One random sample per seed, at the training size times (scale_h, scale_w)."""
        from models.singan import sample

        if hasattr(model_input, "columns"):
            if SEED_COLUMN not in model_input.columns:
                raise ValueError(f"model_input: expected a column {SEED_COLUMN!r}, got {list(model_input.columns)}")
            seeds = model_input[SEED_COLUMN].to_numpy()
        else:
            seeds = np.asarray(model_input).reshape(-1)
        kw = dict(scale_h=float(params.get("scale_h", 1.0)), scale_w=float(params.get("scale_w", 1.0)),
                  start_scale=int(params.get("start_scale", 0)))
        out = [sample(self.singan, 1, int(s), **kw) for s in seeds]              # each (1, C, H, W)
        return torch.cat(out).numpy()                                           # (n, C, H, W)


set_model(ModelPyfunc())
