"""Typed parameters of the train-singan flow, validated with messages that name the parameter."""

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, NonNegativeFloat, PositiveInt, model_validator

from models.config import ConfigError
from models.singan import DEFAULT_IMAGE, SinGANConfig, resolve_singan_config
from models.singan.image import BUNDLED, SKIMAGE_PREFIX


def _image_source(value: str) -> str:
    """'skimage:NAME' of a bundled photo, or an existing image file."""
    if value.startswith(SKIMAGE_PREFIX):
        if value[len(SKIMAGE_PREFIX):] not in BUNDLED:
            raise ValueError(f"unknown bundled image {value!r}; expected one of "
                             f"{', '.join(SKIMAGE_PREFIX + b for b in BUNDLED)} or an image file")
        return value
    path = Path(value).expanduser()
    if not value or not path.exists():
        raise ValueError(f"image file does not exist: {value!r} (expected an image file or 'skimage:NAME')")
    if not path.is_file():
        raise ValueError(f"image is not a file: {value!r} (SinGAN trains on one image; expected an image file)")
    return value


def _existing_file(value: str | None) -> str | None:
    if value is not None and not Path(value).expanduser().is_file():
        raise ValueError(f"config file not found: {value!r} (expected a JSON or TOML file)")
    return value


SinGANPreset = Literal["tiny", "demo", "full"]
ImageSource = Annotated[str, AfterValidator(_image_source)]
ConfigFile = Annotated[str | None, AfterValidator(_existing_file)]


class SinGANParams(BaseModel):
    """What a user may set on a train-singan run; `to_config()` resolves the SinGANConfig."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: SinGANPreset = "demo"
    image: ImageSource = DEFAULT_IMAGE            # singan.image: a file, or skimage:NAME (bundled, offline)
    iters_per_scale: PositiveInt | None = None    # singan.iters_per_scale (None keeps the preset's)
    config_file: ConfigFile = None                # JSON/TOML (flat or a [singan] table), after the preset
    overrides: dict[str, Any] | None = None       # SinGANConfig fields, e.g. {"max_size": 96}; applied last
    # Offline fallback for SIFID: seeded random Inception weights when the standard file is missing; the metric
    # is then named sifid_inception_random (never sifid). With the file present the standard weights are used.
    allow_random_features: bool = True
    eval_samples: PositiveInt = 50                # random samples SIFID and diversity are averaged over
    promotion_margin: NonNegativeFloat = 0.0      # SIFID must drop by more than this to take champion-<image>

    @model_validator(mode="after")
    def _resolves(self) -> "SinGANParams":
        try:
            self.to_config()
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        if self.eval_samples < 2:
            raise ValueError(f"eval_samples: expected >= 2 (diversity needs two samples), got {self.eval_samples}")
        return self

    def overrides_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"image": self.image}
        if self.iters_per_scale is not None:
            out["iters_per_scale"] = self.iters_per_scale
        out.update(self.overrides or {})
        return out

    def to_config(self) -> SinGANConfig:
        """Preset, then config_file, then these parameters; raises ConfigError naming the field."""
        return resolve_singan_config(self.preset, self.overrides_dict(), self.config_file)
