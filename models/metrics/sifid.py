"""SIFID as the official SinGAN code computes it: per-image Frechet distance of 192-d Inception conv features."""

# Shaham et al. 2019, sec. 4, and their SIFID script: the feature vectors at every position of the output of
# InceptionV3's Conv2d_4a_3x3 (192 channels, the layer just before the second max-pool; that script's "block 1":
# Conv2d_1a..2b, max-pool, Conv2d_3b, Conv2d_4a; pytorch-fid's block 1 ends after the second max-pool, so it is
# not this layer) are treated as samples of one distribution per image, and the Frechet distance between the real
# image's and one fake's Gaussians is that fake's SIFID. No resize to 299: the features are taken at the image's
# own size. Weights: torchvision's ImageNet InceptionV3 (the script builds
# `torchvision.models.inception_v3(pretrained=True)`), not pytorch-fid's FID weights.
#
# Not in the metric registry: registry metrics share one extractor's pool3 features over many real images,
# while SIFID compares one real image with each fake through its own network.

import functools
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models import Inception_V3_Weights, inception_v3

from models.files import sha256_file
from models.metrics.fid import frechet_distance
from models.metrics.inception import InceptionWeightsError, randomize_
from models.metrics.registry import public_name

WEIGHTS = Inception_V3_Weights.IMAGENET1K_V1
WEIGHTS_FILENAME = WEIGHTS.url.rsplit("/", 1)[-1]            # inception_v3_google-0cc3c7bd.pth
HASH_PREFIX = WEIGHTS_FILENAME.rsplit("-", 1)[-1].split(".")[0]  # sha256 prefix, as torch.hub checks it
FEATURE_DIM = 192
FEATURES = "block1-192d"                                     # Conv2d_4a_3x3, before the second max-pool
STANDARD_ID = f"inception-v3-torchvision-imagenet1k-v1-{FEATURES}"
MIN_SIDE = 23                                                # smallest side with 2 feature rows


def random_id(seed: int) -> str:
    return f"inception-v3-random-seed{seed}-{FEATURES}"


def sifid_metric_name(standard: bool) -> str:
    """`sifid` only with torchvision's ImageNet weights; `sifid_inception_random` with seeded random weights."""
    return public_name("sifid", standard)


def weights_path() -> Path:
    """Where torchvision keeps the file: $TORCH_HOME/hub/checkpoints/ (default ~/.cache/torch/hub/checkpoints/)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILENAME


def missing_message() -> str:
    return (f"SIFID: torchvision's ImageNet InceptionV3 weights not found at {weights_path()}. Download "
            f"{WEIGHTS.url} on a machine with internet and copy it there, or allow random features "
            f"(allow_random_features); SIFID is then named {sifid_metric_name(False)} and is not the paper's SIFID.")


def find_weights() -> Path | None:
    """The verified weights file in the torch hub cache, or None; never downloads."""
    path = weights_path()
    if not path.is_file():
        return None
    digest = sha256_file(path)
    if not digest.startswith(HASH_PREFIX):
        raise InceptionWeightsError(f"{path}: sha256 {digest[:16]}... does not start with {HASH_PREFIX}; this is "
                                    f"not {WEIGHTS_FILENAME} (corrupt or a different file). {missing_message()}")
    return path


class SIFIDFeatures(nn.Module):
    """(B, 3, H, W) in [0, 1] -> [-1, 1] -> (B, 192, h, w): InceptionV3 up to Conv2d_4a_3x3, no resize."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        b = backbone
        self.blocks = nn.ModuleList([
            nn.Sequential(b.Conv2d_1a_3x3, b.Conv2d_2a_3x3, b.Conv2d_2b_3x3),
            nn.Sequential(nn.MaxPool2d(kernel_size=3, stride=2), b.Conv2d_3b_1x1, b.Conv2d_4a_3x3),
        ])
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = 2 * x - 1                                  # the range the ported TF weights expect
        for block in self.blocks:
            x = block(x)
        return x                                       # (B, 192, h, w)


def sifid_extractor(allow_random: bool, seed: int = 0) -> tuple[nn.Module, str, bool]:
    """(net, feature_extractor id, standard?): torchvision's ImageNet weights when the file is in the torch hub
    cache; else seeded random weights if allowed (models.metrics.inception.randomize_); else InceptionWeightsError."""
    path = find_weights()
    if path is None and not allow_random:
        raise InceptionWeightsError(missing_message())
    return _build(str(path) if path else "", seed)


@functools.lru_cache(maxsize=2)
def _build(path: str, seed: int) -> tuple[nn.Module, str, bool]:
    backbone = inception_v3(weights=None, aux_logits=True, init_weights=False)
    if path:
        backbone.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return SIFIDFeatures(backbone), STANDARD_ID, True
    return randomize_(SIFIDFeatures(backbone), seed), random_id(seed), False


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    """(N, 1|3, H, W) in [-1, 1] -> (N, 3, H, W) in [0, 1], rounded to 8 bits as the script reads image files."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round() / 255
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def spatial_stats(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(D, h, w) features of one image -> mean (D,) and unbiased covariance (D, D) over its h*w positions."""
    f = features.reshape(features.shape[0], -1).T.double().cpu().numpy()      # (h*w, D)
    return f.mean(axis=0), np.cov(f, rowvar=False)


@torch.no_grad()
def _features(images: torch.Tensor, net: nn.Module, batch_size: int) -> list[torch.Tensor]:
    """(N, C, H, W) in [-1, 1] -> N feature maps (192, h, w), h and w >= 2."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images: expected (N, 1|3, H, W) in [-1, 1], got shape {tuple(images.shape)}")
    if min(images.shape[-2:]) < MIN_SIDE:
        raise ValueError(f"SIFID: expected both image sides >= {MIN_SIDE} px (a 2x2 Conv2d_4a feature map at "
                         f"least, for a covariance), got {images.shape[-2]}x{images.shape[-1]}")
    dev = next(iter(net.parameters()), torch.empty(0)).device
    was_training = net.training
    net.eval()
    out = [net(_to_unit(images[i:i + batch_size]).to(dev)).cpu() for i in range(0, len(images), batch_size)]
    net.train(was_training)
    return list(torch.cat(out))


def sifid_scores(real: torch.Tensor, fakes: torch.Tensor, net: nn.Module, batch_size: int = 16) -> list[float]:
    """SIFID of each fake (N, C, H', W') against the one real image (1, C, H, W); both in [-1, 1]."""
    if real.dim() != 4 or real.shape[0] != 1:
        raise ValueError(f"real: expected shape (1, C, H, W), got {tuple(real.shape)}")
    mu_r, sigma_r = spatial_stats(_features(real, net, 1)[0])
    scores = []
    for f in _features(fakes, net, batch_size):
        mu_f, sigma_f = spatial_stats(f)
        scores.append(frechet_distance(mu_r, sigma_r, mu_f, sigma_f))   # FID's distance (pytorch-fid's value)
    return scores


def sifid(real: torch.Tensor, fakes: torch.Tensor, net: nn.Module, batch_size: int = 16) -> float:
    """Mean SIFID over the fakes (the paper averages over generated samples); lower is better."""
    return float(np.mean(sifid_scores(real, fakes, net, batch_size)))
