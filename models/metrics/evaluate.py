"""evaluate_images: fake vs real uint8 images -> the metric table with real-vs-real floors, named by extractor."""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from models.config import EvalConfig
from models.metrics import cache
from models.metrics.features import extract_features, resolve_device
from models.metrics.inception import Extractor, load_extractor
from models.metrics.registry import (
    DOMAINS,
    FLOOR_SUFFIX,
    INCEPTION,
    METRICS,
    RATIO_SUFFIX,
    REAL_SUFFIX,
    MetricInputs,
    directions,
    domain_metrics,
    feature_stats,
    public_name,
    run_metrics,
)

REAL_SUBSET_SEED = 0   # fixed, so every evaluation of a dataset uses the same real images (and cached features)
FLOOR_SEED = 0         # the floors describe the real data: one seed for their random draws (KID's subsets)
DISJOINT, HALVES = "disjoint", "halves"   # how the floor's two real subsets were taken
MIN_FLOOR = 1e-9       # below this a floor is round-off of zero (identical subsets): no ratio over it

Outputs = tuple[np.ndarray, np.ndarray | None]       # features (N, D), class probabilities (N, K) or None


@dataclass
class EvalResult:
    metrics: dict[str, float]          # public names: fid ... or fd_inception_random ...; floors, ratios, *_real
    extractor: str                     # the MLflow tag feature_extractor: Inception's id, "+" the domain's
    standard_weights: bool
    primary_metric_name: str
    feature_images_per_s: float        # Inception throughput over the images actually extracted (0 if all cached)
    higher_is_better: dict[str, bool] = field(default_factory=dict)   # ranked metrics only (no floors, *_real)
    timings_s: dict[str, float] = field(default_factory=dict)
    real_cache: str = ""               # the .npz used or written for the real side ("" if caching is off)
    real_cache_hit: bool = False       # every extractor's real side came from the cache
    floor_n: int = 0                   # images in each real subset behind the floors (0: no distance computed)
    floor_split: str = ""              # DISJOINT (the compared n and n more) or HALVES (the compared n, halved)
    domain: str | None = None          # the data's domain whose own metrics ran (e.g. "digits")

    def table(self) -> str:
        """The metric table as printed by `transsrgan evaluate`."""
        width = max(len(k) for k in self.metrics) if self.metrics else 10
        lines = [f"{'metric':<{width}}  {'value':>12}  better"]
        for k, v in self.metrics.items():
            hib = self.higher_is_better.get(k)
            lines.append(f"{k:<{width}}  {v:>12.6g}  {'reference' if hib is None else 'higher' if hib else 'lower'}")
        lines.append(f"feature_extractor: {self.extractor}"
                     + ("" if self.standard_weights else "  (random weights: NOT comparable with published FID)"))
        if self.floor_n:
            lines.append(floor_note(self.floor_n, self.floor_split))
        summary = quality_summary(self.metrics)
        if summary:
            lines.append(f"quality: {summary}")
        return "\n".join(lines)


def floor_note(floor_n: int, split: str) -> str:
    """Which real subsets the floors compare, in words."""
    if split == DISJOINT:
        return f"floors (*{FLOOR_SUFFIX}): real vs real, two disjoint subsets of {floor_n} images (the compared n)"
    return (f"floors (*{FLOOR_SUFFIX}): real vs real, the two halves of the compared real images, {floor_n} each "
            f"(n/2: fewer than 2n real images, so the floors are higher than at n)")


def quality_summary(metrics: dict[str, float]) -> str:
    """'recognisable 83% (real 97%), fd_digits 3.1x the real-vs-real floor, ...' from whatever metrics are present."""
    parts = []
    if "recognisable" in metrics:
        real = metrics.get("recognisable" + REAL_SUFFIX)
        parts.append(f"recognisable {metrics['recognisable']:.0%}" + (f" (real {real:.0%})" if real is not None else ""))
    parts += [f"{k[:-len(RATIO_SUFFIX)]} {v:.1f}x the real-vs-real floor"
              for k, v in metrics.items() if k.endswith(RATIO_SUFFIX)]
    return ", ".join(parts)


def _key_spec(key: str):
    for spec in METRICS.values():
        if key in spec.higher_is_better:
            return spec
    raise ValueError(f"eval.primary_metric: unknown metric {key!r}; expected one of "
                     f"{sorted(k for s in METRICS.values() for k in s.higher_is_better)}")


def real_subsets(images: np.ndarray, n: int, seed: int = REAL_SUBSET_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(compared, floor partner), uint8 (min(n, N), C, H, W) and (min(n, N - n), C, H, W): the first n and the next
    n of a fixed random permutation of the real images, each in original order; disjoint."""
    order = np.random.default_rng(seed).permutation(len(images))
    return images[np.sort(order[:n])], images[np.sort(order[n:2 * n])]


def real_subset(images: np.ndarray, n: int, seed: int = REAL_SUBSET_SEED) -> np.ndarray:
    """uint8 (min(n, N), C, H, W): the fixed random subset of the real images that evaluations compare."""
    return real_subsets(images, n, seed)[0]


T = TypeVar("T", np.ndarray, None)


def floor_pair(real: T, partner: T | None) -> tuple[T, T]:
    """Two disjoint real sets of one size for the floors, rows of images, features or probabilities: (real,
    partner) when the partner has len(real) rows (DISJOINT, n each), else the even and odd rows of `real` (HALVES,
    n // 2 each; interleaved, so data stored in class order gives both halves every class)."""
    if real is None:
        return None, None
    if partner is not None and len(partner) >= len(real):
        return real, partner[:len(real)]
    m = len(real) // 2
    return real[0::2][:m], real[1::2][:m]


def primary_metric_name(config: EvalConfig, standard_weights: bool, domain: str | None = None) -> str:
    """eval.primary_metric under its public name: 'fid' with standard weights, 'fd_inception_random' without; for
    data with a domain (the embedded digits) 'fid' without standard weights means the domain's own (fd_digits)."""
    if domain is not None and not standard_weights and config.primary_metric == "fid":
        return DOMAINS[domain].primary
    return public_name(config.primary_metric, standard_weights, _key_spec(config.primary_metric).uses_features)


def _check_images(name: str, images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"{name}: expected uint8 array (N, 1|3, H, W), got {got}")
    if len(images) < 2:
        raise ValueError(f"{name}: expected at least 2 images, got {len(images)}")


def _generic_metrics(config: EvalConfig) -> tuple[str, ...]:
    """eval.metrics, checked: registered, and none of a domain's (those run by themselves on their data)."""
    unknown = [m for m in config.metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"eval.metrics: unknown {unknown}; expected names from {sorted(METRICS)}")
    generic = sorted(m for m, s in METRICS.items() if s.features in (INCEPTION, None))
    owned = [m for m in config.metrics if m not in generic]
    if owned:
        raise ValueError(f"eval.metrics: {owned} belong to a data domain and run by themselves when the data is "
                         f"that domain; expected names from {generic}")
    return tuple(config.metrics)


@dataclass(frozen=True)
class _Space:
    """One extractor and the metrics computed on its outputs."""

    id: str
    metrics: tuple[str, ...]
    extract: Callable[[np.ndarray], Outputs]


def _references_spec(names: tuple[str, ...], config: EvalConfig, split: str) -> str:
    """What the cached floors and values on real data depend on besides the images (part of the cache key)."""
    specs = [METRICS[n] for n in names if METRICS[n].floor or METRICS[n].on_real]
    return json.dumps({"metrics": sorted(s.name for s in specs), "split": split, "seed": FLOOR_SEED,
                       "settings": {k: getattr(config, k) for s in specs for k in s.settings}}, sort_keys=True)


def _references(names: tuple[str, ...], real: np.ndarray, partner: np.ndarray | None, outputs: Outputs,
                partner_outputs: Outputs | None, config: EvalConfig, standard: bool) -> tuple[dict[str, float], int]:
    """({public name + _floor or _real: value}, images per floor subset) for the metrics that declare them; no
    floors when the subsets would hold fewer than 2 images (n < 4 without a partner)."""
    refs: dict[str, float] = {}
    partner_feats, partner_probs = partner_outputs or (None, None)
    fa, fb = floor_pair(outputs[0], partner_feats)
    pa, pb = floor_pair(outputs[1], partner_probs)
    _, ib = floor_pair(real, partner)
    floors = tuple(n for n in names if METRICS[n].floor) if len(fb) >= 2 else ()
    if floors:
        inputs = MetricInputs(fa, fb, ib, config, seed=FLOOR_SEED, real_probs=pa, fake_probs=pb)
        refs.update({k + FLOOR_SUFFIX: v for k, v in run_metrics(floors, inputs, standard).items()})
    on_real = tuple(n for n in names if METRICS[n].on_real)
    if on_real:
        feats, probs = outputs
        inputs = MetricInputs(feats, feats, real, config, seed=FLOOR_SEED, real_probs=probs, fake_probs=probs)
        refs.update({k + REAL_SUFFIX: v for k, v in run_metrics(on_real, inputs, standard).items()})
    return refs, (len(fa) if floors else 0)


def _real_side(space: _Space, real: np.ndarray, partner: np.ndarray | None, config: EvalConfig,
               fingerprint: str | None, cache_dir: Path | None,
               standard: bool) -> tuple[cache.RealSide, Path | None, int, float]:
    """(the real side, its cache file or None, images extracted (0: read from the cache), extraction seconds)."""
    path = None
    if config.cache_real:
        split = HALVES if partner is None else DISJOINT
        path = cache.cache_path(cache_dir or cache.default_cache_dir(), real, space.id, fingerprint,
                                floor_images=partner, references=_references_spec(space.metrics, config, split))
        side = cache.load_real(path)
        if side is not None:
            return side, path, 0, 0.0
    t = time.perf_counter()
    outputs = space.extract(real)
    partner_outputs = space.extract(partner) if partner is not None else None
    extract_s = time.perf_counter() - t
    refs, floor_n = _references(space.metrics, real, partner, outputs, partner_outputs, config, standard)
    side = cache.RealSide(outputs[0], *feature_stats(outputs[0]), outputs[1], refs, floor_n)
    if path is not None:
        cache.save_real(path, side)
    return side, path, len(real) + (len(partner) if partner is not None else 0), extract_s


def _arrange(names: tuple[str, ...], values: dict[str, float], refs: dict[str, float],
             standard: bool) -> dict[str, float]:
    """Each metric followed by its floor, its ratio over the floor (when the floor is > 0) and its value on real."""
    out: dict[str, float] = {}
    for name in names:
        spec = METRICS[name]
        for key in spec.higher_is_better:
            k = public_name(key, standard, spec.uses_features)
            out[k] = values[k]
            floor = refs.get(k + FLOOR_SUFFIX)
            if floor is not None:
                out[k + FLOOR_SUFFIX] = floor
                if spec.floor_ratio and floor > MIN_FLOOR:
                    out[k + RATIO_SUFFIX] = values[k] / floor
            if k + REAL_SUFFIX in refs:
                out[k + REAL_SUFFIX] = refs[k + REAL_SUFFIX]
    return out


def _spaces(names: tuple[str, ...], ex: Extractor, domain: str | None, own: tuple[str, ...], side: int,
            config: EvalConfig, cache_dir: Path | None, timings: dict[str, float]) -> list[_Space]:
    """Inception for its metrics in eval.metrics, then the domain's own extractor for the domain's metrics."""
    spaces = []
    inception = tuple(m for m in names if METRICS[m].uses_features)
    if inception:
        device = resolve_device(config.device)
        spaces.append(_Space(ex.id, inception, lambda x: (extract_features(x, ex, config.batch_size, device)[0],
                                                          None)))
    if domain is not None:
        t = time.perf_counter()
        dx = DOMAINS[domain].load(side, cache_dir)
        timings[f"load_{domain}"] = time.perf_counter() - t
        spaces.append(_Space(dx.id, own, dx.outputs))
    return spaces


def evaluate_images(fake: np.ndarray, real: np.ndarray, *, config: EvalConfig, fingerprint: str | None = None,
                    cache_dir: Path | None = None, seed: int = 0, floor_real: np.ndarray | None = None,
                    domain: str | None = None) -> EvalResult:
    """All of config.metrics for fake vs real (both uint8 (N, C, H, W), sizes may differ), and the metrics of
    `domain` (e.g. "digits") when the data is that domain.

    Every distance also gets its floor, the same distance between two disjoint real subsets of one size:
    `real` and `floor_real` when floor_real has len(real) images (real_subsets gives both), else the two halves
    of `real`. Real features and floors are read from / written to the cache when config.cache_real. Raises
    models.metrics.inception.InceptionWeightsError when the standard weights are missing and
    config.allow_random_features is False.
    """
    config.validate()
    _check_images("fake", fake)
    _check_images("real", real)
    partner = floor_real[:len(real)] if floor_real is not None and len(floor_real) >= len(real) else None
    if partner is not None:
        _check_images("floor_real", partner)
    names = _generic_metrics(config)
    own = domain_metrics(domain) if domain is not None else ()   # an unknown domain fails before any work
    timings: dict[str, float] = {}
    t = time.perf_counter()
    ex = load_extractor(config.inception_weights, config.allow_random_features, config.random_features_seed,
                        download=config.download_weights)
    timings["load_extractor"] = time.perf_counter() - t
    spaces = _spaces(names, ex, domain, own, real.shape[-1], config, cache_dir, timings)

    values: dict[str, float] = {}
    refs: dict[str, float] = {}
    paths, hits, floor_n, inception_images, inception_s = [], [], 0, 0, 0.0
    for space in spaces:
        side, path, n_real, real_s = _real_side(space, real, partner, config, fingerprint, cache_dir, ex.standard)
        t = time.perf_counter()
        fake_feats, fake_probs = space.extract(fake)
        extract_s = real_s + time.perf_counter() - t
        timings[f"features_{space.id}"] = extract_s
        if space.id == ex.id:
            inception_images, inception_s = n_real + len(fake), extract_s
        inputs = MetricInputs(side.features, fake_feats, fake, config, real_stats=(side.mu, side.sigma), seed=seed,
                              real_probs=side.probs, fake_probs=fake_probs)
        t = time.perf_counter()
        values.update(run_metrics(space.metrics, inputs, ex.standard))
        timings[f"metrics_{space.id}"] = time.perf_counter() - t
        refs.update(side.references)
        paths.append(str(path or ""))
        hits.append(path is not None and n_real == 0)
        floor_n = floor_n or side.floor_n
    images_only = tuple(m for m in names if METRICS[m].features is None)
    if images_only:
        t = time.perf_counter()
        empty = np.zeros((0, 0), np.float32)
        values.update(run_metrics(images_only, MetricInputs(empty, empty, fake, config, seed=seed), ex.standard))
        timings["metrics_images"] = time.perf_counter() - t

    metrics = _arrange(names + own, values, refs, ex.standard)
    return EvalResult(metrics=metrics, extractor="+".join([ex.id] + [s.id for s in spaces if s.id != ex.id]),
                      standard_weights=ex.standard, primary_metric_name=primary_metric_name(config, ex.standard, domain),
                      feature_images_per_s=inception_images / inception_s if inception_s > 0 else 0.0,
                      higher_is_better={k: v for k, v in directions(ex.standard).items() if k in metrics},
                      timings_s=timings, real_cache=paths[0] if paths else "", real_cache_hit=bool(hits) and all(hits),
                      floor_n=floor_n, floor_split=(HALVES if partner is None else DISJOINT) if floor_n else "",
                      domain=domain)
