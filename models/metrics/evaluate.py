"""evaluate_images: fake vs real uint8 images -> the metric table, named by the extractor that produced it."""

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.config import EvalConfig
from models.metrics import cache
from models.metrics.features import extract_features, resolve_device
from models.metrics.inception import load_extractor
from models.metrics.registry import METRICS, MetricInputs, directions, feature_stats, public_name, run_metrics


@dataclass
class EvalResult:
    metrics: dict[str, float]          # public names: fid ... or fd_inception_random ...; msssim_diversity
    extractor: str                     # the MLflow tag feature_extractor
    standard_weights: bool
    primary_metric_name: str
    feature_images_per_s: float        # Inception throughput over the images actually extracted (0 if all cached)
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    real_cache: str = ""               # the .npz used or written for the real side ("" if caching is off)
    real_cache_hit: bool = False

    def table(self) -> str:
        """The metric table as printed by `transsrgan evaluate`."""
        width = max(len(k) for k in self.metrics) if self.metrics else 10
        lines = [f"{'metric':<{width}}  {'value':>12}  better"]
        for k, v in self.metrics.items():
            arrow = "higher" if self.higher_is_better.get(k, False) else "lower"
            lines.append(f"{k:<{width}}  {v:>12.6g}  {arrow}")
        lines.append(f"feature_extractor: {self.extractor}"
                     + ("" if self.standard_weights else "  (random weights: NOT comparable with published FID)"))
        return "\n".join(lines)


def _key_spec(key: str):
    for spec in METRICS.values():
        if key in spec.higher_is_better:
            return spec
    raise ValueError(f"eval.primary_metric: unknown metric {key!r}; expected one of "
                     f"{sorted(k for s in METRICS.values() for k in s.higher_is_better)}")


REAL_SUBSET_SEED = 0   # fixed, so every evaluation of a dataset uses the same real images (and cached features)


def real_subset(images: np.ndarray, n: int, seed: int = REAL_SUBSET_SEED) -> np.ndarray:
    """uint8 (min(n, N), C, H, W): a fixed random subset of the real images, in their original order."""
    if len(images) > n:
        images = images[np.sort(np.random.default_rng(seed).permutation(len(images))[:n])]
    return images


def primary_metric_name(config: EvalConfig, standard_weights: bool) -> str:
    """eval.primary_metric under its public name: 'fid' with standard weights, 'fd_inception_random' without."""
    return public_name(config.primary_metric, standard_weights, _key_spec(config.primary_metric).uses_features)


def _check_images(name: str, images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"{name}: expected uint8 array (N, 1|3, H, W), got {got}")
    if len(images) < 2:
        raise ValueError(f"{name}: expected at least 2 images, got {len(images)}")


def evaluate_images(fake: np.ndarray, real: np.ndarray, *, config: EvalConfig, fingerprint: str | None = None,
                    cache_dir: Path | None = None, seed: int = 0) -> EvalResult:
    """All of config.metrics for fake vs real (both uint8 (N, C, H, W), sizes may differ).

    Real features are read from / written to the cache when config.cache_real. Raises
    models.metrics.inception.InceptionWeightsError when the standard weights are missing and
    config.allow_random_features is False.
    """
    config.validate()
    _check_images("fake", fake)
    _check_images("real", real)
    unknown = [m for m in config.metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"eval.metrics: unknown {unknown}; expected names from {sorted(METRICS)}")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    ex = load_extractor(config.inception_weights, config.allow_random_features, config.random_features_seed,
                        download=config.download_weights)
    timings["load_extractor"] = time.perf_counter() - t
    device = resolve_device(config.device)
    needs_features = any(METRICS[m].uses_features for m in config.metrics if m in METRICS)

    real_feats = fake_feats = np.zeros((0, 0), np.float32)
    real_stats, path, hit, n_extracted, extract_s = None, None, False, 0, 0.0
    if needs_features:
        if config.cache_real:
            path = cache.cache_path(cache_dir or cache.default_cache_dir(), real, ex.id, fingerprint)
            cached = cache.load_real(path)
            if cached is not None:
                real_feats, mu, sigma = cached
                real_stats, hit = (mu, sigma), True
        if not hit:
            real_feats, ips = extract_features(real, ex, config.batch_size, device)
            n_extracted, extract_s = len(real), len(real) / ips if ips else 0.0
            real_stats = feature_stats(real_feats)
            if path is not None:
                cache.save_real(path, real_feats, *real_stats)
        fake_feats, ips = extract_features(fake, ex, config.batch_size, device)
        n_extracted += len(fake)
        extract_s += len(fake) / ips if ips else 0.0
    timings["features"] = extract_s

    t = time.perf_counter()
    inputs = MetricInputs(real_feats, fake_feats, fake, config, real_stats=real_stats, seed=seed)
    metrics = run_metrics(tuple(config.metrics), inputs, ex.standard)
    timings["metrics"] = time.perf_counter() - t
    return EvalResult(metrics=metrics, extractor=ex.id, standard_weights=ex.standard,
                      primary_metric_name=primary_metric_name(config, ex.standard),
                      feature_images_per_s=n_extracted / extract_s if extract_s > 0 else 0.0,
                      higher_is_better={k: v for k, v in directions(ex.standard).items() if k in metrics},
                      timings_s=timings, real_cache=str(path or ""), real_cache_hit=hit)
