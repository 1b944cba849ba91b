"""SIFID (Frechet distance of first-block Inception features) and the diversity score."""

import numpy as np
import pytest
import torch
from pytorch_fid.fid_score import calculate_frechet_distance
from torch import nn

from models.singan import diversity, frechet_distance, sifid, sifid_scores


def random_first_block(seed: int = 0) -> nn.Module:
    """pytorch-fid's block 0 (Conv2d_1a..2b + max-pool, 64-d), randomly initialised, behind its input handling."""
    from pytorch_fid.inception import InceptionV3, _inception_v3

    torch.manual_seed(seed)
    net = _inception_v3(num_classes=1008, aux_logits=False, weights=None)
    block = nn.Sequential(net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, nn.MaxPool2d(3, 2))
    wrapper = InceptionV3.__new__(InceptionV3)          # the real forward (resize to 299, [0,1] -> [-1,1])
    nn.Module.__init__(wrapper)
    wrapper.resize_input, wrapper.normalize_input = True, True
    wrapper.output_blocks, wrapper.last_needed_block = [0], 0
    wrapper.blocks = nn.ModuleList([block])
    return wrapper.eval()


@pytest.fixture(scope="module")
def extractor():
    return random_first_block()


def test_sifid_of_an_image_with_itself_is_zero(extractor):
    x = torch.rand(1, 3, 40, 52) * 2 - 1
    assert abs(sifid(x, x, extractor)) < 1e-4
    y = (x + 0.5 * torch.randn_like(x)).clamp(-1, 1)
    scores = sifid_scores(x, torch.cat([x, y]), extractor)
    assert abs(scores[0]) < 1e-4 and scores[1] > 1e-3


def test_extractor_output_is_64_dimensional(extractor):
    out = extractor(torch.rand(1, 3, 40, 52))
    assert out[0].shape[1] == 64


def test_grayscale_is_fed_as_rgb(extractor):
    g = torch.rand(1, 1, 30, 30) * 2 - 1
    assert sifid(g, g.expand(-1, 3, -1, -1), extractor) == pytest.approx(0.0, abs=1e-4)


def test_frechet_matches_pytorch_fid_and_the_equal_covariance_identity():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 8)), rng.normal(size=(200, 8)) @ rng.normal(size=(8, 8)) + 1
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(calculate_frechet_distance(mu1, s1, mu2, s2), rel=1e-6)
    assert frechet_distance(mu1, s1, mu1 + 2, s1) == pytest.approx(4 * 8, rel=1e-6)


def test_diversity():
    real = torch.rand(1, 3, 8, 8) * 2 - 1
    assert diversity(real.expand(5, -1, -1, -1), real) == 0.0
    two = torch.stack([real[0] + 0.1, real[0] - 0.1])           # per-pixel std 0.1 everywhere
    assert diversity(two, real) == pytest.approx(0.1 / real.std(unbiased=False).item(), rel=1e-5)
    with pytest.raises(ValueError, match="samples"):
        diversity(real, real)
