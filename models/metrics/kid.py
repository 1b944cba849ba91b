"""Kernel Inception Distance: unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, averaged over random subsets."""

import numpy as np

from models.metrics.registry import MetricInputs, register_metric


def kernel_distance(fake: np.ndarray, real: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> float:
    """fake (N_f, D), real (N_r, D) -> mean unbiased MMD^2 over `subsets` draws of m = min(subset_size, N_f, N_r).

    Unbiased: the diagonal k(x, x) terms are left out, so two samples of one distribution give ~0, sometimes < 0.
    """
    fake, real = np.asarray(fake, np.float64), np.asarray(real, np.float64)
    d = fake.shape[1]
    m = min(subset_size, len(fake), len(real))
    if m < 2:
        raise ValueError(f"KID needs at least 2 real and 2 fake samples, got {len(real)} and {len(fake)}")
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(subsets):
        x = fake[rng.choice(len(fake), m, replace=False)]          # (m, D)
        y = real[rng.choice(len(real), m, replace=False)]          # (m, D)
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        total += within - 2 * kxy.sum() / (m * m)
    return float(total / subsets)


@register_metric("kid", higher_is_better={"kid": False}, floor=True, settings=("kid_subsets", "kid_subset_size"))
def kid(inputs: MetricInputs) -> dict[str, float]:
    c = inputs.config
    return {"kid": kernel_distance(inputs.fake_features, inputs.real_features, c.kid_subsets, c.kid_subset_size,
                                   seed=inputs.seed)}
