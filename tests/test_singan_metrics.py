"""SIFID (models.metrics.sifid: Conv2d_4a features, pytorch-fid's Frechet distance), diversity, reconstruction."""

import hashlib

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import inception_v3

from models.metrics import InceptionWeightsError
from models.metrics import sifid as sf
from models.metrics.inception import randomize_
from models.singan import diversity, reconstruction_rmse


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """The torch hub cache without torchvision's Inception file."""
    monkeypatch.setattr(sf, "weights_path", lambda: tmp_path / sf.WEIGHTS_FILENAME)
    return tmp_path / sf.WEIGHTS_FILENAME


@pytest.fixture(scope="module")
def random_net():
    return sf._build("", 0)[0]


class UnitFeatures(nn.Module):
    """The image itself as its feature map: (B, 3, H, W) in [0, 1] -> the same; makes SIFID's statistics exact."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def smooth(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.avg_pool2d(torch.rand(shape, generator=g) * 2 - 1, 3, 1, 1)


# ------------------------------------------------------------------ the features

def test_features_are_torchvision_inceptions_conv2d_4a_output(random_net):
    """The 192-d activations just before the second max-pool, read by a hook inside torchvision's own forward."""
    backbone = randomize_(inception_v3(weights=None, aux_logits=False, init_weights=False), 0).eval()
    ours = sf.SIFIDFeatures(backbone)
    seen = []
    backbone.Conv2d_4a_3x3.register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.rand(2, 3, 80, 96)
    with torch.no_grad():
        backbone(2 * x - 1)                                        # transform_input=False: the input as given
        got = ours(x)
    assert got.shape == (2, sf.FEATURE_DIM, 16, 20)                # 80x96 -> 39x47 -> 37x45 -> 18x22 -> 16x20
    assert torch.allclose(got, seen[0], atol=1e-5)
    assert random_net.blocks[-1][-1].conv.out_channels == sf.FEATURE_DIM


def test_features_are_taken_at_the_images_own_size(random_net):
    maps = sf._features(smooth((1, 3, 23, 40)), random_net, 1)
    assert maps[0].shape == (192, 2, 6)                            # no resize to 299
    with pytest.raises(ValueError, match=r">= 23 px .* got 18x20"):
        sf._features(smooth((1, 3, 18, 20)), random_net, 1)


# ------------------------------------------------------------------ the distance

def test_sifid_of_an_image_with_itself_is_zero_and_others_are_positive(random_net):
    x = smooth((1, 3, 40, 52))
    y = smooth((1, 3, 40, 52), seed=1)
    scores = sf.sifid_scores(x, torch.cat([x, y]), random_net)
    assert scores[0] == pytest.approx(0.0, abs=1e-6) and scores[1] > 1e-3
    assert sf.sifid(x, torch.cat([x, y]), random_net) == pytest.approx(np.mean(scores))


def test_a_shifted_mean_gives_the_squared_mean_distance():
    """Equal covariances: SIFID = ||mu_real - mu_fake||^2 (pytorch-fid's identity), per channel shift s_c / 255."""
    u8 = torch.randint(20, 200, (1, 3, 24, 30), generator=torch.Generator().manual_seed(0)).float()
    real = u8 / 127.5 - 1
    shift = torch.tensor([10.0, 0.0, 4.0]).view(1, 3, 1, 1)
    fake = (u8 + shift) / 127.5 - 1
    expected = float(((shift / 255) ** 2).sum())
    assert sf.sifid(real, fake, UnitFeatures()) == pytest.approx(expected, rel=1e-6)


def test_grayscale_is_fed_as_rgb_and_batching_does_not_change_scores(random_net):
    g = smooth((1, 1, 30, 30))
    assert sf.sifid(g, g.expand(-1, 3, -1, -1), random_net) == pytest.approx(0.0, abs=1e-6)
    real, fakes = smooth((1, 3, 32, 36)), smooth((5, 3, 32, 36), seed=2)
    one = sf.sifid_scores(real, fakes, random_net, batch_size=1)
    assert sf.sifid_scores(real, fakes, random_net, batch_size=4) == pytest.approx(one, rel=1e-4)


# ------------------------------------------------------------------ weights policy and names

def test_without_the_weights_file_it_fails_or_falls_back_to_named_random_weights(no_weights):
    with pytest.raises(InceptionWeightsError, match=sf.WEIGHTS_FILENAME):
        sf.sifid_extractor(allow_random=False)
    net, extractor, standard = sf.sifid_extractor(allow_random=True, seed=3)
    assert not standard and extractor == "inception-v3-random-seed3-block1-192d"
    assert sf.sifid_metric_name(standard) == "sifid_inception_random" and sf.sifid_metric_name(True) == "sifid"
    x = smooth((2, 3, 30, 30))
    again, _, _ = sf.sifid_extractor(allow_random=True, seed=3)
    assert torch.equal(net(x), again(x))
    other, _, _ = sf.sifid_extractor(allow_random=True, seed=4)
    assert not torch.equal(net(x), other(x))


def test_a_file_with_the_wrong_hash_is_an_error(no_weights):
    no_weights.write_bytes(b"not the weights")
    with pytest.raises(InceptionWeightsError, match="does not start with"):
        sf.sifid_extractor(allow_random=True)


def test_a_verified_file_is_loaded_as_the_standard_extractor(no_weights, monkeypatch):
    """torchvision's file holds the whole Inception3 state dict, AuxLogits included; this one has random values."""
    source = randomize_(inception_v3(weights=None, aux_logits=True, init_weights=False), 7)
    torch.save(source.state_dict(), no_weights)
    monkeypatch.setattr(sf, "HASH_PREFIX", hashlib.sha256(no_weights.read_bytes()).hexdigest()[:8])
    net, extractor, standard = sf.sifid_extractor(allow_random=False)
    assert standard and extractor == sf.STANDARD_ID
    assert torch.equal(net.blocks[-1][-1].conv.weight, source.Conv2d_4a_3x3.conv.weight)


# ------------------------------------------------------------------ SinGAN's own scores

def test_diversity():
    real = torch.rand(1, 3, 8, 8) * 2 - 1
    assert diversity(real.expand(5, -1, -1, -1), real) == 0.0
    two = torch.stack([real[0] + 0.1, real[0] - 0.1])           # per-pixel std 0.1 everywhere
    assert diversity(two, real) == pytest.approx(0.1 / real.std(unbiased=False).item(), rel=1e-5)
    with pytest.raises(ValueError, match="samples"):
        diversity(real, real)


def test_reconstruction_rmse_compares_the_reconstruction_with_the_image(monkeypatch):
    import models.singan.evaluation as ev

    image = torch.zeros(1, 3, 4, 4)
    state = type("State", (), {"image": image})()
    monkeypatch.setattr(ev, "reconstruct", lambda s: s.image + 0.5)
    assert reconstruction_rmse(state) == pytest.approx(0.5)
