"""One typed config tree (model, train, data, spark, eval) with presets; every layer receives only its part."""

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

ARCHS = ("transsrgan", "dcgan")
LOSSES = ("wgan", "hinge", "ns")
PENALTIES = ("gp", "r1", "dragan", "none")
NORMS = ("group", "instance", "none")
RESOLUTIONS = (16, 32, 64, 128)


class ConfigError(ValueError):
    """A config field has a bad value; the message names the field and what was expected."""


def _check(cond: bool, name: str, expected: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{name}: expected {expected}, got {value!r}")


@dataclass
class ModelConfig:
    arch: Literal["transsrgan", "dcgan"] = "transsrgan"
    resolution: int = 32          # output side in pixels: 16, 32, 64 or 128
    channels: int = 1             # 1 = grayscale, 3 = RGB
    z_dim: int = 128
    num_classes: int = 0          # 0 = unconditional; >0 adds a label embedding to z
    # TransSRGAN generator: z -> (token_grid x token_grid) tokens of width `dim` -> transformer -> CNN upsampler
    token_grid: int = 8
    dim: int = 128
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 2.0
    g_channels: int = 128         # channels after the first upsampling block; halves per block, floor 32
    g_norm: Literal["group", "instance", "none"] = "group"   # per-sample norms keep DFAGD == reference
    # Discriminator (shared by TransSRGAN and DCGAN)
    d_channels: int = 64
    d_max_channels: int = 256
    d_residual: bool = False
    # DCGAN baseline generator width
    dcgan_channels: int = 256

    def validate(self) -> None:
        _check(self.arch in ARCHS, "model.arch", f"one of {ARCHS}", self.arch)
        _check(self.resolution in RESOLUTIONS, "model.resolution", f"one of {RESOLUTIONS}", self.resolution)
        _check(self.channels in (1, 3), "model.channels", "1 (grayscale) or 3 (RGB)", self.channels)
        _check(self.z_dim >= 1, "model.z_dim", ">= 1", self.z_dim)
        _check(self.num_classes >= 0, "model.num_classes", ">= 0", self.num_classes)
        _check(self.g_norm in NORMS, "model.g_norm", f"one of {NORMS}", self.g_norm)
        if self.arch == "transsrgan":
            _check(self.token_grid >= 1 and self.token_grid <= self.resolution, "model.token_grid",
                   f"between 1 and model.resolution ({self.resolution})", self.token_grid)
            ratio = self.resolution / self.token_grid
            _check(ratio == int(ratio) and (int(ratio) & (int(ratio) - 1)) == 0, "model.token_grid",
                   f"resolution / token_grid to be a power of two (resolution {self.resolution})", self.token_grid)
            _check(self.dim >= 1 and self.heads >= 1 and self.dim % self.heads == 0, "model.heads",
                   f"a divisor of model.dim ({self.dim})", self.heads)
            _check(self.depth >= 0, "model.depth", ">= 0", self.depth)
        _check(self.d_channels >= 8, "model.d_channels", ">= 8", self.d_channels)

    @property
    def upsample_blocks(self) -> int:
        return int(round(math.log2(self.resolution / self.token_grid)))


@dataclass
class TrainConfig:
    steps: int = 1500             # generator updates
    batch_size: int = 64          # the GLOBAL batch; DFAGD splits it over data partitions
    n_critic: int = 2             # D updates per G update
    loss: Literal["wgan", "hinge", "ns"] = "wgan"
    penalty: Literal["gp", "r1", "dragan", "none"] = "gp"
    gp_weight: float = 10.0       # lambda of the gradient penalty
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.9)
    clip_norm_g: float | None = 10.0   # None disables clipping
    clip_norm_d: float | None = 10.0
    ema_decay: float = 0.999      # 0 disables the EMA generator
    ema_start: int = 100          # EMA copies G verbatim before this step
    seed: int = 0
    log_every: int = 25
    sample_every: int = 250
    checkpoint_every: int = 500
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    threads: int = 0              # torch threads for the reference trainer; 0 = all cores
    max_bad_steps: int = 10       # consecutive non-finite updates before the run stops
    # TEST ONLY (transsrgan chaos): steps "S" or "S-E" (0-based, inclusive) whose first D gradient is made NaN,
    # as a worker with a numerical fault would return it; "" = off.
    chaos_nan_steps: str = ""

    def validate(self) -> None:
        _check(self.steps >= 0, "train.steps", ">= 0", self.steps)
        _check(self.batch_size >= 1, "train.batch_size", ">= 1", self.batch_size)
        _check(self.n_critic >= 1, "train.n_critic", ">= 1", self.n_critic)
        _check(self.loss in LOSSES, "train.loss", f"one of {LOSSES}", self.loss)
        _check(self.penalty in PENALTIES, "train.penalty", f"one of {PENALTIES}", self.penalty)
        _check(self.gp_weight >= 0, "train.gp_weight", ">= 0", self.gp_weight)
        _check(self.lr_g > 0 and self.lr_d > 0, "train.lr_g/lr_d", "> 0", (self.lr_g, self.lr_d))
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "train.betas",
               "two numbers in [0, 1)", self.betas)
        for name in ("clip_norm_g", "clip_norm_d"):
            v = getattr(self, name)
            _check(v is None or v > 0, f"train.{name}", "a positive number or null", v)
        _check(0 <= self.ema_decay < 1, "train.ema_decay", "in [0, 1)", self.ema_decay)
        _check(self.device in ("cpu", "cuda", "auto"), "train.device", "cpu, cuda or auto", self.device)
        _check(self.max_bad_steps >= 1, "train.max_bad_steps", ">= 1", self.max_bad_steps)
        _check(not self.chaos_nan_steps or re.fullmatch(r"\d+(-\d+)?", self.chaos_nan_steps) is not None,
               "train.chaos_nan_steps", "'' or S or S-E (0-based steps)", self.chaos_nan_steps)
        for name in ("log_every", "sample_every", "checkpoint_every"):
            _check(getattr(self, name) >= 0, f"train.{name}", ">= 0", getattr(self, name))


@dataclass
class DataConfig:
    source: str = "digits"        # "digits" (embedded MNIST 5k), a folder of images, or a manifest.parquet
    partitions: int = 0           # data partitions P; the global batch is split into P equal slices; 0 = spark.workers
    limit: int = 0                # use at most this many images (0 = all)
    min_images: int = 64          # data gate: fewer valid images fails the dataset
    max_bad_fraction: float = 0.2  # data gate: more quarantined files than this fails the dataset
    max_aspect: float = 4.0       # data gate: wider or taller than this is quarantined
    allowed_formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP")
    allowed_modes: tuple[str, ...] = ("L", "RGB", "RGBA", "P", "LA", "I;16", "I")
    min_std: float = 2.0          # data gate: intensity std (0-255, after conversion) at or below this = degenerate
    max_pixels: int = 89_478_485  # data gate: larger images (width*height) are quarantined without decoding
    gate_workers: int = 0         # data gate: processes building the manifest; 0 = all cores (at most 8)

    def validate(self) -> None:
        _check(bool(self.source), "data.source", "'digits' or a path", self.source)
        _check(self.partitions >= 0, "data.partitions", ">= 0", self.partitions)
        _check(self.limit >= 0, "data.limit", ">= 0", self.limit)
        _check(0 <= self.max_bad_fraction <= 1, "data.max_bad_fraction", "in [0, 1]", self.max_bad_fraction)
        _check(self.min_images >= 1, "data.min_images", ">= 1", self.min_images)
        _check(self.max_aspect >= 1, "data.max_aspect", ">= 1", self.max_aspect)
        _check(self.min_std >= 0, "data.min_std", ">= 0", self.min_std)
        _check(self.max_pixels >= 1, "data.max_pixels", ">= 1", self.max_pixels)
        _check(self.gate_workers >= 0, "data.gate_workers", ">= 0", self.gate_workers)


@dataclass
class SparkConfig:
    master: str = "local[*]"      # local[N], local-cluster[E,C,M], spark://host:port, yarn, k8s://...
    workers: int = 2              # DFAGD workers (one long-lived task each)
    threads_per_worker: int = 1   # torch threads inside each worker task
    exchange_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    sync_every: int = 1           # 1 = exact DFAGD; K > 1 averages every K local steps (off by default)
    driver_host: str = "127.0.0.1"
    executor_memory: str = "1g"
    task_max_failures: int = 4    # attempts of the DFAGD barrier stage (spark.stage.maxConsecutiveAttempts) and of tasks
    connect_timeout_s: float = 10.0  # spark:// and k8s:// masters must answer a TCP connect within this
    extra_conf: dict[str, str] = field(default_factory=dict)  # any other Spark conf, e.g. spark.kubernetes.*
    fail_once_partition: int = -1  # TEST ONLY: this worker task raises on its first attempt (retry tests)
    driver_threads: int = 1       # torch threads of the driver's optimizer step (it shares cores with local workers)
    # Before training with workers > 1, time this many iterations with N workers and with 1 (on a slice of the
    # data) and log speedup_vs_1_worker / efficiency to the run; 0 = off.
    speedup_probe_steps: int = 5
    # TEST ONLY (transsrgan chaos): "python:W@S" SIGKILLs worker W's Python process, "executor:W@S" its executor
    # JVM (local-cluster only), once, while step S's first gradient is being computed; "" = off.
    chaos_kill: str = ""

    def validate(self) -> None:
        _check(self.workers >= 1, "spark.workers", ">= 1", self.workers)
        _check(self.task_max_failures >= 1, "spark.task_max_failures", ">= 1", self.task_max_failures)
        _check(self.driver_threads >= 1, "spark.driver_threads", ">= 1", self.driver_threads)
        _check(self.speedup_probe_steps >= 0, "spark.speedup_probe_steps", ">= 0", self.speedup_probe_steps)
        _check(self.connect_timeout_s > 0, "spark.connect_timeout_s", "> 0", self.connect_timeout_s)
        _check(isinstance(self.extra_conf, dict), "spark.extra_conf", "a mapping of Spark conf keys to values",
               self.extra_conf)
        _check(self.threads_per_worker >= 1, "spark.threads_per_worker", ">= 1", self.threads_per_worker)
        _check(self.exchange_dtype in ("float32", "bfloat16", "float16"), "spark.exchange_dtype",
               "float32, bfloat16 or float16", self.exchange_dtype)
        _check(self.sync_every >= 1, "spark.sync_every", ">= 1", self.sync_every)
        _check(bool(self.master), "spark.master", "a Spark master URL", self.master)
        _check(not self.chaos_kill or re.fullmatch(r"(python|executor):\d+@\d+", self.chaos_kill) is not None,
               "spark.chaos_kill", "'' or python:W@S or executor:W@S (worker W, step S)", self.chaos_kill)


@dataclass
class EvalConfig:
    n_samples: int = 1000         # generated and real images compared
    inception_weights: str = ""   # path to pt_inception-2015-12-05-6726825d.pth; "" = torch hub cache / env
    allow_random_features: bool = False  # offline fallback: seeded random InceptionV3, metrics renamed
    primary_metric: str = "fid"   # promotion compares this (renamed with the extractor when needed)
    promotion_margin: float = 0.0  # champion moves only if the new value beats it by more than this
    batch_size: int = 100         # images per Inception forward pass (metrics do not depend on it)
    metrics: tuple[str, ...] = ("fid", "kid", "prdc", "msssim_diversity")  # names in models.metrics.METRICS
    device: Literal["cpu", "cuda", "auto"] = "cpu"   # where Inception runs
    random_features_seed: int = 0  # seed of the random-weight InceptionV3 (tag inception-v3-random-seed<N>)
    download_weights: bool = True  # try pytorch-fid's download when the file is missing and a network answers
    cache_real: bool = True       # reuse real-data features/stats from $TRANSSRGAN_HOME/cache/eval
    kid_subsets: int = 100
    kid_subset_size: int = 1000   # m = min(this, n_real, n_fake)
    prdc_k: int = 5               # k of the k-NN balls (precision, recall, density, coverage)
    diversity_pairs: int = 1000   # random pairs of generated images for msssim_diversity

    def validate(self) -> None:
        _check(self.n_samples >= 2, "eval.n_samples", ">= 2", self.n_samples)
        _check(self.batch_size >= 1, "eval.batch_size", ">= 1", self.batch_size)
        _check(self.device in ("cpu", "cuda", "auto"), "eval.device", "cpu, cuda or auto", self.device)
        _check(self.kid_subsets >= 1, "eval.kid_subsets", ">= 1", self.kid_subsets)
        _check(self.kid_subset_size >= 2, "eval.kid_subset_size", ">= 2", self.kid_subset_size)
        _check(self.prdc_k >= 1, "eval.prdc_k", ">= 1", self.prdc_k)
        _check(self.n_samples > self.prdc_k or "prdc" not in self.metrics, "eval.n_samples",
               f"> eval.prdc_k ({self.prdc_k})", self.n_samples)
        _check(self.diversity_pairs >= 1, "eval.diversity_pairs", ">= 1", self.diversity_pairs)
        _check(len(self.metrics) > 0, "eval.metrics", "at least one metric name", self.metrics)


@dataclass
class Config:
    preset: str = "demo"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> "Config":
        self.model.validate()
        self.train.validate()
        self.data.validate()
        self.spark.validate()
        self.eval.validate()
        parts = self.data.partitions or self.spark.workers
        _check(parts % self.spark.workers == 0, "data.partitions",
               f"a multiple of spark.workers ({self.spark.workers})", parts)
        _check(self.train.batch_size % parts == 0, "train.batch_size",
               f"divisible by the number of data partitions ({parts})", self.train.batch_size)
        return self

    @property
    def partitions(self) -> int:
        return self.data.partitions or self.spark.workers

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """Dotted keys, e.g. {'model.dim': 128}; what MLflow logs as params."""
        out: dict[str, Any] = {}
        for section, values in self.to_dict().items():
            if isinstance(values, dict):
                for k, v in values.items():
                    out[f"{section}.{k}"] = v
            else:
                out[section] = values
        return out


# Presets only list what differs from the dataclass defaults.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Seconds, for tests: 16x16, dim 32, depth 1.
    "tiny": {
        "model": {"resolution": 16, "token_grid": 4, "dim": 32, "depth": 1, "heads": 2, "z_dim": 32,
                  "g_channels": 32, "d_channels": 16, "d_max_channels": 64, "dcgan_channels": 64},
        "train": {"steps": 20, "batch_size": 16, "n_critic": 1, "log_every": 5, "sample_every": 10,
                  "checkpoint_every": 10, "ema_start": 5},
        "data": {"limit": 512, "min_images": 16},
        "eval": {"n_samples": 128, "batch_size": 64},
        "spark": {"speedup_probe_steps": 2},
    },
    # The README's main job: a few minutes on 2 CPU cores, recognisable digits.
    "demo": {
        "model": {"dim": 64, "heads": 4, "depth": 2, "token_grid": 8, "g_channels": 64,
                  "d_channels": 32, "d_max_channels": 128},
        "train": {"steps": 800, "batch_size": 32, "n_critic": 2, "ema_decay": 0.99, "ema_start": 50,
                  "log_every": 25, "sample_every": 200, "checkpoint_every": 200},
        "eval": {"n_samples": 256},
    },
    # Thesis scale: 64x64 RGB, wider and deeper; hours on CPU, minutes per 1k steps on a GPU.
    "full": {
        "model": {"resolution": 64, "channels": 3, "token_grid": 8, "dim": 384, "depth": 6, "heads": 6,
                  "mlp_ratio": 4.0, "g_channels": 256, "d_channels": 64, "d_max_channels": 512,
                  "d_residual": True, "z_dim": 256},
        "train": {"steps": 100_000, "batch_size": 64, "n_critic": 5, "lr_g": 1e-4, "lr_d": 1e-4,
                  "log_every": 100, "sample_every": 2000, "checkpoint_every": 2000},
        "eval": {"n_samples": 10_000},
    },
    # `bench quality` on the digits at 32x32 (docs/quality.md): tuned for quality per wall-clock second on CPU.
    # Both models of the benchmark use it; only model.arch differs (DCGAN keeps dcgan_channels = 256).
    "quality32": {
        "model": {"dim": 64, "depth": 1, "heads": 4, "token_grid": 8, "g_channels": 32, "z_dim": 64,
                  "d_channels": 16, "d_max_channels": 64},
        "train": {"steps": 3000, "batch_size": 32, "n_critic": 1, "loss": "ns", "penalty": "r1", "gp_weight": 1.0,
                  "lr_g": 5e-4, "lr_d": 5e-4, "betas": (0.5, 0.99), "ema_decay": 0.98, "ema_start": 20,
                  "log_every": 25, "sample_every": 250, "checkpoint_every": 500},
        "eval": {"n_samples": 256},
    },
    # 64x64 RGB folders (e.g. faces): quality32's recipe one upsampling block deeper, wider D.
    "rgb64": {
        "model": {"resolution": 64, "channels": 3, "dim": 128, "depth": 2, "heads": 4, "token_grid": 8,
                  "g_channels": 128, "z_dim": 128, "d_channels": 32, "d_max_channels": 256},
        "train": {"steps": 20_000, "batch_size": 32, "n_critic": 1, "loss": "ns", "penalty": "r1",
                  "gp_weight": 1.0, "lr_g": 3e-4, "lr_d": 3e-4, "betas": (0.5, 0.99), "ema_decay": 0.995,
                  "ema_start": 200, "log_every": 50, "sample_every": 500, "checkpoint_every": 1000},
        "eval": {"n_samples": 256},
    },
}


def _merge(obj: Any, overrides: dict[str, Any], prefix: str) -> None:
    known = {f.name: f for f in fields(obj)}
    for key, value in overrides.items():
        if key not in known:
            raise ConfigError(f"{prefix}{key}: unknown field; expected one of {sorted(known)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{key}: expected a mapping, got {value!r}")
            _merge(current, value, f"{prefix}{key}.")
        else:
            if isinstance(current, tuple) and isinstance(value, list):
                value = tuple(value)
            setattr(obj, key, value)


def resolve_config(preset: str = "demo", overrides: dict[str, Any] | None = None,
                   config_file: str | Path | None = None) -> Config:
    """Preset, then a JSON/TOML file, then explicit overrides (nested dicts or dotted keys)."""
    if preset not in PRESETS:
        raise ConfigError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    cfg = Config(preset=preset)
    _merge(cfg, PRESETS[preset], "")
    if config_file:
        _merge(cfg, load_config_file(config_file), "")
    if overrides:
        _merge(cfg, nest(overrides), "")
    return cfg.validate()


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{'train.steps': 5} -> {'train': {'steps': 5}}; nested dicts pass through."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if isinstance(value, dict) and parts[-1] in node:
            node[parts[-1]].update(value)
        else:
            node[parts[-1]] = value
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib
            return tomllib.loads(text)
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--config: {path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from exc


def config_from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config from to_dict() output (checkpoints, MLflow models)."""
    cfg = Config(preset=d.get("preset", "demo"))
    _merge(cfg, {k: v for k, v in d.items() if k != "preset"}, "")
    return cfg
