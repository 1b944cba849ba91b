"""Registered model `singan`: one version per trained image, and a champion PER IMAGE by SIFID (lower is better).

Aliases (MLflow aliases are per registered model, so the image is part of the alias name):
    champion-<image>    the best version for that image (the per-image champion)
    challenger-<image>  the latest version for that image that did not beat its champion
    champion            the champion of the image trained most recently (what `models:/singan@champion` serves)
    challenger          the latest version, of any image, that lost
<image> is the image's slug (`image_slug`): `skimage:hubble_deep_field` -> `hubble_deep_field`,
`/data/My Photo.jpg` -> `my-photo`.

Rules for a new version of image I (`decide`; reasons are written as version tags, as in tasks.registry):
- no champion-<I> yet                                -> the new version becomes champion-<I>;
- champion-<I> differs in image content (fingerprint), feature extractor or evaluation size (SIFID depends
  on the image size), or lacks the metric            -> NOT compared: challenger (move the alias by hand);
- new SIFID lower than champion-<I>'s by > margin    -> champion-<I> moves to the new version;
- otherwise                                          -> challenger-<I> and challenger.
Either way `champion` then points at champion-<I>. Promotions serialise under tasks.registry.promotion_lock.
"""

import math
import re
import time
from dataclasses import dataclass

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tasks.registry import (
    CHALLENGER,
    CHAMPION,
    METRIC_TAG_PREFIX,
    TAG_COMPARED,
    TAG_DECISION,
    TAG_EXTRACTOR,
    TAG_REASON,
    TAG_TIME,
    promotion_lock,
    register_version,
)
from tasks.singan_io import ARTIFACT_PATH, REGISTERED_NAME, TAG_FAMILY

TAG_IMAGE = "image"                        # the image's slug
TAG_IMAGE_SOURCE = "image_source"          # what the user passed: a path or skimage:NAME
TAG_IMAGE_FINGERPRINT = "image_fingerprint"   # sha256 of the validated image file
TAG_EVAL_SIZE = "eval_size"                # "HxW": the size SIFID was measured at (the finest scale)
COMPARABLE_ON = ((TAG_IMAGE_FINGERPRINT, "image content (fingerprint)"), (TAG_EXTRACTOR, "feature extractor"),
                 (TAG_EVAL_SIZE, "evaluation size"))


def image_slug(name: str) -> str:
    """A name usable in an MLflow alias ([A-Za-z0-9_-], at most 64 characters): lower-case, runs of other
    characters become '-'."""
    slug = re.sub(r"[^a-z0-9_]+", "-", name.lower()).strip("-")[:64].strip("-")
    return slug or "image"


def champion_alias(slug: str) -> str:
    return f"{CHAMPION}-{slug}"


def challenger_alias(slug: str) -> str:
    return f"{CHALLENGER}-{slug}"


@dataclass(frozen=True)
class ImagePromotion:
    version: str
    image: str                      # slug
    champion_version: str           # champion-<image> after this promotion
    promoted: bool
    reason: str
    aliases: tuple[str, ...]        # the aliases this version holds now


def _metric(tags: dict[str, str], name: str) -> float | None:
    value = tags.get(f"{METRIC_TAG_PREFIX}{name}")
    return float(value) if value is not None else None


def decide(new_tags: dict[str, str], champ_tags: dict[str, str] | None, metric: str,
           margin: float = 0.0) -> tuple[bool, str]:
    """(promote?, reason) for a new version of an image against that image's champion (tags only; pure)."""
    if champ_tags is None:
        return True, f"first version of image {new_tags.get(TAG_IMAGE)!r}: no champion for it yet"
    for tag, what in COMPARABLE_ON:
        a, b = new_tags.get(tag), champ_tags.get(tag)
        if a != b:
            return False, f"not compared: {what} differs ({a} vs champion's {b})"
    a, b = _metric(new_tags, metric), _metric(champ_tags, metric)
    if a is None or b is None:
        return False, f"not compared: {'new version' if a is None else 'champion'} has no {metric!r} metric tag"
    if b - a > margin:
        return True, f"{metric} {a:.6g} beats the image's champion ({b:.6g}) by more than {margin:g} (lower is better)"
    return False, f"{metric} {a:.6g} does not beat the image's champion ({b:.6g}) by more than {margin:g} " \
                  "(lower is better)"


def register_image_version(run_id: str, metrics: dict[str, float], extractor: str, dataset_fingerprint: str,
                           image: str, image_source: str, image_fingerprint: str, eval_size: tuple[int, int],
                           model_name: str = REGISTERED_NAME) -> str:
    """A new version of `model_name` from the run's logged SinGAN, tagged with the image and its fingerprint."""
    if not image_fingerprint:
        raise ValueError("image_fingerprint: expected the sha256 of the training image, got ''")
    version = register_version(run_id, model_name, metrics, extractor, dataset_fingerprint,
                               artifact_path=ARTIFACT_PATH)
    client = MlflowClient()
    tags = {TAG_IMAGE: image_slug(image), TAG_IMAGE_SOURCE: image_source, TAG_IMAGE_FINGERPRINT: image_fingerprint,
            TAG_EVAL_SIZE: f"{eval_size[0]}x{eval_size[1]}", TAG_FAMILY: REGISTERED_NAME}
    for k, v in tags.items():
        client.set_model_version_tag(model_name, version, k, v)
    return version


def _by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def promote_image(version: str, metric: str, margin: float = 0.0,
                  model_name: str = REGISTERED_NAME) -> ImagePromotion:
    """Per-image promotion of `version` (rules in the module docstring); `champion` follows the image."""
    if margin < 0 or not math.isfinite(margin):
        raise ValueError(f"margin: expected a finite number >= 0, got {margin}")
    client = MlflowClient()
    version = str(version)
    with promotion_lock(model_name):
        new = client.get_model_version(model_name, version)
        slug = new.tags.get(TAG_IMAGE)
        if not slug:
            raise ValueError(f"{model_name} v{version}: expected a version tag {TAG_IMAGE!r} "
                             "(register it with register_image_version)")
        champ = _by_alias(client, model_name, champion_alias(slug))
        champ_version = str(champ.version) if champ is not None else None
        if champ_version == version:
            promoted, reason = True, "already the image's champion"
        else:
            promoted, reason = decide(new.tags, champ.tags if champ else None, metric, margin)
        alias = CHAMPION if promoted else CHALLENGER
        tags = {TAG_DECISION: alias, TAG_REASON: reason, TAG_TIME: time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                TAG_COMPARED: champ_version or ""}
        for k, v in tags.items():
            client.set_model_version_tag(model_name, version, k, v)
        if promoted:
            client.set_registered_model_alias(model_name, champion_alias(slug), version)
            aliases = (champion_alias(slug), CHAMPION)
        else:
            client.set_registered_model_alias(model_name, challenger_alias(slug), version)
            client.set_registered_model_alias(model_name, CHALLENGER, version)
            aliases = (challenger_alias(slug), CHALLENGER)
        champion_version = version if promoted else champ_version
        client.set_registered_model_alias(model_name, CHAMPION, champion_version)   # the latest image's best
        if champ_version is not None and champ_version != version:
            verdict = f"replaced by v{version}" if promoted else f"kept against v{version}"
            client.set_model_version_tag(model_name, champ_version, f"promotion.v{version}.decision", verdict)
    return ImagePromotion(version=version, image=slug, champion_version=str(champion_version), promoted=promoted,
                          reason=reason, aliases=aliases)
