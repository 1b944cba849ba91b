"""Typed parameters of the train-transsrgan flow, validated with messages that name the parameter."""

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, PositiveInt, ValidationError, model_validator

from models.config import Config, ConfigError, resolve_config

EMBEDDED = ("digits",)


def _existing_data(value: str | None) -> str | None:
    """'digits' or an existing folder of images (the data gate reads folders)."""
    if value is None or value in EMBEDDED:
        return value
    path = Path(value).expanduser()
    if not value or not path.exists():
        raise ValueError(f"data path does not exist: {value!r} (expected 'digits' or a folder of images)")
    if not path.is_dir():
        raise ValueError(f"data path is not a folder: {value!r} (expected 'digits' or a folder of images)")
    return value


def _resumable(value: str | None) -> str | None:
    """'latest', a run folder holding checkpoint.pt, or a checkpoint file."""
    if value is not None:
        from tasks.resume import ResumeError, find_checkpoint

        try:
            find_checkpoint(value)
        except ResumeError as exc:
            raise ValueError(str(exc).removeprefix("resume: ")) from None
    return value


def _existing_file(value: str | None) -> str | None:
    if value is not None and not Path(value).expanduser().is_file():
        raise ValueError(f"config file not found: {value!r} (expected a JSON or TOML file)")
    return value


# The flow's signature uses these same types, so Prefect validates each parameter (and the deployment's
# parameter schema shows them) before any task runs.
Preset = Literal["tiny", "demo", "full"]
Arch = Literal["transsrgan", "dcgan"]
Engine = Literal["spark", "local"]
DataSource = Annotated[str | None, AfterValidator(_existing_data)]
ConfigFile = Annotated[str | None, AfterValidator(_existing_file)]
ResumeFrom = Annotated[str | None, AfterValidator(_resumable)]
# What shapes the config; a resumed run takes all of it from its checkpoint instead.
CONFIG_PARAMS = ("data", "steps", "workers", "spark_master", "model", "config_file", "overrides")


class TrainParams(BaseModel):
    """What a user may set on a train-transsrgan run; `to_config()` resolves the full config tree."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: Preset = "demo"
    # None keeps what the preset or config_file says (the presets read the embedded 'digits').
    data: DataSource = None              # data.source: 'digits' or a folder of images
    steps: PositiveInt | None = None            # train.steps
    workers: PositiveInt | None = None          # spark.workers
    spark_master: str | None = None             # spark.master
    model: Arch | None = None                   # model.arch
    config_file: ConfigFile = None              # JSON/TOML overrides, after the preset
    overrides: dict[str, Any] | None = None     # dotted keys, e.g. {"train.lr_g": 1e-4}; applied last
    force: bool = False                         # train even if data and config are unchanged
    # Offline fallback for evaluation: a seeded random InceptionV3 when the standard weights file is missing.
    # The metrics then carry the extractor in their names (fd_inception_random, ...), so nothing is mistaken
    # for the standard FID; with the weights file present the standard weights are used regardless.
    allow_random_features: bool = True
    engine: Engine = "spark"                    # spark = DFAGD on Spark; local = the reference trainer
    # Continue an interrupted run: 'latest', its run folder, or its checkpoint. Its config and data are the
    # checkpoint's, so the parameters that shape the config must stay unset.
    resume: ResumeFrom = None

    @model_validator(mode="after")
    def _resolves(self) -> "TrainParams":
        if self.resume is not None:
            given = [n for n in CONFIG_PARAMS if getattr(self, n) is not None] + (
                ["preset"] if self.preset != "demo" else [])
            if given:
                raise ValueError(f"resume: a resumed run keeps its checkpoint's config and data; drop "
                                 f"{', '.join(given)}")
            return self
        try:
            self.to_config()
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return self

    def overrides_dict(self) -> dict[str, Any]:
        """The dotted config overrides these parameters stand for (explicit `overrides` win)."""
        out: dict[str, Any] = {"eval.allow_random_features": self.allow_random_features}
        if self.data is not None:
            out["data.source"] = self.data
        if self.model is not None:
            out["model.arch"] = self.model
        if self.steps is not None:
            out["train.steps"] = self.steps
        if self.workers is not None:
            out["spark.workers"] = self.workers
        if self.spark_master:
            out["spark.master"] = self.spark_master
        out.update(self.overrides or {})
        return out

    def to_config(self) -> Config:
        """Preset, then config_file, then these parameters (or the resumed checkpoint's); ConfigError names the field."""
        if self.resume is not None:
            from tasks.resume import resume_point

            return resume_point(self.resume).config
        return resolve_config(self.preset, self.overrides_dict(), self.config_file)


def describe_error(exc: ValidationError, names: dict[str, str] | None = None) -> str:
    """One line for all problems: 'steps: Input should be greater than 0 (got -3)'; `names` relabels fields."""
    parts = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:                       # whole-config checks name their field themselves
            parts.append(msg)
            continue
        name = str(err["loc"][0])
        label = (names or {}).get(name, name)
        got = "" if repr(err.get("input")) in msg else f" (got {err.get('input')!r})"
        parts.append(f"{label}: {msg}{got}")
    return "; ".join(parts)
