"""The MLflow pyfunc wrapper of every logged model (generator or SinGAN), logged as code, never as a pickle."""

# MLflow copies this file into the logged model and runs it on `mlflow.pyfunc.load_model(...)` and in
# `mlflow models serve`; `load_context` rebuilds the model from plain artifacts with the `models` package shipped
# in the model's code/ folder:
#   generator  config.json (the resolved Config) + state_dict.pt (tensors only, torch.load weights_only=True)
#   SinGAN     singan.pt (models.singan.save_singan: tensors, numbers, the config as a dict; weights_only=True)
#
# predict() takes one row per request item and returns rows x n images (docs/mlflow.md, "Serving over REST"):
#   columns  seed   int64: n images from that seed, the same as `transsrgan sample --seed S -n N` gives
#            label  int64, optional: the class of a conditional generator (default: labels cycle 0..k-1)
#            z      n_z floats, instead of seed (generators only): exactly that latent, one image per row
#   params   n (int, 1): images per seed row; output ("array" | "png"); SinGAN also scale_h, scale_w, start_scale;
#            generators also truncation (float in (0, 1], 1 = off; seed rows, as `sample --truncation`)
#   result   output=array: float32 (rows x n, C, H, W) in [-1, 1]; output=png: one base64 PNG string per image
# A bad request raises MlflowException(INVALID_PARAMETER_VALUE) with one line naming the field, which the scoring
# server answers with HTTP 400 (any other exception would be a 400 with a traceback attached).

import base64
import dataclasses
import io
import json
from typing import Any

import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, set_model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema, TensorSpec
from mlflow.types.schema import Array

CONFIG_KEY = "config"          # artifact keys in the pyfunc flavor: config + state_dict = a generator,
STATE_DICT_KEY = "state_dict"
SINGAN_KEY = "singan"          # singan = a SinGAN pyramid
SEED_COLUMN, LABEL_COLUMN, Z_COLUMN = "seed", "label", "z"
OUTPUTS = ("array", "png")
MAX_IMAGES = 1024              # per request: more is a 400, not a server out of memory


# ---------------------------------------------------------------- what a request holds

class PayloadError(MlflowException):
    """A request predict() cannot serve; one line naming the field (HTTP 400 from `mlflow models serve`)."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)
        self.reason = message

    def serialize_as_json(self) -> str:
        # the scoring server prefixes `message` with a dump of the whole input; the answer keeps our one line
        return json.dumps({"error_code": self.error_code, "message": self.reason})


@dataclasses.dataclass(frozen=True)
class Request:
    """One predict() call, checked: either seeds (n images each) or z rows (one image each)."""

    seeds: list[int] | None = None
    z: np.ndarray | None = None           # float32 (rows, z_dim)
    labels: list[int] | None = None       # one per row, or None
    n: int = 1
    output: str = "array"
    size: dict[str, Any] = dataclasses.field(default_factory=dict)   # SinGAN: scale_h, scale_w, start_scale
    truncation: float = 1.0               # generators' seed rows: models.grid.truncate

    @property
    def rows(self) -> int:
        return len(self.seeds) if self.seeds is not None else len(self.z)


def _column(frame, name: str) -> list | None:
    if name not in frame.columns:
        return None
    values = frame[name].tolist()
    if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in values):
        raise PayloadError(f"{name}: give it in every row or in none")
    return values


def _ints(name: str, values: list) -> list[int]:
    try:
        out = [int(v) for v in values]
    except (TypeError, ValueError):
        raise PayloadError(f"{name}: expected integers, got {values[:3]!r}") from None
    if any(out[i] != values[i] for i in range(len(out))):
        raise PayloadError(f"{name}: expected integers, got {values[:3]!r}")
    return out


def parse_request(model_input: Any, params: dict[str, Any] | None, *, z_dim: int | None, num_classes: int = 0,
                  singan: bool = False) -> Request:
    """model_input (a DataFrame with columns seed / label / z, or a mapping of them) and params -> a checked
    Request; PayloadError names the first thing wrong. z_dim None: the model takes seeds only (SinGAN)."""
    import pandas as pd

    params = params or {}
    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(
        dict(model_input) if isinstance(model_input, dict) else {SEED_COLUMN: np.asarray(model_input).reshape(-1)})
    if SEED_COLUMN not in frame.columns and Z_COLUMN not in frame.columns:    # MLflow drops unknown columns
        raise PayloadError("input: expected a column seed (or z), one row per request item, e.g. "
                           "{\"dataframe_records\": [{\"seed\": 0}]}")
    if len(frame) == 0:
        raise PayloadError("input: no rows; send one row per seed")
    seeds, labels, z = (_column(frame, c) for c in (SEED_COLUMN, LABEL_COLUMN, Z_COLUMN))
    n = params.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise PayloadError(f"n: expected an integer >= 1, got {n!r}")
    output = params.get("output", "array")
    if output not in OUTPUTS:
        raise PayloadError(f"output: expected one of {', '.join(OUTPUTS)}, got {output!r}")
    if (seeds is None) == (z is None):
        raise PayloadError("input: give a seed column or a z column (not both)")
    if z is not None:
        if z_dim is None:
            raise PayloadError("z: this model takes seeds only (a SinGAN's noise is per scale)")
        if n != 1:
            raise PayloadError(f"n: a z row is one image; n must be 1 with z, got {n}")
        try:
            z = np.asarray([np.asarray(v, dtype=np.float32).reshape(-1) for v in z])
        except (TypeError, ValueError):
            raise PayloadError("z: expected a list of numbers per row") from None
        if z.ndim != 2 or z.shape[1] != z_dim or not np.isfinite(z).all():
            raise PayloadError(f"z: expected {z_dim} finite numbers per row, got shape {z.shape}")
    else:
        seeds = _ints(SEED_COLUMN, seeds)
        if any(not 0 <= s < 2 ** 63 for s in seeds):
            raise PayloadError("seed: expected integers in [0, 2^63)")
    if labels is not None:
        if not num_classes:
            raise PayloadError("label: this model is unconditional; leave the label out")
        labels = _ints(LABEL_COLUMN, labels)
        if any(not 0 <= v < num_classes for v in labels):
            raise PayloadError(f"label: expected integers in [0, {num_classes}), got {labels[:5]}")
    rows = len(seeds) if seeds is not None else len(z)
    if rows * n > MAX_IMAGES:
        raise PayloadError(f"input: {rows} rows x n={n} = {rows * n} images; at most {MAX_IMAGES} per request")
    size = {k: params[k] for k in ("scale_h", "scale_w", "start_scale") if k in params} if singan else {}
    psi = params.get("truncation", 1.0)
    if isinstance(psi, bool) or not isinstance(psi, (int, float, np.number)) or not 0 < psi <= 1:
        raise PayloadError(f"truncation: expected a number in (0, 1] (1 = off), got {psi!r}")
    if psi != 1 and (singan or z is not None):
        raise PayloadError("truncation: only for a generator's seed rows (with z rows, send truncation x z)")
    return Request(seeds=seeds, z=z, labels=labels, n=int(n), output=output, size=size, truncation=float(psi))


def signature(*, z_dim: int | None, channels: int, resolution: int | None = None) -> ModelSignature:
    """The logged signature of what parse_request takes: z_dim None (SinGAN: seeds, any output size) or a
    generator's latent size; params n and output, and SinGAN's size params."""
    params = [ParamSpec("n", DataType.long, 1), ParamSpec("output", DataType.string, "array")]
    if z_dim is None:
        inputs = Schema([ColSpec(DataType.long, SEED_COLUMN)])
        params += [ParamSpec("scale_h", DataType.double, 1.0), ParamSpec("scale_w", DataType.double, 1.0),
                   ParamSpec("start_scale", DataType.long, 0)]
    else:
        params += [ParamSpec("truncation", DataType.double, 1.0)]
        inputs = Schema([ColSpec(DataType.long, SEED_COLUMN, required=False),
                         ColSpec(DataType.long, LABEL_COLUMN, required=False),
                         ColSpec(Array(DataType.double), Z_COLUMN, required=False)])
    side = resolution or -1
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, channels, side, side))])
    return ModelSignature(inputs=inputs, outputs=outputs, params=ParamSchema(params))


# ---------------------------------------------------------------- rebuilding the model

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


def png_base64(images: torch.Tensor) -> list[str]:
    """(N, C, H, W) in [-1, 1] -> one base64 PNG (8-bit gray or RGB) per image."""
    from PIL import Image

    from models.grid import to_uint8

    out = []
    for img in to_uint8(images):                                           # (H, W, C) uint8
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


class ModelPyfunc(PythonModel):
    """predict() of the model its artifacts describe: seeds (or z) -> images, for a generator or a SinGAN."""

    def load_context(self, context: PythonModelContext) -> None:
        arts = context.artifacts
        self.singan = rebuild_singan(arts[SINGAN_KEY]) if SINGAN_KEY in arts else None
        self.G = rebuild_generator(arts[CONFIG_KEY], arts[STATE_DICT_KEY]) if self.singan is None else None

    def predict(self, context, model_input, params=None):  # no hints: MLflow would re-validate input by them
        if self.singan is not None:
            request = parse_request(model_input, params, z_dim=None, singan=True)
        else:
            mc = self.G.config.model
            request = parse_request(model_input, params, z_dim=mc.z_dim, num_classes=mc.num_classes)
        with torch.no_grad():
            images = self._singan(request) if self.singan is not None else self._generator(request)   # (N, C, H, W)
        return png_base64(images) if request.output == "png" else images.numpy()

    def _generator(self, r: Request) -> torch.Tensor:
        """Row i: n images from seed i (z as models.grid.sample draws it), or its own z; labels cycle 0..k-1
        over each row's images unless the row names one."""
        from models.grid import noise, truncate

        mc = self.G.config.model
        k = mc.num_classes
        if r.z is not None:
            z = torch.from_numpy(r.z)                                                      # (rows, z_dim)
            labels = torch.tensor(r.labels) if r.labels else (torch.arange(len(z)) % k if k else None)
            return self.G(z, labels)
        out = []
        for i, seed in enumerate(r.seeds):
            z = truncate(noise(r.n, mc.z_dim, seed), r.truncation)                        # (n, z_dim)
            labels = None
            if k:
                labels = torch.full((r.n,), r.labels[i]) if r.labels else torch.arange(r.n) % k
            out.append(self.G(z, labels))
        return torch.cat(out)

    def _singan(self, r: Request) -> torch.Tensor:
        """Row i: models.singan.sample(state, n, seed_i) at the training size times (scale_h, scale_w)."""
        from models.singan import sample

        kw = dict(scale_h=float(r.size.get("scale_h", 1.0)), scale_w=float(r.size.get("scale_w", 1.0)),
                  start_scale=int(r.size.get("start_scale", 0)))
        try:
            return torch.cat([sample(self.singan, r.n, seed, **kw) for seed in r.seeds])
        except ValueError as exc:                   # a size the pyramid cannot take: the message names it
            raise PayloadError(str(exc).splitlines()[0]) from None


set_model(ModelPyfunc())
