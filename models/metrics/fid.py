"""Frechet Inception Distance: pytorch-fid's calculate_frechet_distance on (mu, sigma) of pool3 features."""

import numpy as np
from pytorch_fid.fid_score import calculate_frechet_distance

from models.metrics.registry import MetricInputs, register_metric


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)); pytorch-fid's own function (it adds eps*I if singular)."""
    return float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2))


@register_metric("fid", higher_is_better={"fid": False}, floor_ratio=True)
def fid(inputs: MetricInputs) -> dict[str, float]:
    mu_r, sigma_r = inputs.real_stats
    mu_f, sigma_f = inputs.fake_stats
    return {"fid": max(0.0, frechet_distance(mu_f, sigma_f, mu_r, sigma_r))}  # sqrtm round-off can give -1e-9
