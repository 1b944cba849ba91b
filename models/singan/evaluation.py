"""SinGAN-specific scores: the paper's diversity and the reconstruction RMSE (SIFID is models.metrics.sifid)."""

import torch

from models.singan.sampling import reconstruct
from models.singan.state import SinGANState


def diversity(samples: torch.Tensor, real: torch.Tensor) -> float:
    """Per the paper: the std over samples at every pixel and channel, averaged, divided by the std of the image.

    samples (N, C, H, W) and real (1, C, H, W), same size; 0 = all samples identical, about 0.5 is typical of
    SinGAN starting at the coarsest scale (paper, Table 2).
    """
    if samples.shape[0] < 2:
        raise ValueError(f"samples: expected at least 2 samples, got {samples.shape[0]}")
    if samples.shape[1:] != real.shape[1:]:
        raise ValueError(f"samples: expected the real image's shape {tuple(real.shape[1:])}, "
                         f"got {tuple(samples.shape[1:])}")
    per_pixel = samples.double().std(dim=0, unbiased=False).mean()
    return float(per_pixel / real.double().std(unbiased=False).clamp_min(1e-12))


def reconstruction_rmse(state: SinGANState) -> float:
    """RMSE between the fixed-noise reconstruction and the training image, in [-1, 1] units (0 = exact)."""
    return float((reconstruct(state) - state.image).double().pow(2).mean().sqrt())
