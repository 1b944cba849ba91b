"""Precision/recall (Kynkaenniemi et al. 2019) and density/coverage (Naeem et al. 2020) on k-NN balls of features."""

import numpy as np

from models.metrics.registry import MetricInputs, register_metric

CHUNK = 1024   # rows per distance block: (CHUNK, N) float64 stays small even for N = 50k


def _sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(a), len(b)) via ||a||^2 + ||b||^2 - 2ab, clamped at 0."""
    d2 = _sq_norms(a)[:, None] + _sq_norms(b)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(d2, 0.0))


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """(N,) distance from each point to its k-th nearest neighbour in x, itself excluded."""
    if len(x) <= k:
        raise ValueError(f"eval.prdc_k: k = {k} needs more than {k} samples per set, got {len(x)}")
    radii = np.empty(len(x))
    for i in range(0, len(x), CHUNK):
        d = pairwise_distances(x[i:i + CHUNK], x)                  # (chunk, N)
        radii[i:i + CHUNK] = np.partition(d, k, axis=1)[:, k]       # index 0 is the point itself
    return radii


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """As in clovaai/generative-evaluation-prdc, computed in blocks of fake rows.

    precision: share of fakes inside some real k-NN ball; recall: share of reals inside some fake k-NN ball;
    density: mean number of real balls holding a fake, / k (can exceed 1); coverage: share of real balls
    that hold at least one fake.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    r_real, r_fake = knn_radii(real, k), knn_radii(fake, k)
    in_real_ball = np.zeros(len(fake), bool)       # precision, per fake
    balls_per_fake = np.zeros(len(fake))            # density, per fake
    real_in_fake_ball = np.zeros(len(real), bool)   # recall, per real
    nearest_fake = np.full(len(real), np.inf)       # coverage, per real
    for i in range(0, len(fake), CHUNK):
        d = pairwise_distances(fake[i:i + CHUNK], real)             # (chunk, N_real)
        inside = d < r_real[None, :]
        in_real_ball[i:i + CHUNK] = inside.any(axis=1)
        balls_per_fake[i:i + CHUNK] = inside.sum(axis=1)
        real_in_fake_ball |= (d < r_fake[i:i + CHUNK, None]).any(axis=0)
        nearest_fake = np.minimum(nearest_fake, d.min(axis=0))
    return {"precision": float(in_real_ball.mean()),
            "recall": float(real_in_fake_ball.mean()),
            "density": float(balls_per_fake.mean() / k),
            "coverage": float((nearest_fake < r_real).mean())}


@register_metric("prdc", higher_is_better={"precision": True, "recall": True, "density": True, "coverage": True})
def prdc_metric(inputs: MetricInputs) -> dict[str, float]:
    return prdc(inputs.real_features, inputs.fake_features, inputs.config.prdc_k)
