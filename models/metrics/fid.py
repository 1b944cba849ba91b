"""Frechet Inception Distance on (mu, sigma) of pool3 features: pytorch-fid's distance, computed through symmetric
eigendecompositions (the same number as its calculate_frechet_distance, about 10x faster at 2048 dimensions)."""

import numpy as np

from models.metrics.registry import MetricInputs, register_metric


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2)).

    S1 S2 is similar to R S2 R with R = S1^(1/2), which is symmetric and positive semi-definite, so the trace of the
    square root is the sum of the square roots of its eigenvalues: two `eigh`s of symmetric matrices instead of
    pytorch-fid's Schur-based `sqrtm` of a non-symmetric product (26 s vs 2.8 s for 2048 x 2048 on 2 CPU cores).
    The covariances of n < 2048 samples are singular; round-off eigenvalues below 0 are clipped to 0, and so is
    the distance (round-off gives -1e-9 for identical statistics)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"frechet_distance: expected means of one length d and d x d covariances, got "
                         f"{mu1.shape}, {mu2.shape}, {sigma1.shape}, {sigma2.shape}")
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = root @ sigma2 @ root
    tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum())
    diff = mu1 - mu2
    return max(0.0, float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean))


@register_metric("fid", higher_is_better={"fid": False}, floor_ratio=True)
def fid(inputs: MetricInputs) -> dict[str, float]:
    mu_r, sigma_r = inputs.real_stats
    mu_f, sigma_f = inputs.fake_stats
    return {"fid": frechet_distance(mu_f, sigma_f, mu_r, sigma_r)}
