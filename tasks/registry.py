"""Model registry: register every evaluated run as a version, and promote `champion` only when it is better.

Rules of `promote` (decision and reason are written as tags on the new version and on the champion):
- no champion yet                                    -> the new version becomes champion;
- champion measured on another dataset fingerprint, with another feature extractor, or without the
  primary metric                                     -> NOT compared; the new version becomes challenger
                                                       (conservative: a human moves champion on purpose);
- new value beats the champion's by more than margin -> champion moves; the old one keeps its tags;
- otherwise                                          -> the new version becomes challenger.

Concurrency: the read-decide-write section runs under an exclusive file lock (next to a SQLite store,
or under data_home()/locks for other stores), so two promotions on one machine serialise. As a backstop
for promoters on different machines, every version that wins writes `promotion.decision=champion`
BEFORE moving the alias, and after moving it re-reads all such claims and converges the alias to the
best one comparable with the champion. Whoever moves the alias last therefore sees every earlier claim,
and a worse version never keeps `champion` over a better comparable one.
"""

import contextlib
import fcntl
import hashlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from models.paths import data_home
from tasks.tracking import sqlite_path

CHAMPION, CHALLENGER = "champion", "challenger"
TAG_EXTRACTOR = "feature_extractor"
TAG_FINGERPRINT = "dataset_fingerprint"
TAG_RUN = "run_id"
METRIC_TAG_PREFIX = "metric."              # version tag `metric.fid` = "12.3"
TAG_DECISION = "promotion.decision"        # champion | challenger (on the new version)
TAG_REASON = "promotion.reason"
TAG_COMPARED = "promotion.compared_with"   # the champion version it was measured against
TAG_TIME = "promotion.time"

_LOWER = ("fid", "kid", "fd", "kd", "loss", "s")           # first token of the metric name
_HIGHER = ("precision", "recall", "density", "coverage", "images", "speedup", "efficiency")


def lower_is_better(metric_name: str) -> bool:
    """fid/kid/fd_*/kd_* (and losses, s_per_iter): lower; precision/recall/density/coverage: higher.

    Extractor-suffixed names (recall_inception_random) follow their base metric.
    """
    head = metric_name.split("_", 1)[0]
    if head in _LOWER:
        return True
    if head in _HIGHER:
        return False
    raise ValueError(f"primary_metric {metric_name!r}: unknown direction; expected fid, kid, fd_*, kd_* "
                     f"(lower is better) or precision, recall, density, coverage (higher is better), "
                     f"or pass lower_is_better explicitly")


_direction = lower_is_better   # `promote` has a parameter of the same name


@dataclass(frozen=True)
class PromotionDecision:
    version: str
    champion_version: str               # the champion after this promotion
    promoted: bool
    reason: str
    alias: Literal["champion", "challenger"]


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _logged_model_id(client: MlflowClient, run_id: str, artifact_path: str) -> str:
    run = client.get_run(run_id)
    for out in run.outputs.model_outputs if run.outputs else []:
        if client.get_logged_model(out.model_id).name == artifact_path:
            return out.model_id
    raise LookupError(f"run {run_id} has no logged model named {artifact_path!r} "
                      f"(log it with tasks.model_io.log_generator(..., name={artifact_path!r}))")


def register_version(run_id: str, model_name: str, metrics: dict[str, float], extractor: str,
                     fingerprint: str, artifact_path: str = "generator") -> str:
    """A new version of `model_name` from the run's logged model, tagged with metrics/extractor/fingerprint."""
    if not extractor:
        raise ValueError("extractor: expected the feature extractor name (e.g. 'inception_v3'), got ''")
    if not fingerprint:
        raise ValueError("fingerprint: expected the dataset fingerprint, got ''")
    bad = {k: v for k, v in metrics.items() if not math.isfinite(float(v))}
    if bad:
        raise ValueError(f"metrics: expected finite numbers, got {bad}")
    client = MlflowClient()
    model_id = _logged_model_id(client, run_id, artifact_path)
    _ensure_registered_model(client, model_name)
    tags = {TAG_EXTRACTOR: extractor, TAG_FINGERPRINT: fingerprint, TAG_RUN: run_id,
            **{f"{METRIC_TAG_PREFIX}{k}": repr(float(v)) for k, v in metrics.items()}}
    mv = client.create_model_version(model_name, f"models:/{model_id}", run_id=run_id, tags=tags,
                                     model_id=model_id)
    return str(mv.version)


# ---- promotion -------------------------------------------------------------------------------------------

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


def _metric(mv: ModelVersion, name: str) -> float | None:
    value = mv.tags.get(f"{METRIC_TAG_PREFIX}{name}")
    return float(value) if value is not None else None


def _not_comparable(new: ModelVersion, champ: ModelVersion, metric: str) -> str | None:
    """Why two versions cannot be compared, or None if they can."""
    for tag, what in ((TAG_FINGERPRINT, "dataset fingerprint"), (TAG_EXTRACTOR, "feature extractor")):
        a, b = new.tags.get(tag), champ.tags.get(tag)
        if a != b:
            return f"not compared: {what} differs (v{new.version}: {a}, champion v{champ.version}: {b})"
    for mv in (new, champ):
        if _metric(mv, metric) is None:
            return f"not compared: v{mv.version} has no {metric!r} metric tag"
    return None


def _beats(a: float, b: float, lower: bool, margin: float) -> bool:
    return (b - a > margin) if lower else (a - b > margin)


def _get_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def decide(new: ModelVersion, champ: ModelVersion | None, metric: str, lower: bool,
           margin: float) -> tuple[bool, str]:
    """(promote?, reason): the pure rule, given the new version and the current champion."""
    if champ is None:
        return True, "first version: no champion yet"
    if champ.version == new.version:
        return True, "already champion"
    why = _not_comparable(new, champ, metric)
    if why:
        return False, why
    a, b = _metric(new, metric), _metric(champ, metric)
    sense = "lower" if lower else "higher"
    if _beats(a, b, lower, margin):
        return True, f"{metric} {a:.6g} beats champion v{champ.version} ({b:.6g}) by more than {margin:g} ({sense} is better)"
    return False, f"{metric} {a:.6g} does not beat champion v{champ.version} ({b:.6g}) by more than {margin:g} ({sense} is better)"


def converge(client: MlflowClient, name: str, metric: str, lower: bool) -> ModelVersion | None:
    """Move champion to the best claimant comparable with the current champion; returns the champion."""
    champ = _get_champion(client, name)
    if champ is None:
        return None
    best = champ
    for mv in client.search_model_versions(f"name='{name}'"):
        if mv.tags.get(TAG_DECISION) != CHAMPION or mv.version == best.version:
            continue
        if _not_comparable(mv, best, metric) is None and _beats(_metric(mv, metric), _metric(best, metric), lower, 0.0):
            best = mv
    if best.version != champ.version:
        client.set_registered_model_alias(name, CHAMPION, best.version)
        client.set_model_version_tag(name, champ.version, f"promotion.v{best.version}.decision",
                                     f"replaced by v{best.version} while converging concurrent promotions")
    return best


def promote(model_name: str, version: str, primary_metric: str, lower_is_better: bool | None = None,
            margin: float = 0.0, *, use_lock: bool = True,
            _after_read: Callable[[], None] | None = None) -> PromotionDecision:
    """Give `version` the alias champion or challenger per the module rules; tags record why.

    lower_is_better=None derives the direction from the metric name. `_after_read` is a test hook that runs
    between reading the champion and writing the aliases (it widens the race window).
    """
    lower = _direction(primary_metric) if lower_is_better is None else lower_is_better
    if margin < 0:
        raise ValueError(f"margin: expected >= 0, got {margin}")
    client = MlflowClient()
    version = str(version)
    lock = promotion_lock(model_name) if use_lock else contextlib.nullcontext()
    with lock:
        new = client.get_model_version(model_name, version)
        champ = _get_champion(client, model_name)
        promoted, reason = decide(new, champ, primary_metric, lower, margin)
        if _after_read:
            _after_read()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        alias = CHAMPION if promoted else CHALLENGER
        tags = {TAG_DECISION: alias, TAG_REASON: reason, TAG_TIME: stamp,
                TAG_COMPARED: champ.version if champ is not None else ""}
        for k, v in tags.items():          # the claim is written before the alias moves (see converge)
            client.set_model_version_tag(model_name, version, k, v)
        client.set_registered_model_alias(model_name, alias, version)
        if champ is not None and champ.version != version:
            verdict = f"replaced by v{version}" if promoted else f"kept against v{version}"
            client.set_model_version_tag(model_name, champ.version, f"promotion.v{version}.decision", verdict)
            client.set_model_version_tag(model_name, champ.version, f"promotion.v{version}.reason", reason)
        final = converge(client, model_name, primary_metric, lower) if promoted else champ
        champion_version = str(final.version) if final is not None else version
        if promoted and champion_version != version:   # a better concurrent claim won: we lost after all
            promoted, alias = False, CHALLENGER
            reason += f"; then superseded by v{champion_version} from a concurrent promotion"
            client.set_model_version_tag(model_name, version, TAG_DECISION, alias)
            client.set_model_version_tag(model_name, version, TAG_REASON, reason)
            client.set_registered_model_alias(model_name, alias, version)
    return PromotionDecision(version=version, champion_version=champion_version, promoted=promoted,
                             reason=reason, alias=alias)
