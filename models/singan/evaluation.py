"""SinGAN's metrics: SIFID (single-image FID on first-block Inception features) and the diversity score.

SIFID (Shaham et al. 2019, sec. 4): the Frechet distance between the distributions of the spatial feature
vectors of the real and a generated image, taken after the first max-pool of InceptionV3 (64-d, pytorch-fid
block 0). The extractor is passed in, so the weights policy (standard FID weights or a named fallback)
lives with the evaluation code: `pytorch_fid.inception.InceptionV3([0])` fits as is.
"""

import numpy as np
import torch
from torch import nn


def _features(extractor: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> (N, D, h, w); the extractor gets RGB in [0, 1] (pytorch-fid's convention)."""
    x = (images.float().clamp(-1, 1) + 1) / 2
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    dev = next(iter(extractor.parameters()), torch.empty(0)).device
    out = extractor(x.to(dev))
    return (out[-1] if isinstance(out, list | tuple) else out).detach().double().cpu()


def spatial_stats(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(D, h, w) features of one image -> mean (D,) and covariance (D, D) over its h*w positions."""
    f = features.reshape(features.shape[0], -1).T.numpy()      # (h*w, D)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2), via symmetric eigendecompositions (no scipy).

    tr((S1 S2)^1/2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)), which is symmetric PSD, so eigh is stable.
    """
    w1, v1 = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (v1 * np.sqrt(np.clip(w1, 0, None))) @ v1.T
    m = root1 @ sigma2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


@torch.no_grad()
def sifid_scores(real: torch.Tensor, fakes: torch.Tensor, extractor: nn.Module) -> list[float]:
    """SIFID of each fake (N, C, H', W') against the one real (1, C, H, W); both in [-1, 1]."""
    if real.dim() != 4 or real.shape[0] != 1:
        raise ValueError(f"real: expected shape (1, C, H, W), got {tuple(real.shape)}")
    was_training = extractor.training
    extractor.eval()
    mu_r, sig_r = spatial_stats(_features(extractor, real)[0])
    f_fake = _features(extractor, fakes)
    extractor.train(was_training)
    return [frechet_distance(mu_r, sig_r, *spatial_stats(f)) for f in f_fake]


def sifid(real: torch.Tensor, fakes: torch.Tensor, extractor: nn.Module) -> float:
    """Mean SIFID over the fakes (the paper averages over generated samples); lower is better."""
    return float(np.mean(sifid_scores(real, fakes, extractor)))


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
