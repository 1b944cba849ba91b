"""Metric math on numpy features (identities, invariants), names, cache, pictures and the weights policy."""

import numpy as np
import pytest
import torch
from PIL import Image

from models.config import EvalConfig
from models.grid import make_grid, save_png
from models.metrics import METRICS, InceptionWeightsError, primary_metric_name
from models.metrics import inception as inc
from models.metrics.cache import RealSide, cache_path, load_real, save_real
from models.metrics.diversity import mean_pairwise_msssim, window_and_scales
from models.metrics.fid import frechet_distance
from models.metrics.kid import kernel_distance
from models.metrics.plots import save_loss_curves, save_real_vs_fake
from models.metrics.prdc import prdc
from models.metrics.registry import feature_stats, public_name


def _random_stats(rng, d):
    a = rng.normal(size=(4 * d, d))
    return rng.normal(size=d), a.T @ a / (4 * d)


# ------------------------------------------------------------------ FID

def test_fid_of_identical_statistics_is_zero():
    mu, sigma = _random_stats(np.random.default_rng(0), 16)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_fid_with_equal_covariances_is_squared_mean_distance():
    rng = np.random.default_rng(1)
    mu1, sigma = _random_stats(rng, 12)
    mu2 = rng.normal(size=12)
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(float(np.sum((mu1 - mu2) ** 2)), rel=1e-6)


def test_fid_matches_pytorch_fid():
    """The same distance as pytorch-fid's calculate_frechet_distance (its sqrtm of S1 S2), full rank ..."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(2)
    (mu1, s1), (mu2, s2) = _random_stats(rng, 20), _random_stats(rng, 20)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(float(calculate_frechet_distance(mu1, s1, mu2, s2)),
                                                              rel=1e-9)


def test_fid_matches_pytorch_fid_on_singular_covariances_of_fewer_samples_than_dimensions():
    """... and as evaluations use it: n = 100 samples of 300 features, covariances of rank 99."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(100, 300)), rng.normal(size=(100, 300)) * 1.3 + 0.2
    (mu1, s1), (mu2, s2) = (a.mean(0), np.cov(a, rowvar=False)), (b.mean(0), np.cov(b, rowvar=False))
    assert np.linalg.matrix_rank(s1) == 99
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(float(calculate_frechet_distance(mu1, s1, mu2, s2)),
                                                              rel=1e-6)


def test_fid_names_mismatched_shapes():
    with pytest.raises(ValueError, match="frechet_distance"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_feature_stats_match_pytorch_fid_convention():
    f = np.random.default_rng(3).normal(size=(50, 7)).astype(np.float32)
    mu, sigma = feature_stats(f)
    assert np.allclose(mu, f.mean(0), atol=1e-6) and np.allclose(sigma, np.cov(f, rowvar=False), atol=1e-6)


# ------------------------------------------------------------------ KID

def test_kid_is_near_zero_and_can_be_negative_for_one_distribution():
    rng = np.random.default_rng(4)
    pool = rng.normal(size=(400, 32))
    values = [kernel_distance(pool[:200], pool[200:], subsets=20, subset_size=100, seed=s) for s in range(8)]
    far = kernel_distance(pool[:200] + 1.0, pool[200:], subsets=20, subset_size=100)
    assert max(abs(v) for v in values) < 0.05 * far
    assert min(values) < 0            # unbiased: no positive floor
    assert far > 0


def test_kid_is_deterministic_in_its_seed():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(60, 8)), rng.normal(size=(50, 8))
    assert kernel_distance(a, b, 10, 20, seed=3) == kernel_distance(a, b, 10, 20, seed=3)


# ------------------------------------------------------------------ PRDC

def test_prdc_identical_sets_give_one():
    x = np.random.default_rng(6).normal(size=(100, 16))
    r = prdc(x, x.copy(), k=5)
    assert r["precision"] == 1.0 and r["recall"] == 1.0 and r["coverage"] == 1.0
    assert r["density"] >= 1.0


def test_prdc_far_apart_sets_give_zero():
    rng = np.random.default_rng(7)
    real, fake = rng.normal(size=(80, 16)), rng.normal(size=(70, 16)) + 100.0
    assert prdc(real, fake, k=5) == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_chunking_does_not_change_results(monkeypatch):
    import models.metrics.prdc as prdc_mod

    rng = np.random.default_rng(8)
    real, fake = rng.normal(size=(90, 8)), rng.normal(size=(75, 8)) * 1.3
    full = prdc(real, fake, k=3)
    monkeypatch.setattr(prdc_mod, "CHUNK", 7)
    assert prdc(real, fake, k=3) == full


def test_collapsed_generator_has_zero_recall():
    rng = np.random.default_rng(9)
    real = rng.normal(size=(100, 16))
    collapsed = np.repeat(real[:1], 100, axis=0)
    assert prdc(real, collapsed, k=5)["recall"] < 0.05 < prdc(real, rng.normal(size=(100, 16)), k=5)["recall"]


# ------------------------------------------------------------------ MS-SSIM diversity

def test_msssim_window_and_scales_for_small_images():
    assert window_and_scales(32) == (7, 3) and window_and_scales(16) == (7, 2) and window_and_scales(256) == (11, 5)


def test_msssim_diversity_constant_is_one_and_real_digits_lower():
    from models.data import load_dataset

    digits = load_dataset("digits", 32, 1, limit=200).images
    constant = np.repeat(digits[:1], 50, axis=0)
    assert mean_pairwise_msssim(constant, pairs=50) == pytest.approx(1.0)
    assert mean_pairwise_msssim(digits, pairs=300) < 0.8


def test_msssim_diversity_rgb_and_noise():
    rng = np.random.default_rng(10)
    noise = rng.integers(0, 256, size=(20, 3, 16, 16), dtype=np.uint8)
    assert 0.0 <= mean_pairwise_msssim(noise, pairs=40) < 0.2


# ------------------------------------------------------------------ names

def test_metric_names_carry_the_extractor_without_standard_weights():
    assert [public_name(k, True) for k in ("fid", "kid", "precision")] == ["fid", "kid", "precision"]
    assert [public_name(k, False) for k in ("fid", "kid", "precision", "recall", "density", "coverage")] == [
        "fd_inception_random", "kd_inception_random", "precision_inception_random", "recall_inception_random",
        "density_inception_random", "coverage_inception_random"]
    assert public_name("msssim_diversity", False, METRICS["msssim_diversity"].uses_features) == "msssim_diversity"
    assert primary_metric_name(EvalConfig(), True) == "fid"
    assert primary_metric_name(EvalConfig(), False) == "fd_inception_random"
    with pytest.raises(ValueError, match="eval.primary_metric"):
        primary_metric_name(EvalConfig(primary_metric="nope"), False)


# ------------------------------------------------------------------ cache and pictures

def test_cache_roundtrip_and_key(tmp_path):
    imgs = np.random.default_rng(11).integers(0, 256, size=(10, 1, 8, 8), dtype=np.uint8)
    p = cache_path(tmp_path, imgs, "ex-a", "fp")
    assert p != cache_path(tmp_path, imgs, "ex-b", "fp") != cache_path(tmp_path, imgs[:9], "ex-a", "fp")
    changed = imgs.copy()
    changed[0, 0, 0, 0] ^= 1
    assert cache_path(tmp_path, changed, "ex-a", "fp") != p
    # the floors are cached with the features: their partner images and what they depend on key the file too
    assert cache_path(tmp_path, imgs, "ex-a", "fp", floor_images=changed) != p
    assert cache_path(tmp_path, imgs, "ex-a", "fp", references='{"kid_subsets": 10}') != p
    assert load_real(p) is None
    f = np.ones((10, 4), np.float32)
    save_real(p, RealSide(f, f.mean(0), np.eye(4), references={"fid_floor": 0.5}, floor_n=5))
    side = load_real(p)
    assert np.array_equal(side.features, f) and side.sigma.shape == (4, 4) and side.probs is None
    assert side.references == {"fid_floor": 0.5} and side.floor_n == 5
    assert [q.name for q in tmp_path.iterdir()] == [p.name]           # written atomically, no temp file
    save_real(p, RealSide(f, f.mean(0), np.eye(4), probs=np.full((10, 3), 1 / 3)))
    assert load_real(p).probs.shape == (10, 3) and load_real(p).references == {}
    p.write_bytes(b"garbage")
    assert load_real(p) is None


def test_pictures(tmp_path):
    imgs = np.random.default_rng(12).integers(0, 256, size=(20, 1, 16, 16), dtype=np.uint8)
    assert save_real_vs_fake(imgs, imgs[::-1], tmp_path / "rf.png").stat().st_size > 1000
    rgb = np.repeat(imgs, 3, axis=1)
    assert save_real_vs_fake(rgb, rgb, tmp_path / "rgb.png").is_file()
    history = [{"step": float(i), "loss_d": 1.0 / (i + 1), "loss_g": float(i)} for i in range(30)]
    assert save_loss_curves(history, tmp_path / "loss.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="history"):
        save_loss_curves([{"step": 0.0}], tmp_path / "none.png")
    png = save_png(make_grid(np.zeros((4, 8, 8, 3), np.uint8)), tmp_path / "grid.png", scale=2)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (44, 44)              # 2x2 tiles of 8 px, 2 px padding, x2
    assert not list(tmp_path.glob(".*"))                               # atomic writes left no temp file


# ------------------------------------------------------------------ weights policy

def test_missing_weights_without_fallback_is_a_clear_error(no_weights):
    with pytest.raises(InceptionWeightsError) as err:
        inc.load_extractor("", allow_random=False, download=False)
    msg = str(err.value)
    for needle in ("pt_inception-2015-12-05-6726825d.pth", "--inception-weights", inc.ENV_VAR,
                   str(inc.hub_weights_path()), inc.WEIGHTS_URL, "--allow-random-features"):
        assert needle in msg


def test_explicit_missing_or_wrong_weights_file_is_named(no_weights, monkeypatch):
    with pytest.raises(InceptionWeightsError, match="eval.inception_weights: file not found"):
        inc.find_weights(str(no_weights / "nope.pth"), download=False)
    bad = no_weights / inc.WEIGHTS_FILENAME
    bad.write_bytes(b"not the weights")
    monkeypatch.setenv(inc.ENV_VAR, str(bad))
    with pytest.raises(InceptionWeightsError, match="does not start with 6726825d"):
        inc.find_weights("", download=False)


def test_random_extractor_is_deterministic_and_named(no_weights):
    ex = inc.load_extractor("", allow_random=True, seed=0, download=False)
    assert ex.id == "inception-v3-random-seed0" and not ex.standard
    a = inc.randomize_(inc.fid_backbone(), 0).state_dict()
    b = inc.randomize_(inc.fid_backbone(), 0).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_our_network_equals_pytorch_fid_inceptionv3_with_the_same_weights(monkeypatch):
    """Same blocks, resize and normalisation as pytorch_fid.inception.InceptionV3 (weights injected, no download)."""
    from pytorch_fid import inception as pfid

    state = inc.randomize_(inc.fid_backbone(), 1).state_dict()
    monkeypatch.setattr(pfid, "load_state_dict_from_url", lambda *a, **k: state)
    theirs = pfid.InceptionV3([3], resize_input=True, normalize_input=True).eval()
    backbone = inc.fid_backbone()
    backbone.load_state_dict(state)
    ours = inc.InceptionFeatures(backbone)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.allclose(ours(x), theirs(x)[0].flatten(1), atol=1e-5)
