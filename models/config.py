"""One typed config tree (model, train, data, spark, eval, singan) with presets; every layer receives only its part.

Every field is declared once, here, with its type and bounds (pydantic, strict: "3" is not an integer, 2.5 is not
a step count, NaN and infinity are not learning rates). A bad value anywhere, from a preset, a JSON/TOML file,
`--set` or a flow parameter, raises ConfigError with one line that names the dotted key and what was expected.
"""

import functools
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from models.paths import user_path

ARCHS = ("transsrgan", "dcgan", "singan")
GAN_ARCHS = ("transsrgan", "dcgan")
RESOLUTIONS = (16, 32, 64, 128)
SECTIONS = ("model", "train", "data", "spark", "eval", "singan")
CONFIG_VERSION = 2
SKIMAGE_PREFIX = "skimage:"
AUGMENTATIONS = ("color", "translation", "cutout")     # train.augment's kinds, in the order they are applied
# Photos bundled inside the scikit-image wheel (no download); texture-like photos suit SinGAN best.
BUNDLED = ("hubble_deep_field", "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
           "brick", "grass", "gravel", "camera", "coins")
DEFAULT_SINGAN_IMAGE = SKIMAGE_PREFIX + "hubble_deep_field"
# spark.master forms Spark accepts: local, local[N|*], local[N,F], local-cluster[E,C,M], spark://, yarn, k8s://
_MASTER = re.compile(r"^(local(\[(\*|\d+)(,\d+)?\])?|local-cluster\[\d+,\d+,\d+\]|spark://\S+|yarn|k8s://\S+)$")


class ConfigError(ValueError):
    """A config field has a bad value; the message names the field and what was expected."""


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


Pair = Annotated[tuple[float, float], BeforeValidator(_as_tuple)]
Names = Annotated[tuple[str, ...], BeforeValidator(_as_tuple)]
Device = Literal["cpu", "cuda", "auto"]
PositiveInt = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=0)]
Seed = Annotated[int, Field(ge=0, lt=2**32)]    # every RNG takes it (torch's stop at 2**64, SinGAN multiplies it)


class Section(BaseModel):
    """A config section: unknown keys, wrong types and out-of-range values are errors; assignments are checked."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False)
    key: ClassVar[tuple[str, ...]] = ()         # the section's name in the tree, for error messages

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_message(type(self), exc, self.key)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise ConfigError(_message(type(self), exc, self.key)) from None

    @field_validator("*", mode="before")
    @classmethod
    def _exact(cls, value: Any, info: ValidationInfo) -> Any:
        """What strict mode still lets through: 16.0 or True matching the choice 16 or 1, and an integer that a
        float field would round (2**53 + 1)."""
        kind = _kind(cls, info.field_name)
        if kind == "choice" and isinstance(value, (bool, float)):
            raise ValueError(f"one of {', '.join(map(repr, get_args(cls.model_fields[info.field_name].annotation)))}")
        if kind == "float" and not all(_exact_float(v) for v in (value if isinstance(value, (list, tuple)) else [value])):
            raise ValueError("a number that a float holds exactly")
        return value

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def validate(self) -> Any:  # type: ignore[override]  (replaces pydantic's deprecated classmethod)
        """Check the section again (after assignments that span fields); returns self."""
        _checked(type(self), self.model_dump(), self.key)
        return self


@functools.cache
def _kind(cls: type[BaseModel], name: str) -> str:
    """'choice' for a Literal of integers, 'float' for a float field (also optional, or a pair), else ''."""
    annotation = cls.model_fields[name].annotation
    if get_origin(annotation) is Literal and all(type(a) is int for a in get_args(annotation)):
        return "choice"
    if annotation is float or float in get_args(annotation):
        return "float"
    return ""


def _exact_float(value: Any) -> bool:
    try:
        return type(value) is not int or float(value) == value
    except OverflowError:
        return False


class ModelConfig(Section):
    key = ("model",)
    arch: Literal["transsrgan", "dcgan", "singan"] = "transsrgan"
    resolution: Literal[16, 32, 64, 128] = 32   # output side in pixels
    channels: Literal[1, 3] = 1                 # 1 = grayscale, 3 = RGB
    z_dim: PositiveInt = 128
    num_classes: Count = 0                      # 0 = unconditional; >0 adds a label embedding to z
    # TransSRGAN generator: z -> (token_grid x token_grid) tokens of width `dim` -> transformer -> CNN upsampler
    token_grid: PositiveInt = 8
    dim: PositiveInt = 128
    depth: Count = 2
    heads: PositiveInt = 4
    mlp_ratio: float = Field(2.0, gt=0)
    g_channels: PositiveInt = 128               # channels after the first upsampling block; halves per block, floor 32
    g_norm: Literal["group", "instance", "none"] = "group"   # per-sample norms keep DFAGD == reference
    icnr: bool = False                          # ICNR init of the conv before each PixelShuffle (docs/quality.md)
    # Discriminator (shared by TransSRGAN and DCGAN)
    d_channels: int = Field(64, ge=8)
    d_max_channels: PositiveInt = 256
    d_residual: bool = False
    # DCGAN baseline generator width
    dcgan_channels: PositiveInt = 256

    @model_validator(mode="after")
    def _shapes(self) -> "ModelConfig":
        if self.arch == "transsrgan":
            if self.token_grid > self.resolution:
                raise ValueError(f"model.token_grid: expected between 1 and model.resolution ({self.resolution}), "
                                 f"got {self.token_grid}")
            ratio = self.resolution / self.token_grid
            if ratio != int(ratio) or int(ratio) & (int(ratio) - 1):
                raise ValueError(f"model.token_grid: expected model.resolution / token_grid to be a power of two "
                                 f"(model.resolution {self.resolution}), got {self.token_grid}")
            if self.dim % self.heads:
                raise ValueError(f"model.heads: expected a divisor of model.dim ({self.dim}), got {self.heads}")
        return self

    @property
    def upsample_blocks(self) -> int:
        return int(round(math.log2(self.resolution / self.token_grid)))


class TrainConfig(Section):
    key = ("train",)
    steps: Count = 1500                         # generator updates
    # a wall-clock budget: training stops at the first step past it (counted from the first step, start-up not
    # included) or at train.steps, whichever comes first; None = steps only. TransSRGAN and DCGAN (SinGAN's
    # pyramid has its own iterations per scale).
    max_minutes: float | None = Field(None, gt=0)
    batch_size: PositiveInt = 64                # the GLOBAL batch; DFAGD splits it over data partitions
    # weak scaling: the global batch is spark.workers x this (then batch_size is derived, not given); the
    # learning rates are not scaled with it
    batch_per_worker: PositiveInt | None = None
    n_critic: PositiveInt = 2                   # D updates per G update
    loss: Literal["wgan", "hinge", "ns"] = "wgan"
    penalty: Literal["gp", "r1", "dragan", "none"] = "gp"
    gp_weight: float = Field(10.0, ge=0)        # lambda of the gradient penalty
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    betas: Pair = (0.0, 0.9)
    clip_norm_g: float | None = Field(10.0, gt=0)   # None disables clipping
    clip_norm_d: float | None = Field(10.0, gt=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)  # 0 disables the EMA generator
    ema_start: Count = 100                      # EMA copies G verbatim before this step
    seed: Seed = 0
    log_every: Count = 25
    sample_every: Count = 250
    checkpoint_every: Count = 500
    device: Device = "cpu"
    threads: Count = 0                          # torch threads for the reference trainer; 0 = all cores
    # torch.compile of G and D for the passes with one backward (the penalty's double backward stays eager);
    # the same math. "off" by measurement: on the 2-core CPU reference machine it was not faster (docs/dfagd.md).
    compile: Literal["off", "default", "max-autotune"] = "off"
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = autocast of the forward passes: inexact, opt-in only
    max_bad_steps: PositiveInt = 10             # consecutive non-finite updates before the run stops
    # DiffAugment (models/augment.py) of every image D sees, real and generated, in D's and G's updates:
    # "" = off, or a comma list of translation, cutout, color (color: brightness, saturation, contrast)
    augment: str = ""
    # lazy regularisation (StyleGAN2): the gradient penalty on every k-th D update only, with weight x k
    reg_every: PositiveInt = 1

    @field_validator("augment")
    @classmethod
    def _augment(cls, v: str) -> str:
        kinds = [k.strip() for k in v.split(",")] if v.strip() else []
        if any(k not in AUGMENTATIONS for k in kinds) or len(set(kinds)) != len(kinds):
            raise ValueError(f"train.augment: expected \"\" or a comma list of {', '.join(AUGMENTATIONS)} (each "
                             f"once), got {v!r}")
        return ",".join(k for k in AUGMENTATIONS if k in kinds)

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"train.betas: expected two numbers in [0, 1), got {list(v)}")
        return v


class DataConfig(Section):
    key = ("data",)
    source: str = Field("digits", min_length=1)  # "digits" (embedded MNIST 5k), a folder of images, or a manifest.parquet
    partitions: Count = 0                       # data partitions P; the global batch is split into P equal slices; 0 = spark.workers
    limit: Count = 0                            # use at most this many images (0 = all)
    min_images: PositiveInt = 64                # data gate: fewer valid images fails the dataset
    max_bad_fraction: float = Field(0.2, ge=0, le=1)  # data gate: more quarantined files than this fails the dataset
    max_duplicate_fraction: float = Field(0.5, ge=0, le=1)  # data gate: more extra copies of an image than this fails
    max_aspect: float = Field(4.0, ge=1)        # data gate: wider or taller than this is quarantined
    allowed_formats: Names = ("PNG", "JPEG", "WEBP")
    allowed_modes: Names = ("L", "RGB", "RGBA", "P", "LA", "I;16", "I")
    min_std: float = Field(2.0, ge=0)           # data gate: intensity std (0-255, after conversion) at or below this = degenerate
    max_pixels: PositiveInt = 89_478_485        # data gate: larger images (width*height) are quarantined without decoding
    gate_workers: Count = 0                     # data gate: processes building the manifest; 0 = all cores (at most 8)


class SparkConfig(Section):
    key = ("spark",)
    master: str = "local[*]"                    # local[N], local-cluster[E,C,M], spark://host:port, yarn, k8s://...
    workers: PositiveInt = 2                    # DFAGD workers (one long-lived task each)
    threads_per_worker: PositiveInt = 1         # torch threads inside each worker task
    exchange_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    sync_every: Literal[1] = 1                  # 1 = exact DFAGD (one averaging per update); nothing else is implemented
    # star: the driver averages every gradient and steps the one optimizer (the thesis' master reduction);
    # allreduce: every worker holds a replica and all-reduces gradients with torch.distributed (gloo / nccl)
    reduction: Literal["star", "allreduce"] = "star"
    # allreduce only: each network's flat gradient is all-reduced in consecutive slices of at most this many MiB
    # (PyTorch DDP's default), issued asynchronously and waited together
    bucket_mb: float = Field(25.0, gt=0)
    # allreduce only: start a bucket's all-reduce as soon as the backward pass has made its slice final
    overlap: bool = False
    driver_host: str = Field("127.0.0.1", min_length=1)
    executor_memory: str = "1g"                 # JVM heap per executor: 512m, 1g, 2gb
    task_max_failures: PositiveInt = 4          # attempts of the DFAGD barrier stage and of tasks
    connect_timeout_s: float = Field(10.0, gt=0)  # spark:// and k8s:// masters must answer a TCP connect within this
    extra_conf: dict[str, str | int | float | bool] = Field(default_factory=dict)  # any other Spark conf
    driver_threads: PositiveInt = 1             # torch threads of the driver's optimizer step
    # Before training with workers > 1, the flow times this many iterations with N workers and with 1 (on a
    # slice of the data) and logs speedup_vs_1_worker / efficiency to the run; 0 = off.
    speedup_probe_steps: Count = 5

    @field_validator("executor_memory")
    @classmethod
    def _memory(cls, v: str) -> str:
        if not re.fullmatch(r"\d+([kmgtp]b?|b)?", v, re.IGNORECASE):
            raise ValueError(f"spark.executor_memory: expected a JVM size such as 512m, 1g or 2gb, got {v!r}")
        return v

    @field_validator("extra_conf", mode="before")
    @classmethod
    def _conf(cls, v: Any) -> Any:
        bad = {k: x for k, x in v.items() if not (isinstance(k, str) and k and isinstance(x, (str, int, float))
                                                  and (not isinstance(x, float) or math.isfinite(x)))} \
            if isinstance(v, dict) else {}
        if bad:
            raise ValueError(f"spark.extra_conf: expected Spark keys mapped to strings, numbers or true/false, "
                             f"got {bad!r}")
        return v

    @field_validator("master")
    @classmethod
    def _master(cls, v: str) -> str:
        if not _MASTER.match(v):
            raise ValueError(f"spark.master: expected local[N], local-cluster[E,C,M], spark://HOST:PORT, yarn or "
                             f"k8s://URL, got {v!r}")
        return v


class EvalConfig(Section):
    key = ("eval",)
    n_samples: int = Field(1000, ge=2)          # generated and real images compared
    inception_weights: str = ""                 # path to pt_inception-2015-12-05-6726825d.pth; "" = torch hub cache / env
    allow_random_features: bool = False         # offline fallback: seeded random InceptionV3, metrics renamed
    primary_metric: str = Field("fid", min_length=1)  # promotion compares this (renamed with the extractor when needed)
    promotion_margin: float = Field(0.0, ge=0)  # champion moves only if the new value beats it by more than this
    batch_size: PositiveInt = 100               # images per Inception forward pass (metrics do not depend on it)
    metrics: Names = Field(("fid", "kid", "prdc", "msssim_diversity"), min_length=1)  # names in models.metrics.METRICS
    device: Device = "cpu"                      # where Inception runs
    random_features_seed: Seed = 0              # seed of the random-weight InceptionV3 (tag inception-v3-random-seed<N>)
    download_weights: bool = True               # try pytorch-fid's download when the file is missing and a network answers
    cache_real: bool = True                     # reuse real-data features/stats from $TRANSSRGAN_HOME/cache/eval
    kid_subsets: PositiveInt = 100
    kid_subset_size: int = Field(1000, ge=2)    # m = min(this, n_real, n_fake)
    prdc_k: PositiveInt = 5                     # k of the k-NN balls (precision, recall, density, coverage)
    diversity_pairs: PositiveInt = 1000         # random pairs of generated images for msssim_diversity

    @model_validator(mode="after")
    def _prdc(self) -> "EvalConfig":
        if "prdc" in self.metrics and self.n_samples <= self.prdc_k:
            raise ValueError(f"eval.n_samples: expected > eval.prdc_k ({self.prdc_k}) while eval.metrics has prdc, "
                             f"got {self.n_samples}")
        return self


class SinGANConfig(Section):
    """SinGAN (Shaham et al. 2019): the defaults are the paper's reference settings (the official code's)."""

    key = ("singan",)

    # The training image: a file path, or "skimage:NAME" for one of scikit-image's bundled photos.
    image: str = Field(DEFAULT_SINGAN_IMAGE, min_length=1)
    channels: Literal[1, 3] = 3                 # 3 = RGB (grayscale inputs are replicated), 1 = luminance
    # The pyramid (official adjust_scales2image): the finest side <= max_size, the coarsest short side = min_size.
    scale_factor: float = Field(0.75, gt=0, lt=1)  # nominal; adjusted so the coarsest side hits min_size
    min_size: PositiveInt = 25
    max_size: PositiveInt = 250
    # Per-scale G and D: num_layers 3x3 convs (conv-BN-LeakyReLU(0.2) blocks, then the output conv).
    num_layers: int = Field(5, ge=2)            # >= 2: head and output conv
    kernel_size: PositiveInt = 3
    channels_base: PositiveInt = 32             # width at the coarsest scales ...
    channels_double_every: PositiveInt = 4      # ... doubled every this many scales ...
    channels_max: PositiveInt = 128             # ... capped here
    # Losses
    adversarial: Literal["wgan", "lsgan"] = "wgan"
    penalty: Literal["gp", "zero_gp", "none"] = "gp"
    penalty_weight: float = Field(0.1, ge=0)    # lambda_grad of the official code
    alpha: float = Field(10.0, ge=0)            # weight of the reconstruction MSE
    noise_amp_factor: float = Field(0.1, ge=0)  # noise_amp_n = this x RMSE(real_n, upsampled reconstruction)
    # Optimisation (Adam per scale, fresh at every scale)
    iters_per_scale: PositiveInt = 2000
    d_steps: PositiveInt = 3
    g_steps: PositiveInt = 3
    lr_g: float = Field(5e-4, gt=0)
    lr_d: float = Field(5e-4, gt=0)
    betas: Pair = (0.5, 0.999)
    lr_decay_at: float = Field(0.8, gt=0, le=1)  # the learning rate is multiplied by lr_gamma after this fraction
    lr_gamma: float = Field(0.1, gt=0, le=1)
    # Short budgets (off by default; the demo sets bn_freeze_at, docs/singan.md#the-demos-budget-settings):
    # G's BatchNorm switches to its running statistics (the ones sampling uses) after this fraction of a scale's
    # iterations, so the last updates fit the frozen network's normalisation; 1 = never (the paper)
    bn_freeze_at: float = Field(1.0, gt=0, le=1)
    # the coarsest scale trains this x iters_per_scale iterations, falling geometrically to 1x at the finest
    # (coarse iterations are cheap); 1 = the same at every scale (the paper)
    coarse_iters_factor: float = Field(1.0, ge=1, le=100)
    # Run
    seed: Seed = 0
    log_every: Count = 100                      # iterations between progress lines (0 = only a scale's end)
    threads: Count = 0                          # torch threads; 0 = leave torch's default
    device: Device = "cpu"

    @field_validator("image")
    @classmethod
    def _bundled(cls, v: str) -> str:
        if v.startswith(SKIMAGE_PREFIX) and v[len(SKIMAGE_PREFIX):] not in BUNDLED:
            raise ValueError(f"singan.image: unknown bundled image {v!r}; expected an image file or one of "
                             f"{', '.join(SKIMAGE_PREFIX + b for b in BUNDLED)}")
        return v

    @model_validator(mode="after")
    def _pyramid(self) -> "SinGANConfig":
        if self.kernel_size % 2 != 1:
            raise ValueError(f"singan.kernel_size: expected an odd number >= 1, got {self.kernel_size}")
        shrink = self.receptive_pad * 2
        if self.min_size <= shrink:
            raise ValueError(f"singan.min_size: expected > {shrink} (the discriminator's valid convs shrink each "
                             f"side by 2 x singan.num_layers x singan.kernel_size//2), got {self.min_size}")
        if self.max_size < self.min_size:
            raise ValueError(f"singan.max_size: expected >= singan.min_size ({self.min_size}), got {self.max_size}")
        if self.channels_max < self.channels_base:
            raise ValueError(f"singan.channels_max: expected >= singan.channels_base ({self.channels_base}), "
                             f"got {self.channels_max}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"singan.betas: expected two numbers in [0, 1), got {list(self.betas)}")
        return self

    @property
    def receptive_pad(self) -> int:
        """Zero padding the generator adds around its input: its valid convs remove exactly this much per side."""
        return self.num_layers * (self.kernel_size // 2)

    def channels_at(self, scale: int) -> int:
        """Width of scale `scale` (0 = coarsest): 32 doubled every 4 scales, capped at 128."""
        return min(self.channels_base * 2 ** (scale // self.channels_double_every), self.channels_max)

    @property
    def decay_iter(self) -> int:
        """The iteration after which the learning rate is multiplied by lr_gamma (1600 of 2000)."""
        return int(round(self.lr_decay_at * self.iters_per_scale))

    def iters_at(self, scale: int, num_scales: int) -> int:
        """Iterations of scale `scale` (0 = coarsest) of `num_scales`: iters_per_scale x coarse_iters_factor at the
        coarsest, falling geometrically to iters_per_scale at the finest."""
        if num_scales < 2:
            return self.iters_per_scale
        steps_to_finest = (num_scales - 1 - scale) / (num_scales - 1)
        return int(round(self.iters_per_scale * self.coarse_iters_factor ** steps_to_finest))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def flat(self) -> dict[str, Any]:
        """Keys prefixed 'singan.' for MLflow params."""
        return {f"singan.{k}": v for k, v in self.to_dict().items()}


class Config(Section):
    version: Literal[2] = 2                     # of this tree's layout; checkpoints and logged models carry it
    preset: str = "demo"
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    singan: SinGANConfig = Field(default_factory=SinGANConfig)

    @model_validator(mode="before")
    @classmethod
    def _weak_scaling(cls, tree: Any) -> Any:
        """train.batch_per_worker set: train.batch_size = spark.workers x it."""
        train, spark = (tree.get("train"), tree.get("spark")) if isinstance(tree, dict) else (None, None)
        if isinstance(train, dict) and train.get("batch_per_worker") is not None:
            workers = spark.get("workers", 2) if isinstance(spark, dict) else 2
            if type(train["batch_per_worker"]) is int and type(workers) is int and min(workers, train["batch_per_worker"]) >= 1:
                # (anything else: the fields' own checks report it)
                train["batch_size"] = workers * train["batch_per_worker"]
        return tree

    @model_validator(mode="after")
    def _partitions(self) -> "Config":
        if self.model.arch == "singan":
            return self
        parts = self.data.partitions or self.spark.workers
        if parts % self.spark.workers:
            raise ValueError(f"data.partitions: expected a multiple of spark.workers ({self.spark.workers}), "
                             f"got {parts}")
        if self.train.batch_size % parts:
            source = "data.partitions" if self.data.partitions else "spark.workers, as data.partitions is 0"
            raise ValueError(f"train.batch_size: expected divisible by the number of data partitions ({parts}: "
                             f"{source}), got {self.train.batch_size}")
        return self

    @property
    def partitions(self) -> int:
        return self.data.partitions or self.spark.workers

    def sections(self) -> tuple[str, ...]:
        """The sections that shape a run of this config's model family (what is logged and hashed)."""
        return ("singan", "eval") if self.model.arch == "singan" else ("model", "train", "data", "spark", "eval")

    def to_dict(self, sections: tuple[str, ...] | None = None) -> dict[str, Any]:
        d = self.model_dump()
        return d if sections is None else {"version": d["version"], "preset": d["preset"], **{s: d[s] for s in sections}}

    def to_json(self, sections: tuple[str, ...] | None = None) -> str:
        return json.dumps(self.to_dict(sections), indent=2)

    def flat(self, sections: tuple[str, ...] | None = None) -> dict[str, Any]:
        """Dotted keys of the family's sections, e.g. {'model.dim': 128}; what MLflow logs as params."""
        out: dict[str, Any] = {}
        for section, values in self.to_dict(sections or self.sections()).items():
            if isinstance(values, dict):
                out.update({f"{section}.{k}": v for k, v in values.items()})
            else:
                out[section] = values
        return out

    def updated(self, overrides: dict[str, Any]) -> "Config":
        """A validated copy with dotted-key overrides applied, e.g. {'data.source': '/x/manifest.parquet'}."""
        tree = self.model_dump()
        _merge(tree, nest(overrides), "")
        _batch_once(tree, "batch_size" in nest(overrides).get("train", {}))
        return _checked(Config, tree)


# Presets only list what differs from the defaults above; one preset name serves every model family.
# quality32's model (415k G parameters), also the demo's: the size that learned the most per second on CPU
_QUALITY32_MODEL = {"dim": 64, "depth": 1, "heads": 4, "token_grid": 8, "g_channels": 32, "z_dim": 64,
                    "d_channels": 16, "d_max_channels": 64}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Seconds, for tests: 16x16, dim 32, depth 1; SinGAN: a 4-scale pyramid of ~12..28 px (SIFID needs >= 23 px),
    # 2 iterations per scale.
    "tiny": {
        "model": {"resolution": 16, "token_grid": 4, "dim": 32, "depth": 1, "heads": 2, "z_dim": 32,
                  "g_channels": 32, "d_channels": 16, "d_max_channels": 64, "dcgan_channels": 64},
        "train": {"steps": 20, "batch_size": 16, "n_critic": 1, "log_every": 5, "sample_every": 10,
                  "checkpoint_every": 10, "ema_start": 5},
        "data": {"limit": 512, "min_images": 16},
        "eval": {"n_samples": 128, "batch_size": 64},
        "spark": {"speedup_probe_steps": 2},
        "singan": {"min_size": 12, "max_size": 28, "channels_base": 8, "channels_max": 16,
                   "channels_double_every": 2, "iters_per_scale": 2, "log_every": 1},
    },
    # The README's main job: under 10 minutes on 2 CPU cores. The recipe was chosen by measurement
    # (benchmarks/demo_recipe.py, docs/quality.md#the-demos-recipe-chosen-by-measurement): quality32's small model,
    # NS + R1 at n_critic 1, lr 1e-3 and EMA 0.995 learned the most per second, and lazy R1 (every 4th D update)
    # made a step 0.8x as long, spent on 3,000 steps; the thesis' WGAN-GP recipe is the preset thesis32. A CPU
    # without AVX-512 runs a step about 2.5x slower, so 5.5 minutes of training cap it there (a fast CPU finishes the
    # 3,000 steps first). SinGAN: max side 128, widths 32 and 100 iterations per scale (deviations from the paper,
    # for time), and G's BatchNorm frozen for the last 20 % of each scale (reconstruction RMSE 0.120 -> 0.096 on
    # skimage:coffee at the same cost; docs/singan.md).
    "demo": {
        "model": dict(_QUALITY32_MODEL),
        "train": {"steps": 3000, "max_minutes": 5.5, "batch_size": 32, "n_critic": 1, "loss": "ns", "penalty": "r1",
                  "gp_weight": 1.0, "reg_every": 4, "lr_g": 1e-3, "lr_d": 1e-3, "betas": (0.5, 0.99), "ema_decay": 0.995,
                  "ema_start": 20, "log_every": 50, "sample_every": 500, "checkpoint_every": 500},
        "eval": {"n_samples": 256},
        "singan": {"max_size": 128, "channels_max": 32, "iters_per_scale": 100, "log_every": 25,
                   "bn_freeze_at": 0.8},
    },
    # The thesis' recipe at the demo's size (the demo until it was chosen by measurement, docs/quality.md):
    # WGAN-GP, n_critic 2, lr 2e-4, betas (0, 0.9); 800 steps.
    "thesis32": {
        "model": {"dim": 64, "heads": 4, "depth": 2, "token_grid": 8, "g_channels": 64,
                  "d_channels": 32, "d_max_channels": 128},
        "train": {"steps": 800, "batch_size": 32, "n_critic": 2, "ema_decay": 0.99, "ema_start": 50,
                  "log_every": 25, "sample_every": 200, "checkpoint_every": 200},
        "eval": {"n_samples": 256},
        "singan": {"max_size": 128, "channels_max": 32, "iters_per_scale": 100, "log_every": 25},
    },
    # Thesis scale: 64x64 RGB, wider and deeper; hours on CPU. SinGAN: the paper's settings.
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
        "model": dict(_QUALITY32_MODEL),
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


def _describe(err: dict[str, Any]) -> str:
    """One pydantic error as 'train.steps: expected an integer, got 2.5'."""
    loc = list(err["loc"])
    if len(loc) > 1 and isinstance(loc[-1], int):      # an item of a list field: name the field
        loc, err = loc[:-1], {**err, "type": "list_item" if err["type"] != "missing" else "too_short"}
    key = _name(".".join(str(p) for p in loc))
    msg = err["msg"].removeprefix("Value error, ")
    if re.match(r"^[a-z_]+(\.[a-z_]+)+: ", msg):       # our own checks name their key already
        return msg
    kind, got = err["type"], err.get("input")
    expected = {
        "int_type": "an integer", "int_from_float": "an integer", "float_type": "a number",
        "finite_number": "a finite number", "bool_type": "true or false", "string_type": "a string",
        "tuple_type": "a list", "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type":
        "a mapping",
    }.get(kind)
    if kind == "extra_forbidden":
        return f"{key}: unknown field"
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        expected = f"{bounds[kind]} {next(iter(err.get('ctx', {}).values()), '?')}"
    if kind in ("too_short", "too_long"):
        expected = ("two numbers" if isinstance(got, tuple) and key.endswith("betas") else
                    f"{'at least' if kind == 'too_short' else 'at most'} {next(iter(err.get('ctx', {}).values()), '?')} "
                    "item(s)")
    elif kind == "string_too_short":
        expected = "a non-empty string"
    elif kind == "list_item":
        expected = f"items that are {msg.removeprefix('Input should be ')}"
    if expected is None:
        expected = msg.removeprefix("Input should be ").removeprefix("Value should have ")
    return f"{key}: expected {expected}, got {got!r}"


def _name(key: str) -> str:
    """A key as a message names it: quoted when it is not a plain dotted name (empty, spaces, a line break)."""
    return key if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_\-]+)*", key) else repr(key)


def _message(cls: type[BaseModel], exc: ValidationError, prefix: tuple[str, ...] = ()) -> str:
    """All of a ValidationError's problems on one line, each naming its dotted key."""
    errors = [{**e, "loc": prefix + tuple(e["loc"])} for e in exc.errors()]
    lines = [_describe(e) for e in errors]
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    if unknown:                           # say what the section does accept
        model: Any = cls
        for part in unknown[0]["loc"][len(prefix):-1]:
            model = model.model_fields[str(part)].annotation
        known = sorted(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []
        lines[errors.index(unknown[0])] += f"; expected one of {known}"
    return "; ".join(dict.fromkeys(lines))


def _checked(cls: type[BaseModel], tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> Any:
    try:
        return cls.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_message(cls, exc, prefix)) from None


def _merge(tree: dict[str, Any], overrides: dict[str, Any], prefix: str) -> None:
    """Merge section mappings into `tree` in place; values inside a section replace (a dict value too)."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of sections, got {overrides!r}")
    for key, value in overrides.items():
        if not prefix and key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a mapping of {key}.* fields, got {value!r}")
            tree.setdefault(key, {})
            _merge(tree[key], value, f"{key}.")
        elif not prefix and key not in ("preset", "version"):
            raise ConfigError(f"{_name(str(key))}: unknown section; expected one of {['preset', *SECTIONS]}")
        else:
            tree[key] = value


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{'train.steps': 5} -> {'train': {'steps': 5}}; nested dicts pass through."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{key!r}: expected a dotted key such as train.steps")
        section, dot, field = key.partition(".")
        if not section or (dot and not field):
            raise ConfigError(f"{_name(key)}: expected a dotted key such as train.steps")
        if not dot:
            if isinstance(value, dict) and isinstance(out.get(section), dict):
                out[section].update(value)
            else:
                out[section] = value
        else:
            if "." in field:
                raise ConfigError(f"{_name(key)}: unknown field; expected section.field, e.g. train.steps")
            node = out.setdefault(section, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{_name(section)}: expected a mapping of {section}.* fields, got {node!r}")
            node[field] = value
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A JSON or TOML file of config sections; ConfigError names the file when it is missing or malformed."""
    path = user_path(path)
    if not path.is_file():
        raise ConfigError(f"--config: file not found: {path} (expected a JSON or TOML file)")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc}") from None
    try:
        if path.suffix == ".toml":
            import tomllib

            values = tomllib.loads(text)
        else:
            values = json.loads(text, parse_constant=lambda c: _reject_constant(c, path),
                                object_pairs_hook=lambda pairs: _unique(pairs, path))
    except RecursionError:
        raise ConfigError(f"--config: {path}: nested too deeply") from None
    except ConfigError:
        raise
    except ValueError as exc:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise ConfigError(f"--config: {path} is not valid {kind}: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config: {path}: expected a mapping of sections (e.g. {{\"train\": {{\"steps\": 100}}}}), "
                          f"got a {type(values).__name__}")
    return values


def _unique(pairs: list[tuple[str, Any]], path: Path) -> dict[str, Any]:
    """A JSON object, refusing a key given twice (json would silently keep the last)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f"--config: {path}: key {key!r} is given twice in one object (expected once)")
        out[key] = value
    return out


def _reject_constant(name: str, path: Path) -> Any:
    raise ValueError(f"{name} is not a number a config accepts")


def resolve_config(preset: str = "demo", overrides: dict[str, Any] | None = None,
                   config_file: str | Path | None = None, *, defaults: dict[str, Any] | None = None) -> Config:
    """Preset, then `defaults` (a caller's own, e.g. a flow's), then a JSON/TOML file, then explicit overrides
    (nested dicts or dotted keys)."""
    if preset not in PRESETS:
        raise ConfigError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    tree: dict[str, Any] = {"preset": preset}
    _merge(tree, PRESETS[preset], "")
    preset_batch = tree.get("train", {}).pop("batch_size", None)   # to tell a batch size given explicitly
    if defaults:
        _merge(tree, nest(defaults), "")
    if config_file:
        _merge(tree, load_config_file(config_file), "")
    if overrides:
        _merge(tree, nest(overrides), "")
    _batch_once(tree, "batch_size" in tree.get("train", {}))
    if preset_batch is not None:
        tree["train"].setdefault("batch_size", preset_batch)
    if preset in DIGITS_CLASSES and tree.get("data", {}).get("source", DataConfig().source) == "digits":
        tree.setdefault("model", {}).setdefault("num_classes", DIGITS_CLASSES[preset])   # unless given
    if tree["preset"] != preset:
        raise ConfigError(f"preset: chosen once, by --preset or the preset parameter ({preset!r}); a config file or "
                          f"override may only repeat it, got {tree['preset']!r}")
    return _checked(Config, tree)


# Presets that condition on the digits' labels when they train on the embedded digits (data.source "digits"); on any
# other data they stay unconditional. The demo: conditioned, its samples read as digits 0.977 of the time against
# 0.715 unconditioned at 3,000 steps, same cost per step (docs/quality.md#round-7-a-class-conditional-demo).
DIGITS_CLASSES = {"demo": 10}


def _batch_once(tree: dict[str, Any], batch_size_given: bool) -> None:
    """The global batch is given once: train.batch_size, or train.batch_per_worker (x spark.workers)."""
    if batch_size_given and tree.get("train", {}).get("batch_per_worker") is not None:
        raise ConfigError("train.batch_per_worker: cannot be combined with an explicit train.batch_size (the global "
                          "batch is spark.workers x train.batch_per_worker); set one of them")


def config_from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config from to_dict() output (checkpoints, MLflow models).

    A dict without `version` was written before the tree was typed (version 1): fields that version had and this
    one does not are dropped, so its checkpoints and logged models still load; every value is still checked.
    """
    tree = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()}
    if "version" not in tree:
        for name, section in Config.model_fields.items():
            if isinstance(tree.get(name), dict) and isinstance(section.annotation, type):
                known = section.annotation.model_fields
                tree[name] = {k: v for k, v in tree[name].items() if k in known}
        tree["version"] = CONFIG_VERSION
    return _checked(Config, tree)


def singan_config_from_dict(d: dict[str, Any]) -> SinGANConfig:
    """Rebuild the singan section from its to_dict() output (SinGAN checkpoints; version 1 ones also held 'preset')."""
    return _checked(SinGANConfig, {k: v for k, v in d.items() if k != "preset"}, ("singan",))
