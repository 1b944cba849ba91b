"""The metric registry: @register_metric, the inputs every metric sees, and how names carry the extractor."""

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from models.config import EvalConfig

RANDOM_SUFFIX = "inception_random"
# Inception-based base names whose non-standard form is not just "<name>_<suffix>": FID/KID become FD/KD.
_RENAMES = {"fid": "fd", "kid": "kd"}


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pytorch-fid's statistics: mu (D,) and the unbiased covariance sigma (D, D), in float64."""
    f = np.asarray(features, np.float64)
    return np.mean(f, axis=0), np.cov(f, rowvar=False)


class MetricInputs:
    """Everything a metric may read; statistics are computed once, on first use (or given from the cache)."""

    def __init__(self, real_features: np.ndarray, fake_features: np.ndarray, fake_images: np.ndarray,
                 config: EvalConfig, real_stats: tuple[np.ndarray, np.ndarray] | None = None, seed: int = 0):
        self.real_features = real_features      # float32 (N_real, D)
        self.fake_features = fake_features      # float32 (N_fake, D)
        self.fake_images = fake_images          # uint8 (N_fake, C, H, W)
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
    uses_features: bool                 # True: computed on Inception features, so renamed without standard weights
    higher_is_better: dict[str, bool]   # per key the metric returns


METRICS: dict[str, MetricSpec] = {}


def register_metric(name: str, *, higher_is_better: dict[str, bool],
                    uses_features: bool = True) -> Callable[[MetricFn], MetricFn]:
    """Add a metric; `fn(inputs) -> {key: value}` must return exactly the keys of `higher_is_better`."""
    def wrap(fn: MetricFn) -> MetricFn:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        METRICS[name] = MetricSpec(name, fn, uses_features, dict(higher_is_better))
        return fn
    return wrap


def public_name(key: str, standard_weights: bool, uses_features: bool = True) -> str:
    """'fid' stays 'fid' with the standard weights; otherwise 'fd_inception_random', 'recall_inception_random'..."""
    if standard_weights or not uses_features:
        return key
    return f"{_RENAMES.get(key, key)}_{RANDOM_SUFFIX}"


def directions(standard_weights: bool) -> dict[str, bool]:
    """Public metric name -> True if higher is better (for promotion and benchmarks)."""
    return {public_name(k, standard_weights, s.uses_features): hib
            for s in METRICS.values() for k, hib in s.higher_is_better.items()}


def run_metrics(names: tuple[str, ...], inputs: MetricInputs, standard_weights: bool) -> dict[str, float]:
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
