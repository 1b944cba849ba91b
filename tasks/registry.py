"""Model registry: register every evaluated run as a version, and promote a champion only when it is better."""

# One promote() for every model family; a PromotionPolicy says where a version competes:
#   GLOBAL     (transsrgan, dcgan)  one `champion` per registered model; comparable on dataset fingerprint and
#                                   feature extractor; the loser becomes `challenger`.
#   PER_IMAGE  (singan)             one `champion-<image>` per training image; comparable on image fingerprint,
#                                   feature extractor and evaluation size (SIFID depends on the image size); the
#                                   loser becomes `challenger-<image>` and `challenger`; `champion` then follows
#                                   champion-<image> of the image just promoted.
# Rules for a new version (reasons are written as version tags on it and on the champion it met):
#   no champion in its scope yet                       -> it becomes the champion;
#   champion not comparable, or either lacks the metric -> NOT compared: challenger (conservative: a human moves
#                                                          the champion on purpose);
#   its value beats the champion's by more than margin -> the champion alias moves; the old one keeps its tags;
#   otherwise                                          -> challenger.
# Concurrency: the read-decide-write section runs under an exclusive file lock (next to a SQLite store, or under
# data_home()/locks for other stores), so promotions on one machine serialise. As a backstop for promoters on
# different machines, every winner writes `promotion.decision=champion` BEFORE moving the alias, and after moving
# it re-reads all such claims in its scope and converges the alias to the best one comparable with the champion.
# Whoever moves the alias last therefore sees every earlier claim, and a worse version never keeps the champion
# alias over a better comparable one.

import contextlib
import fcntl
import hashlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from models.paths import data_home
from tasks.model_io import SINGAN, artifact_path
from tasks.tags import (
    CHALLENGER,
    CHAMPION,
    METRIC_TAG_PREFIX,
    TAG_COMPARED,
    TAG_DECISION,
    TAG_EVAL_SIZE,
    TAG_EXTRACTOR,
    TAG_FAMILY,
    TAG_FINGERPRINT,
    TAG_IMAGE,
    TAG_IMAGE_FINGERPRINT,
    TAG_IMAGE_SOURCE,
    TAG_REASON,
    TAG_RUN,
    TAG_TIME,
    image_slug,
    verdict_tag,
)
from tasks.tracking import sqlite_path

_LOWER = ("fid", "kid", "fd", "kd", "sifid", "loss", "s")          # first token of the metric name
_HIGHER = ("precision", "recall", "density", "coverage", "recognisable", "class", "images", "speedup", "efficiency")
_MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


def lower_is_better(metric_name: str) -> bool:
    """fid/kid/fd_*/kd_*/sifid (and losses, s_per_iter): lower; precision/recall/density/coverage, recognisable
    and class_balance (the digits' classifier): higher.

    Extractor-suffixed names (recall_inception_random, sifid_inception_random) follow their base metric.
    """
    head = metric_name.split("_", 1)[0]
    if head in _LOWER:
        return True
    if head in _HIGHER:
        return False
    raise ValueError(f"primary_metric {metric_name!r}: unknown direction; expected fid, kid, fd_*, kd_*, sifid "
                     f"(lower is better) or precision, recall, density, coverage, recognisable, class_balance (higher is better), "
                     f"or pass lower_is_better explicitly")


_direction = lower_is_better   # `promote` has a parameter of the same name


def image_tags(image: str, source: str, fingerprint: str, eval_size: tuple[int, int]) -> dict[str, str]:
    """The version tags of a SinGAN trained on one image (its scope under PER_IMAGE); `image` is slugged."""
    if not fingerprint:
        raise ValueError("image_fingerprint: expected the sha256 of the training image, got ''")
    return {TAG_IMAGE: image_slug(image), TAG_IMAGE_SOURCE: source, TAG_IMAGE_FINGERPRINT: fingerprint,
            TAG_EVAL_SIZE: f"{eval_size[0]}x{eval_size[1]}"}


# ---------------------------------------------------------------- registration

def ensure_registered_model(client: MlflowClient, name: str, description: str | None = None) -> None:
    """Create `name` if missing; `description` is written when the model has none (a human's edit wins)."""
    try:
        client.create_registered_model(name, description=description)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        if description and not client.get_registered_model(name).description:
            client.update_registered_model(name, description=description)


def _logged_model_id(client: MlflowClient, run_id: str, name: str) -> str:
    run = client.get_run(run_id)
    for out in run.outputs.model_outputs if run.outputs else []:
        if client.get_logged_model(out.model_id).name == name:
            return out.model_id
    raise LookupError(f"run {run_id} has no logged model named {name!r} "
                      f"(log it with tasks.model_io.log_generator or log_singan, name={name!r})")


def register_version(run_id: str, model_name: str, metrics: dict[str, float], extractor: str, fingerprint: str,
                     *, family: str | None = None, artifact: str | None = None,
                     tags: dict[str, str] | None = None) -> str:
    """A new version of `model_name` from the run's logged model, tagged with metrics, extractor, fingerprint and
    model family (default: the registered name, as in transsrgan, dcgan, singan); `tags` adds more (image_tags)."""
    if not extractor:
        raise ValueError("extractor: expected the feature extractor name (e.g. 'inception_v3'), got ''")
    if not fingerprint:
        raise ValueError("fingerprint: expected the dataset fingerprint, got ''")
    bad = {k: v for k, v in metrics.items() if not math.isfinite(float(v))}
    if bad:
        raise ValueError(f"metrics: expected finite numbers, got {bad}")
    family = family or model_name
    client = MlflowClient()
    model_id = _logged_model_id(client, run_id, artifact or artifact_path(family))
    ensure_registered_model(client, model_name, model_description(model_name, family))
    all_tags = {TAG_EXTRACTOR: extractor, TAG_FINGERPRINT: fingerprint, TAG_RUN: run_id, TAG_FAMILY: family,
                **{f"{METRIC_TAG_PREFIX}{k}": repr(float(v)) for k, v in metrics.items()}, **(tags or {})}
    mv = client.create_model_version(model_name, f"models:/{model_id}", run_id=run_id, tags=all_tags,
                                     model_id=model_id)
    return str(mv.version)


# ---------------------------------------------------------------- the rules

@dataclass(frozen=True)
class Version:
    """What the rules read of a registered version: its number and its tags."""

    number: str
    tags: dict[str, str]

    @classmethod
    def of(cls, mv: ModelVersion) -> "Version":
        return cls(str(mv.version), dict(mv.tags))

    def metric(self, name: str) -> float | None:
        value = self.tags.get(f"{METRIC_TAG_PREFIX}{name}")
        return float(value) if value is not None else None

    def metrics(self) -> dict[str, float]:
        """Every metric tag: {name: value}."""
        n = len(METRIC_TAG_PREFIX)
        return {k[n:]: float(v) for k, v in self.tags.items() if k.startswith(METRIC_TAG_PREFIX)}


def _beats(a: float, b: float, lower: bool, margin: float) -> bool:
    return (b - a > margin) if lower else (a - b > margin)


@dataclass(frozen=True)
class PromotionPolicy:
    """Where a version competes (one scope per value of `scope_tag`, or one global scope) and what must match."""

    comparable_on: tuple[tuple[str, str], ...]     # (tag, what it is): equal on both or NOT compared
    scope_tag: str | None = None                   # None: one champion per registered model

    def scope(self, v: Version) -> str | None:
        return v.tags.get(self.scope_tag) if self.scope_tag else None

    def champion_alias(self, scope: str | None) -> str:
        return CHAMPION if scope is None else f"{CHAMPION}-{scope}"

    def challenger_aliases(self, scope: str | None) -> tuple[str, ...]:
        return (CHALLENGER,) if scope is None else (f"{CHALLENGER}-{scope}", CHALLENGER)

    def followers(self, scope: str | None) -> tuple[str, ...]:
        """Aliases that point at the scope's champion after every promotion in it (`champion` for SinGAN)."""
        return () if scope is None else (CHAMPION,)

    def champion_name(self, scope: str | None) -> str:
        return "champion" if scope is None else f"the {self.scope_tag}'s champion"

    def not_comparable(self, new: Version, champ: Version, metric: str) -> str | None:
        """Why two versions cannot be compared, or None if they can."""
        for tag, what in self.comparable_on:
            a, b = new.tags.get(tag), champ.tags.get(tag)
            if a != b:
                return (f"not compared: {what} differs (v{new.number}: {a}, {self.champion_name(self.scope(new))} "
                        f"v{champ.number}: {b})")
        for v in (new, champ):
            if v.metric(metric) is None:
                return f"not compared: v{v.number} has no {metric!r} metric tag"
        return None

    def decide(self, new: Version, champ: Version | None, metric: str, lower: bool,
               margin: float) -> tuple[bool, str]:
        """(promote?, reason): the pure rule, given the new version and its scope's current champion."""
        scope = self.scope(new)
        if champ is None:
            return True, ("first version: no champion yet" if scope is None else
                          f"first version of {self.scope_tag} {scope!r}: no champion for it yet")
        if champ.number == new.number:
            return True, f"already {self.champion_name(scope)}"
        why = self.not_comparable(new, champ, metric)
        if why:
            return False, why
        a, b = new.metric(metric), champ.metric(metric)
        sense = "lower" if lower else "higher"
        verb = "beats" if _beats(a, b, lower, margin) else "does not beat"
        return verb == "beats", (f"{metric} {a:.6g} {verb} {self.champion_name(scope)} v{champ.number} ({b:.6g}) "
                                 f"by more than {margin:g} ({sense} is better)")


GLOBAL = PromotionPolicy(comparable_on=((TAG_FINGERPRINT, "dataset fingerprint"), (TAG_EXTRACTOR, "feature extractor")))
PER_IMAGE = PromotionPolicy(comparable_on=((TAG_IMAGE_FINGERPRINT, "image content (fingerprint)"),
                                           (TAG_EXTRACTOR, "feature extractor"), (TAG_EVAL_SIZE, "evaluation size")),
                            scope_tag=TAG_IMAGE)


def policy_for(family: str) -> PromotionPolicy:
    """PER_IMAGE for SinGAN (one model per image), GLOBAL for every other family."""
    return PER_IMAGE if family == SINGAN else GLOBAL


@dataclass(frozen=True)
class PromotionDecision:
    version: str
    champion_version: str               # the champion of the version's scope after this promotion
    promoted: bool
    reason: str
    alias: Literal["champion", "challenger"]
    aliases: tuple[str, ...]            # every alias this promotion gave the version
    scope: str | None = None            # PER_IMAGE: the image slug; None for GLOBAL


# ---------------------------------------------------------------- promotion

@contextlib.contextmanager
def promotion_lock(model_name: str, timeout_s: float = 120.0) -> Iterator[Path]:
    """Exclusive flock per (store, model); separate open() calls conflict across threads and processes."""
    uri = mlflow.get_registry_uri()
    db = sqlite_path(uri)
    key = hashlib.sha256(f"{uri}\0{model_name}".encode()).hexdigest()[:16]
    path = (db.with_name(f"{db.name}.{model_name}.promote.lock") if db
            else data_home() / "locks" / f"promote-{key}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(path, "a+") as fh:
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"promotion lock {path} held for more than {timeout_s:.0f}s") from None
                time.sleep(0.05)
        try:
            yield path
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def by_alias(client: MlflowClient, name: str, alias: str) -> Version | None:
    """The version holding `alias`, or None when the alias (or the model) does not exist."""
    try:
        return Version.of(client.get_model_version_by_alias(name, alias))
    except MlflowException as exc:
        if exc.error_code in _MISSING:
            return None
        raise


def converge(client: MlflowClient, name: str, policy: PromotionPolicy, scope: str | None, metric: str,
             lower: bool) -> Version | None:
    """Move the scope's champion alias to the best claimant comparable with the current champion; returns it."""
    alias = policy.champion_alias(scope)
    champ = by_alias(client, name, alias)
    if champ is None:
        return None
    best = champ
    for mv in client.search_model_versions(f"name='{name}'"):
        v = Version.of(mv)
        if v.tags.get(TAG_DECISION) != CHAMPION or v.number == best.number or policy.scope(v) != scope:
            continue
        if policy.not_comparable(v, best, metric) is None and _beats(v.metric(metric), best.metric(metric), lower,
                                                                     0.0):
            best = v
    if best.number != champ.number:
        client.set_registered_model_alias(name, alias, best.number)
        client.set_model_version_tag(name, champ.number, verdict_tag(best.number, "decision"),
                                     f"replaced by v{best.number} while converging concurrent promotions")
    return best


def promote(model_name: str, version: str, primary_metric: str, lower_is_better: bool | None = None,
            margin: float = 0.0, *, policy: PromotionPolicy | None = None, use_lock: bool = True) -> PromotionDecision:
    """Give `version` the champion or challenger aliases of its scope per the module rules; tags record why.

    lower_is_better=None derives the direction from the metric name; policy=None takes the version's
    model_family tag (policy_for).
    """
    lower = _direction(primary_metric) if lower_is_better is None else lower_is_better
    if margin < 0 or not math.isfinite(margin):
        raise ValueError(f"margin: expected a finite number >= 0, got {margin}")
    client = MlflowClient()
    version = str(version)
    with promotion_lock(model_name) if use_lock else contextlib.nullcontext():
        new = Version.of(client.get_model_version(model_name, version))
        policy = policy or policy_for(new.tags.get(TAG_FAMILY, ""))
        scope = policy.scope(new)
        if policy.scope_tag and not scope:
            raise ValueError(f"{model_name} v{version}: expected a version tag {policy.scope_tag!r} "
                             f"(register it with register_version(..., tags=image_tags(...)))")
        champ = by_alias(client, model_name, policy.champion_alias(scope))
        promoted, reason = policy.decide(new, champ, primary_metric, lower, margin)
        alias = CHAMPION if promoted else CHALLENGER
        claim = {TAG_DECISION: alias, TAG_REASON: reason, TAG_TIME: time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 TAG_COMPARED: champ.number if champ is not None else ""}
        for k, v in claim.items():          # the claim is written before the alias moves (see converge)
            client.set_model_version_tag(model_name, version, k, v)
        aliases = (policy.champion_alias(scope),) if promoted else policy.challenger_aliases(scope)
        for a in aliases:
            client.set_registered_model_alias(model_name, a, version)
        if champ is not None and champ.number != version:
            verdict = f"replaced by v{version}" if promoted else f"kept against v{version}"
            client.set_model_version_tag(model_name, champ.number, verdict_tag(version, "decision"), verdict)
            client.set_model_version_tag(model_name, champ.number, verdict_tag(version, "reason"), reason)
        final = converge(client, model_name, policy, scope, primary_metric, lower) if promoted else champ
        champion_version = final.number if final is not None else version
        if promoted and champion_version != version:   # a better concurrent claim won: we lost after all
            promoted, alias = False, CHALLENGER
            reason += f"; then superseded by v{champion_version} from a concurrent promotion"
            client.set_model_version_tag(model_name, version, TAG_DECISION, alias)
            client.set_model_version_tag(model_name, version, TAG_REASON, reason)
            aliases = policy.challenger_aliases(scope)
            for a in aliases:
                client.set_registered_model_alias(model_name, a, version)
        for a in policy.followers(scope):
            client.set_registered_model_alias(model_name, a, champion_version)
        if promoted:
            aliases += policy.followers(scope)
    return PromotionDecision(version=version, champion_version=champion_version, promoted=promoted, reason=reason,
                             alias=alias, aliases=aliases, scope=scope)


# ---------------------------------------------------------------- descriptions (markdown, shown by the UIs)

_ABOUT = {
    "transsrgan": "TransSRGAN: a Transformer over latent tokens with a PixelShuffle super-resolution upsampler and a "
                  "CNN critic (WGAN-GP), trained with DFAGD on Spark. It maps noise z to images.",
    "dcgan": "DCGAN: the convolutional baseline that TransSRGAN is measured against (same data, same pipeline). "
             "It maps noise z to images.",
    SINGAN: "SinGAN: a pyramid of small GANs trained on one image; it samples new images with that image's "
            "textures and layout, at any size. One champion per training image (`champion-<image>`); `champion` "
            "follows the image promoted last.",
}


def model_description(name: str, family: str | None = None) -> str:
    """The registered model's description: what the model is and how to sample its champion."""
    family = family or name
    uri = f"models:/{name}@{CHAMPION}"
    if family == SINGAN:
        predict = ["import pandas as pd", f'model = mlflow.pyfunc.load_model("{uri}")',
                   'images = model.predict(pd.DataFrame({"seed": [0, 1, 2]}))   # (3, C, H, W) in [-1, 1]']
    else:
        predict = ["import numpy as np", f'model = mlflow.pyfunc.load_model("{uri}")',
                   "# z_dim: the version's model.z_dim (its config.json)",
                   "z = np.random.default_rng(0).standard_normal((16, z_dim), dtype=np.float32)",
                   "images = model.predict(z)   # (16, C, H, W) in [-1, 1]"]
    return "\n".join([_ABOUT.get(family, f"{family}: an image generator."), "",
                      "Promotion: every evaluated run becomes a version; it takes the champion alias only when its "
                      "primary metric beats the champion's on the same data and feature extractor (else "
                      "`challenger`). Each version's description gives its metrics and the reason.", "",
                      "Sample the champion:", "", "```bash",
                      f"transsrgan sample --model {uri} -n 64 --out {name}.png --seed 0", "```", "",
                      "```python", "import mlflow", *predict, "```"])


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def metrics_table(metrics: dict[str, float], primary_metric: str | None) -> list[str]:
    """A markdown table of the metrics, the primary one first and marked with its direction."""
    def label(name: str) -> str:
        if name != primary_metric:
            return name
        try:
            sense = "lower" if lower_is_better(name) else "higher"
        except ValueError:
            return f"**{name}** (primary)"
        return f"**{name}** (primary; {sense} is better)"

    order = sorted(metrics, key=lambda k: (k != primary_metric, k))
    return ["| metric | value |", "|---|---:|", *(f"| {label(k)} | {_fmt(metrics[k])} |" for k in order)]


@dataclass(frozen=True)
class RunReport:
    """What one flow run did, for people: the run's MLflow description and its Prefect summary (one markdown)."""

    model_name: str                            # the registered model
    run_id: str | None                         # the MLflow run (a skipped run: the last completed one)
    version: str | None                        # its registered version
    facts: tuple[tuple[str, str], ...]         # (what, value) rows: preset, data, training, DFAGD speed-up, ...
    metrics: dict[str, float]
    primary_metric: str | None
    champion_version: str | None               # after this run
    promoted: bool
    reason: str                                # the promotion reason, or why training was skipped
    skipped: bool = False
    champion_alias: str = CHAMPION
    aliases: tuple[str, ...] = ()              # the aliases this run's version took
    extractor: str | None = None               # the evaluation's feature extractor


def version_headline(report: RunReport) -> str:
    """The first line of a version's description, in plain text: the registry's versions table shows that line
    as it is (markup characters included), e.g. 'transsrgan v3: champion (fd_digits 74.6, @champion)'."""
    r = report
    value = r.metrics.get(r.primary_metric) if r.primary_metric else None
    details = [f"{r.primary_metric} {_fmt(value)}"] if value is not None else []
    details += [f"@{a}" for a in r.aliases]
    verdict = "champion" if r.promoted else "challenger"
    return f"{r.model_name} v{r.version}: {verdict}" + (f" ({', '.join(details)})" if details else "")


def version_description(report: RunReport) -> str:
    """A model version's description: a plain-text headline (the verdict), then in markdown the promotion reason
    and the metrics."""
    r, name = report, report.model_name
    return "\n".join([version_headline(r), "",
                      f"Promotion: {r.reason}.", "", *metrics_table(r.metrics, r.primary_metric), "",
                      f"Features: `{r.extractor}`; run `{r.run_id}`. Sample it: `transsrgan sample --model "
                      f"models:/{name}/{r.version} -n 64 --out {name}-v{r.version}.png`"])


@dataclass(frozen=True)
class MlflowLinks:
    """Where to look in MLflow: UI URLs when the tracking URI is an http(s) server, else None (ids only)."""

    run_url: str | None = None
    version_url: str | None = None


def mlflow_links(tracking_uri: str, experiment_id: str | None, run_id: str | None, model_name: str,
                 version: str | None) -> MlflowLinks:
    """The MLflow UI's pages of a run and a model version, on an http(s) tracking server (credentials dropped)."""
    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https"):
        return MlflowLinks()
    netloc = parts.netloc.rsplit("@", 1)[-1]
    base = urlunsplit(parts._replace(netloc=netloc, query="", fragment="")).rstrip("/")
    run = f"{base}/#/experiments/{experiment_id}/runs/{run_id}" if run_id and experiment_id else None
    ver = f"{base}/#/models/{quote(model_name)}/versions/{version}" if version else None
    return MlflowLinks(run, ver)


def run_markdown(report: RunReport, links: MlflowLinks) -> str:
    """The one rendering of a flow run: the MLflow run description (`mlflow.note.content`) and, with a grid
    added by flows.artifacts, the Prefect summary artifact."""
    r, name = report, report.model_name
    if r.skipped:
        head = f"### {name}: training skipped"
        verdict = f"**Skipped:** {r.reason}. Champion: v{r.champion_version or '-'}."
    else:
        head = f"### {name} v{r.version}: {'new champion' if r.promoted else 'challenger'}"
        verdict = (f"**Champion decision:** v{r.version} {'takes' if r.promoted else 'does not take'} "
                   f"`@{r.champion_alias}` (champion: v{r.champion_version}). {r.reason}.")
    lines = [head, "", verdict, ""]
    if r.facts:
        lines += ["| run | |", "|---|---|", *(f"| {k} | {v} |" for k, v in r.facts), ""]
    if r.metrics:
        lines += [*metrics_table(r.metrics, r.primary_metric), ""]
    run = f"[{r.run_id}]({links.run_url})" if links.run_url else f"`{r.run_id or '-'}`"
    label = f"{name} v{r.version}" if r.version else "-"
    ver = f"[{label}]({links.version_url})" if links.version_url else f"`{label}`"
    browse = "" if links.run_url else " (browse with `make ui`)"
    lines.append(f"**MLflow:** run {run}, model version {ver}{browse}.")
    if r.version:
        lines.append(f"Sample: `transsrgan sample --model models:/{name}/{r.version} -n 64 --out "
                     f"{name}-v{r.version}.png`")
    return "\n".join(lines)
