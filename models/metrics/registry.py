"""The metric registry: @register_metric, feature domains, the inputs every metric sees, and how names are made."""

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from models.config import EvalConfig

INCEPTION = "inception"        # features of models.metrics.inception: the metrics are renamed without standard weights
RANDOM_SUFFIX = "inception_random"
# Inception-based base names whose non-standard form is not just "<name>_<suffix>": FID/KID become FD/KD.
_RENAMES = {"fid": "fd", "kid": "kd"}
FLOOR_SUFFIX, RATIO_SUFFIX, REAL_SUFFIX = "_floor", "_vs_floor", "_real"


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pytorch-fid's statistics: mu (D,) and the unbiased covariance sigma (D, D), in float64."""
    f = np.asarray(features, np.float64)
    return np.mean(f, axis=0), np.cov(f, rowvar=False)


class MetricInputs:
    """Everything a metric may read; statistics are computed once, on first use (or given from the cache)."""

    def __init__(self, real_features: np.ndarray, fake_features: np.ndarray, fake_images: np.ndarray,
                 config: EvalConfig, real_stats: tuple[np.ndarray, np.ndarray] | None = None, seed: int = 0,
                 real_probs: np.ndarray | None = None, fake_probs: np.ndarray | None = None):
        self.real_features = real_features      # float32 (N_real, D)
        self.fake_features = fake_features      # float32 (N_fake, D)
        self.fake_images = fake_images          # uint8 (N_fake, C, H, W)
        self.real_probs = real_probs            # (N_real, K) class probabilities, when the extractor classifies
        self.fake_probs = fake_probs            # (N_fake, K)
        self.config = config
        self.seed = seed
        self._real_stats = real_stats

    @property
    def real_stats(self) -> tuple[np.ndarray, np.ndarray]:
        if self._real_stats is None:
            self._real_stats = feature_stats(self.real_features)
        return self._real_stats

    @functools.cached_property
    def fake_stats(self) -> tuple[np.ndarray, np.ndarray]:
        return feature_stats(self.fake_features)


MetricFn = Callable[[MetricInputs], dict[str, float]]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    fn: MetricFn
    features: str | None                # INCEPTION, a domain's name (e.g. "digits"), or None: images only
    higher_is_better: dict[str, bool]   # per key the metric returns
    floor: bool = False                 # a distance: also computed between two disjoint real subsets (<key>_floor)
    floor_ratio: bool = False           # and <key>_vs_floor = value / floor (for distances whose floor is > 0)
    on_real: bool = False               # also computed on the real images in place of the fakes (<key>_real)
    settings: tuple[str, ...] = ()      # EvalConfig fields the values depend on (they key the cached floors)

    @property
    def uses_features(self) -> bool:
        """Computed on Inception features, so renamed without the standard weights."""
        return self.features == INCEPTION


METRICS: dict[str, MetricSpec] = {}


def register_metric(name: str, *, higher_is_better: dict[str, bool], features: str | None = INCEPTION,
                    floor: bool = False, floor_ratio: bool = False, on_real: bool = False,
                    settings: tuple[str, ...] = ()) -> Callable[[MetricFn], MetricFn]:
    """Add a metric; `fn(inputs) -> {key: value}` must return exactly the keys of `higher_is_better`.

    `features` says which features `inputs` carries: INCEPTION (the default), the name of a registered domain
    (its metrics run whenever the data is that domain), or None (the metric reads only the fake images).
    """
    unknown = [s for s in settings if s not in EvalConfig.model_fields]
    if unknown:
        raise ValueError(f"metric {name!r}: settings {unknown} are not EvalConfig fields")

    def wrap(fn: MetricFn) -> MetricFn:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        METRICS[name] = MetricSpec(name, fn, features, dict(higher_is_better), floor or floor_ratio, floor_ratio,
                                   on_real, tuple(settings))
        return fn
    return wrap


# ---------------------------------------------------------------- domains

class DomainExtractor(Protocol):
    """A domain's own feature extractor, e.g. a classifier trained on that kind of data."""

    id: str                                  # named in the MLflow tag feature_extractor

    def outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 (N, C, H, W) -> features float32 (N, D) and class probabilities (N, K) or None."""
        ...


@dataclass(frozen=True)
class Domain:
    name: str                                             # e.g. "digits"; its metrics have features=name
    load: Callable[[int, Path | None], DomainExtractor]   # (image side, cache folder) -> the extractor
    primary: str                                          # its metric key promoted without standard Inception weights


DOMAINS: dict[str, Domain] = {}


def register_domain(name: str, *, load: Callable[[int, Path | None], DomainExtractor], primary: str) -> None:
    """Add a data domain: when the evaluated data is `name`, its metrics (features=name) run beside the others."""
    if name in DOMAINS:
        raise ValueError(f"domain {name!r} is registered twice")
    DOMAINS[name] = Domain(name, load, primary)


def domain_metrics(domain: str) -> tuple[str, ...]:
    if domain not in DOMAINS:
        raise ValueError(f"domain: unknown {domain!r}; expected one of {sorted(DOMAINS)}")
    return tuple(name for name, spec in METRICS.items() if spec.features == domain)


# ---------------------------------------------------------------- names

def public_name(key: str, standard_weights: bool, uses_features: bool = True) -> str:
    """'fid' stays 'fid' with the standard weights; otherwise 'fd_inception_random', 'recall_inception_random'..."""
    if standard_weights or not uses_features:
        return key
    return f"{_RENAMES.get(key, key)}_{RANDOM_SUFFIX}"


def directions(standard_weights: bool) -> dict[str, bool]:
    """Public metric name -> True if higher is better (for promotion and benchmarks); floors and values measured
    on real data are references, not ranked, so they are absent; a ratio over the floor follows its metric."""
    out: dict[str, bool] = {}
    for s in METRICS.values():
        for k, hib in s.higher_is_better.items():
            name = public_name(k, standard_weights, s.uses_features)
            out[name] = hib
            if s.floor_ratio:
                out[name + RATIO_SUFFIX] = hib
    return out


def run_metrics(names: tuple[str, ...], inputs: MetricInputs, standard_weights: bool) -> dict[str, float]:
    """{public name: value} of the named metrics on `inputs`."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"eval.metrics: unknown {unknown}; expected names from {sorted(METRICS)}")
    out: dict[str, float] = {}
    for name in names:
        spec = METRICS[name]
        values = spec.fn(inputs)
        if set(values) != set(spec.higher_is_better):
            raise RuntimeError(f"metric {name!r} returned {sorted(values)}, declared {sorted(spec.higher_is_better)}")
        out.update({public_name(k, standard_weights, spec.uses_features): float(v) for k, v in values.items()})
    return out
