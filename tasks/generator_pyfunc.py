"""The MLflow pyfunc wrapper of a generator, logged as *code* (models-from-code), never as a pickle.

MLflow copies this file into the logged model and runs it when someone calls
`mlflow.pyfunc.load_model(...)`; `load_context` rebuilds the generator from two plain artifacts:
`config.json` (the resolved Config) and `state_dict.pt` (tensors only, read with weights_only=True).
Input: noise z, float32 (n, z_dim). Output: images, float32 (n, C, H, W) in [-1, 1].
"""

import json

import numpy as np
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel, PythonModelContext

CONFIG_KEY = "config"          # artifact keys in the pyfunc flavor
STATE_DICT_KEY = "state_dict"


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


class GeneratorPyfunc(PythonModel):
    """predict(z) -> images; class-conditional generators cycle labels 0..num_classes-1 over the rows."""

    def load_context(self, context: PythonModelContext) -> None:
        self.G = rebuild_generator(context.artifacts[CONFIG_KEY], context.artifacts[STATE_DICT_KEY])

    def predict(self, context, model_input, params=None):  # no hints: MLflow would re-validate input by them
        z = torch.as_tensor(np.asarray(model_input, dtype=np.float32))          # (n, z_dim)
        if z.ndim != 2 or z.shape[1] != self.G.config.model.z_dim:
            raise ValueError(f"model_input: expected noise of shape (n, {self.G.config.model.z_dim}), "
                             f"got {tuple(z.shape)}")
        k = self.G.config.model.num_classes
        labels = torch.arange(len(z)) % k if k else None
        with torch.no_grad():
            return self.G(z, labels).numpy()                                    # (n, C, H, W)


set_model(GeneratorPyfunc())
