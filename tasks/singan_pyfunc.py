"""The MLflow pyfunc wrapper of a trained SinGAN pyramid, logged as *code* (models-from-code), never as a pickle.

MLflow copies this file into the logged model and runs it on `mlflow.pyfunc.load_model(...)`; `load_context`
rebuilds the pyramid from one plain artifact, `singan.pt` (models.singan.save_singan: tensors, numbers and the
config as a dict, read with torch.load(weights_only=True)).
Input: a column `seed` (int64), one row per image; row s gives models.singan.sample(state, 1, seed=s).
Params: scale_h, scale_w (resize the pyramid; 1 = the training size), start_scale (0 = most variation).
Output: images, float32 (n, C, H, W) in [-1, 1].
"""

import numpy as np
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel, PythonModelContext

CHECKPOINT_KEY = "singan"      # artifact key in the pyfunc flavor: marks a logged SinGAN (tasks.singan_io)
SEED_COLUMN = "seed"


def rebuild_singan(checkpoint_path: str):
    """The frozen pyramid (models.singan.SinGANState) on the CPU; no pickled code is run."""
    from models.singan import load_singan

    return load_singan(checkpoint_path, device="cpu")


class SinGANPyfunc(PythonModel):
    """predict(seeds) -> one random sample per seed, at the training size times (scale_h, scale_w)."""

    def load_context(self, context: PythonModelContext) -> None:
        self.state = rebuild_singan(context.artifacts[CHECKPOINT_KEY])

    def predict(self, context, model_input, params=None):  # no hints: MLflow would re-validate input by them
        from models.singan import sample

        params = params or {}
        if hasattr(model_input, "columns"):
            if SEED_COLUMN not in model_input.columns:
                raise ValueError(f"model_input: expected a column {SEED_COLUMN!r}, got {list(model_input.columns)}")
            seeds = model_input[SEED_COLUMN].to_numpy()
        else:
            seeds = np.asarray(model_input).reshape(-1)
        kw = dict(scale_h=float(params.get("scale_h", 1.0)), scale_w=float(params.get("scale_w", 1.0)),
                  start_scale=int(params.get("start_scale", 0)))
        with torch.no_grad():
            out = [sample(self.state, 1, int(s), **kw) for s in seeds]        # each (1, C, H, W)
        return torch.cat(out).numpy()                                          # (n, C, H, W)


set_model(SinGANPyfunc())
