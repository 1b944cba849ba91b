"""The flows' parameters, declared once: the flow signatures, the deployments' schema and the CLI's flags derive from them.

Each field says which config key it sets (`config=`) and, where it differs from the field name, the CLI flag
(`flag=`). `to_config()` resolves preset -> the fields left at their defaults -> config_file -> the fields given
-> overrides into the one typed config tree (models.config), whose own checks name the dotted key of any bad value.
"""

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from models.config import DEFAULT_SINGAN_IMAGE, GAN_ARCHS, SKIMAGE_PREFIX, Config, ConfigError, resolve_config
from models.paths import user_path

EMBEDDED = ("digits",)


def _existing_data(value: str | None) -> str | None:
    """'digits', an existing folder of images, or a gate's manifest.parquet."""
    if value is None or value in EMBEDDED:
        return value
    path = user_path(value)
    if not value or not path.exists():
        raise ValueError(f"does not exist: {value!r} (expected 'digits', a folder of images or a manifest.parquet)")
    if not (path.is_dir() or (path.is_file() and path.suffix == ".parquet")):
        raise ValueError(f"not a folder or a manifest.parquet: {value!r} (expected 'digits', a folder of images "
                         "or the manifest.parquet that `transsrgan validate` wrote)")
    return value


def _image_source(value: str) -> str:
    """'skimage:NAME' of a bundled photo, or an existing image file."""
    if value.startswith(SKIMAGE_PREFIX):
        return value                      # the name is checked where the bundled photos are known (models.singan)
    path = user_path(value)
    if not value or not path.exists():
        raise ValueError(f"image file does not exist: {value!r} (expected an image file or 'skimage:NAME')")
    if not path.is_file():
        raise ValueError(f"not a file: {value!r} (SinGAN trains on one image; expected an image file)")
    return value


def _existing_file(value: str | None) -> str | None:
    if value is not None and not user_path(value).is_file():
        raise ValueError(f"file not found: {value!r} (expected a JSON or TOML file)")
    return value


def _resumable(value: str | None) -> str | None:
    """'latest', or an existing run folder or checkpoint file; what it holds is read by the flow's resume task."""
    if value is not None and value != "latest" and not (value and user_path(value).exists()):
        raise ValueError(f"not found: {value!r} (expected 'latest', a run folder or a checkpoint file)")
    return value


def _output_dir(value: str | None) -> str | None:
    """A folder that exists or can be made: not empty, not a file, not below a file."""
    if value is None:
        return value
    path = user_path(value)
    if not value or (path.exists() and not path.is_dir()):
        raise ValueError(f"not a folder: {value!r} (expected an output folder, created if missing)")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not path.exists() and not parent.is_dir():
        raise ValueError(f"cannot be created below the file {str(parent)!r}: {value!r}")
    return value


def _field(default: Any, help: str, *, config: str | None = None, flag: str | None = None,
           metavar: str | None = None, **cli: Any) -> Any:
    """A parameter: its default, its help, the config key it sets and how the CLI spells it."""
    extra = {k: v for k, v in dict(config=config, flag=flag, metavar=metavar, **cli).items() if v is not None}
    return Field(default, description=help, json_schema_extra=extra)


Preset = Literal["tiny", "demo", "thesis32", "full"]
DataSource = Annotated[str | None, AfterValidator(_existing_data)]
ImageSource = Annotated[str, AfterValidator(_image_source)]
ConfigFile = Annotated[str | None, AfterValidator(_existing_file)]
ResumeFrom = Annotated[str | None, AfterValidator(_resumable)]
OutputDir = Annotated[str | None, AfterValidator(_output_dir)]


class RunParams(BaseModel):
    """What every training flow takes: where the config starts, what overrides it, where output goes."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    preset: Preset = _field("demo", "starting point: tiny (tests, seconds), demo (minutes on 2 CPU cores), "
                                    "thesis32 (the thesis' WGAN-GP recipe at the demo's scale), full (thesis scale)")
    config_file: ConfigFile = _field(None, "JSON or TOML file of config sections, applied after the preset",
                                     flag="config", metavar="FILE")
    overrides: dict[str, Any] | None = _field(None, "any config key, e.g. --set train.lr_g=1e-4 (values are JSON; "
                                                    "repeatable); applied last", flag="set", metavar="KEY=VALUE")
    # Offline fallback for evaluation: seeded random Inception weights when the standard weights file is missing;
    # the metrics then carry the extractor in their names (fd_inception_random, sifid_inception_random, ...).
    allow_random_features: bool = _field(True, "fail evaluation instead of falling back to random Inception "
                                               "weights when the standard weights file is missing",
                                         config="eval.allow_random_features", flag="require-standard-features",
                                         negate=True)
    out_dir: OutputDir = _field(None, "output folder (default $TRANSSRGAN_HOME/runs/<flow run name>)",
                                 flag="out", metavar="DIR")

    archs: ClassVar[tuple[str, ...]] = ()       # the model.arch values this flow trains
    inputs: ClassVar[dict[str, Callable[[str], Any]]] = {}   # config keys naming input files: their check

    @model_validator(mode="after")
    def _resolves(self) -> "RunParams":
        if getattr(self, "resume", None) is None:
            try:
                self.check_config(self.to_config())
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return self

    def check_config(self, config: Config) -> None:
        """What the tree cannot check alone: the family this flow trains, and the input files, however given."""
        if config.model.arch not in self.archs:
            raise ConfigError(f"model.arch: expected {' or '.join(self.archs)} in this flow (the train command's "
                              f"--model picks the flow), got {config.model.arch!r}")
        for key, check in self.inputs.items():
            section, _, field = key.partition(".")
            try:
                check(getattr(getattr(config, section), field))
            except ValueError as exc:
                raise ConfigError(f"{key}: {exc}") from None

    def overrides_dict(self, defaults: bool = False) -> dict[str, Any]:
        """The dotted config keys these parameters set (explicit `overrides` win); with `defaults`, instead the keys
        of the parameters left at a default other than None, which come before config_file."""
        out = {_extra(f).get("config"): getattr(self, name) for name, f in type(self).model_fields.items()
               if _extra(f).get("config") and getattr(self, name) is not None
               and (getattr(self, name) == f.default) == defaults}
        return out if defaults else out | (self.overrides or {})

    def to_config(self) -> Config:
        """Preset, then the parameters' own defaults, then config_file, then the parameters that differ from their
        defaults, then overrides; ConfigError names the dotted key."""
        return resolve_config(self.preset, self.overrides_dict(), self.config_file,
                              defaults=self.overrides_dict(defaults=True))


class TrainParams(RunParams):
    """Parameters of the train-transsrgan flow (TransSRGAN, or the DCGAN baseline, with DFAGD on Spark)."""

    archs = GAN_ARCHS
    inputs = {"data.source": _existing_data}

    model: Literal["transsrgan", "dcgan"] | None = _field(None, "model family: transsrgan, dcgan (a baseline) or "
                                                                "singan (its own flow, train-singan)",
                                                          config="model.arch")
    data: DataSource = _field(None, "'digits' (the embedded default), an image folder or a manifest.parquet",
                              config="data.source", metavar="PATH")
    steps: PositiveInt | None = _field(None, "generator updates", config="train.steps", metavar="N")
    max_minutes: PositiveFloat | None = _field(None, "training wall-clock budget in minutes: training stops at the "
                                                     "first step past it or at --steps, whichever comes first "
                                                     "(Spark start-up not counted)", config="train.max_minutes",
                                               metavar="M")
    workers: PositiveInt | None = _field(None, "DFAGD workers (Spark barrier tasks)", config="spark.workers",
                                         metavar="N")
    spark_master: str | None = _field(None, "e.g. local[2], local-cluster[2,1,1024], spark://host:7077",
                                      config="spark.master", metavar="URL")
    force: bool = _field(False, "train even if the data and config are unchanged since the last completed run")
    engine: Literal["spark", "local"] = _field("spark", "spark: DFAGD on Spark; local: the single-process "
                                                        "reference trainer")
    # Continue an interrupted run: its config and data are the checkpoint's, so nothing that shapes the config
    # may be set beside it.
    resume: ResumeFrom = _field(None, "continue an interrupted run from its last checkpoint, in the same folder and "
                                      "MLflow run: a run folder, a checkpoint file, or nothing for the latest",
                                metavar="RUN", const="latest")

    @model_validator(mode="after")
    def _resume_alone(self) -> "TrainParams":
        if self.resume is not None:
            shaping = ("data", "steps", "max_minutes", "workers", "spark_master", "model", "config_file", "overrides")
            given = [flag_of(TrainParams, n) for n in shaping if getattr(self, n) is not None]
            given += ["--preset"] if self.preset != "demo" else []
            if given:
                raise ValueError(f"resume: a resumed run keeps its checkpoint's config and data; drop "
                                 f"{', '.join(given)}")
        return self


class SinGANParams(RunParams):
    """Parameters of the train-singan flow (one image, one pyramid)."""

    archs = ("singan",)
    inputs = {"singan.image": _image_source}

    model: Literal["singan"] = _field("singan", "", config="model.arch")
    image: ImageSource = _field(DEFAULT_SINGAN_IMAGE, "an image file or skimage:NAME (a photo bundled with "
                                                      "scikit-image)", config="singan.image", flag="data",
                                metavar="PATH")
    iters_per_scale: PositiveInt | None = _field(None, "iterations per pyramid scale", config="singan.iters_per_scale",
                                                 flag="steps", metavar="N")
    eval_samples: Annotated[int, Field(ge=2)] = _field(50, "random samples SIFID and diversity are averaged over",
                                                       metavar="N")
    promotion_margin: NonNegativeFloat = _field(0.0, "SIFID must drop by more than this to take champion-<image>",
                                                config="eval.promotion_margin", metavar="X")


def _extra(field: Any) -> dict[str, Any]:
    return field.json_schema_extra or {}


def flag_of(model: type[BaseModel], name: str) -> str:
    """The CLI flag of a parameter, e.g. 'steps' -> '--steps'."""
    return "--" + _extra(model.model_fields[name]).get("flag", name.replace("_", "-"))


def describe_error(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """One line for all problems, naming each parameter by its flag (with its config key) when `model` is given."""
    parts = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:                       # whole-model checks name their field themselves
            parts.append(msg)
            continue
        name = str(err["loc"][0])
        label = name
        if model is not None and name in model.model_fields:
            key = _extra(model.model_fields[name]).get("config")
            label = flag_of(model, name) + (f" ({key})" if key else "")
        got = "" if repr(err.get("input")) in msg else f" (got {err.get('input')!r})"
        parts.append(f"{label}: {msg}{got}")
    return "; ".join(parts)


def _strictly(field: Any) -> Any:
    """Metadata for a flow signature's parameter: the value must fit the field without conversion."""
    adapter = TypeAdapter(Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation)

    def check(value: Any) -> Any:
        try:
            adapter.validate_python(value, strict=True)
        except ValidationError as exc:
            raise ValueError("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None
        return value

    return BeforeValidator(check)


def _together(model: type[RunParams]) -> tuple[Any, ...]:
    """Metadata for the last parameter of a flow signature: validate `model` from all the parameters."""
    *first, last = model.model_fields

    def check(value: Any, info: ValidationInfo) -> Any:
        if all(name in info.data for name in first):     # else a parameter failed alone, and says so
            try:
                model.model_validate({**{n: info.data[n] for n in first}, last: value})
            except ValidationError as exc:
                raise ValueError(f"the parameters together: {describe_error(exc, model)}") from None
        return value

    return AfterValidator(check), Field(validate_default=True)


def takes(model: type[RunParams]) -> Callable[[Callable[[Any], dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Give `fn(params)` a keyword signature made of `model`'s fields, so that Prefect's parameter schema (and
    `prefect deployment run ... --param steps=100`) lists them, and call it with the validated model."""

    def decorate(fn: Callable[[Any], dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        fields = model.model_fields
        last = list(fields)[-1]
        # Prefect validates a flow's parameters in lax mode ("3" -> 3, 1 -> True): each is checked strictly first,
        # and the last one also checks them together (the config they resolve to), so that Prefect refuses what
        # `model` would, before the flow starts.
        params = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                    annotation=Annotated[f.annotation, *f.metadata, _strictly(f),
                                                         Field(description=f.description),
                                                         *(_together(model) if name == last else ())])
                  for name, f in fields.items()]

        @functools.wraps(fn)
        def run(**kwargs: Any) -> dict[str, Any]:
            return fn(model(**kwargs))

        del run.__wrapped__               # inspect.signature must read __signature__, not fn's own
        run.__signature__ = inspect.Signature(params, return_annotation=dict[str, Any])
        run.__annotations__ = {p.name: p.annotation for p in params} | {"return": dict[str, Any]}
        return run

    return decorate
