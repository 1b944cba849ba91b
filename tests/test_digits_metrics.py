"""The digits domain: the classifier (accuracy, determinism, cache), its metrics, the floors, the primary metric.

Training the classifier takes ~20 s of CPU, so the default suite trains it once per session, at 16x16 (the tiny
preset's resolution, which evaluations in other test files use too) in the session's cache; the 32x32 check is
slow. The cache tests swap in a counting stand-in for the training.
"""

import numpy as np
import pytest
import torch

from models.config import EvalConfig
from models.data.digits import load_digits
from models.metrics import digits as dg
from models.metrics import evaluate_images, primary_metric_name
from models.metrics.evaluate import floor_pair, quality_summary, real_subsets
from models.metrics.registry import DOMAINS, METRICS, MetricInputs, directions


@pytest.fixture(scope="session")
def clf16():
    return dg.classifier(16)


@pytest.fixture(scope="module")
def digits16():
    return load_digits(16)


def _cfg(n: int, **kw) -> EvalConfig:
    base = dict(n_samples=n, allow_random_features=True, download_weights=False, metrics=("msssim_diversity",),
                kid_subsets=10, kid_subset_size=100, diversity_pairs=50)
    return EvalConfig(**{**base, **kw})


@pytest.fixture
def no_inception(monkeypatch):
    """evaluate_images without building InceptionV3: a seeded 64-d conv net under the random extractor's id."""
    import models.metrics.evaluate as ev
    from models.metrics.inception import Extractor, random_id

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten()).eval()
    monkeypatch.setattr(ev, "load_extractor", lambda *a, **k: Extractor(net, random_id(0), False))


# ------------------------------------------------------------------ the classifier

def test_held_out_accuracy_at_16px_is_at_least_97_percent(clf16, digits16):
    images, labels = digits16
    _, held = dg.split(labels)
    assert len(held) == 1000 and np.bincount(labels[held]).tolist() == [100] * 10
    assert clf16.held_out_accuracy >= 0.97
    assert dg.accuracy(clf16.net, images[held], labels[held]) == pytest.approx(clf16.held_out_accuracy)


@pytest.mark.slow
def test_held_out_accuracy_at_32px_is_at_least_97_percent(tmp_path):
    clf = dg.load_or_train(32, tmp_path)
    assert clf.trained and clf.held_out_accuracy >= 0.97


def test_split_holds_out_every_class_and_never_trains_on_held_out():
    labels = np.repeat(np.arange(10), 500)                # the file's own order: sorted by class
    train, held = dg.split(labels)
    assert len(train) == 4000 and len(held) == 1000 and not set(train) & set(held)
    assert np.bincount(labels[train]).tolist() == [400] * 10


def test_training_is_deterministic_in_data_and_seed(digits16):
    images, labels = digits16
    pick = np.arange(0, 5000, 25)                          # 200 digits, 20 per class: a second of training
    threads = torch.get_num_threads()
    a, b = (dg.train_classifier(images[pick], labels[pick], seed=0) for _ in range(2))
    c = dg.train_classifier(images[pick], labels[pick], seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()   # restored


@pytest.fixture
def counted_training(monkeypatch):
    """train_classifier replaced by an untrained DigitNet; returns the list of calls."""
    calls = []

    def fake(images, labels, seed=dg.SEED):
        calls.append(seed)
        torch.manual_seed(seed)
        return dg.DigitNet().eval()

    monkeypatch.setattr(dg, "train_classifier", fake)
    return calls


def test_cache_second_call_loads_a_changed_seed_retrains(tmp_path, counted_training):
    first = dg.load_or_train(16, tmp_path)
    second = dg.load_or_train(16, tmp_path)
    assert first.trained and not second.trained and counted_training == [0]
    assert second.id == first.id and second.held_out_accuracy == first.held_out_accuracy
    assert all(torch.equal(v, second.net.state_dict()[k]) for k, v in first.net.state_dict().items())
    other = dg.load_or_train(16, tmp_path, seed=1)
    assert other.trained and counted_training == [0, 1] and other.id != first.id and other.path != first.path
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.path.name, other.path.name])   # no temp


def test_cache_corrupt_file_is_retrained(tmp_path, counted_training):
    first = dg.load_or_train(16, tmp_path)
    first.path.write_bytes(first.path.read_bytes()[:100])
    again = dg.load_or_train(16, tmp_path)
    assert again.trained and counted_training == [0, 0]
    assert not dg.load_or_train(16, tmp_path).trained


def test_cache_key_covers_data_code_and_seed(digits16):
    images, labels = digits16
    key = dg.classifier_key(images, labels, 0)
    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1
    assert dg.classifier_key(images, labels, 0) == key
    assert len({key, dg.classifier_key(images, labels, 1), dg.classifier_key(changed, labels, 0),
                dg.classifier_key(images, labels[::-1].copy(), 0)}) == 4


# ------------------------------------------------------------------ the metrics

def test_recognisable_and_class_balance_on_known_probabilities():
    one_hot = np.eye(10)[np.arange(100) % 10]             # every class, equally often, certain
    assert dg.recognisable_rate(one_hot) == 1.0 and dg.class_balance(one_hot) == pytest.approx(1.0)
    assert dg.recognisable_rate(np.full((7, 10), 0.1)) == 0.0
    one_class = np.tile(np.eye(10)[3], (20, 1))
    assert dg.class_balance(one_class) == 0.0
    two = np.eye(10)[np.arange(40) % 2]                  # two classes: log 2 / log 10
    assert dg.class_balance(two) == pytest.approx(np.log(2) / np.log(10))
    edge = np.array([[0.9] + [0.1 / 9] * 9, [0.89] + [0.11 / 9] * 9])
    assert dg.recognisable_rate(edge) == 0.5


def test_real_digits_are_recognisable_and_balanced_junk_is_not(clf16, digits16):
    images, labels = digits16
    _, held = dg.split(labels)
    _, probs = clf16.outputs(images[held])
    assert dg.recognisable_rate(probs) > 0.9 and dg.class_balance(probs) > 0.99
    one_digit = np.repeat(images[held][:1], 50, axis=0)   # a constant sample: one class, confidently
    _, p = clf16.outputs(one_digit)
    assert dg.recognisable_rate(p) == 1.0 and dg.class_balance(p) == 0.0
    assert p.argmax(axis=1)[0] == labels[held][0]
    blank = np.zeros((50, 1, 16, 16), np.uint8)           # a constant image that is no digit
    _, p = clf16.outputs(blank)
    assert dg.recognisable_rate(p) == 0.0 and dg.class_balance(p) == 0.0
    noise = np.random.default_rng(0).integers(0, 256, (200, 1, 16, 16), dtype=np.uint8)
    assert dg.recognisable_rate(clf16.outputs(noise)[1]) < 0.05


def test_rgb_digits_read_like_gray(clf16, digits16):
    gray = digits16[0][:64]
    f1, p1 = clf16.outputs(gray)
    f3, p3 = clf16.outputs(np.repeat(gray, 3, axis=1))
    assert np.allclose(f1, f3, atol=1e-5) and np.allclose(p1, p3, atol=1e-6)


def test_fd_digits_of_a_set_with_itself_is_zero_and_kd_of_two_real_halves_is_small(clf16, digits16):
    feats, probs = clf16.outputs(digits16[0][::5])
    same = MetricInputs(feats, feats, digits16[0][::5], _cfg(1000), real_probs=probs, fake_probs=probs)
    assert METRICS["fd_digits"].fn(same)["fd_digits"] == pytest.approx(0.0, abs=1e-6)
    a, b = floor_pair(feats, None)
    noise = clf16.outputs(np.random.default_rng(1).integers(0, 256, (500, 1, 16, 16), dtype=np.uint8))[0]
    halves = METRICS["kd_digits"].fn(MetricInputs(a, b, digits16[0][:1], _cfg(500)))["kd_digits"]
    junk = METRICS["kd_digits"].fn(MetricInputs(a, noise, digits16[0][:1], _cfg(500)))["kd_digits"]
    assert abs(halves) < 0.01 * junk


# ------------------------------------------------------------------ the floors

def _numbered(n: int, side: int = 16) -> np.ndarray:
    """uint8 (n, 1, side, side) images that differ: image i carries i in its first two pixels."""
    out = np.random.default_rng(0).integers(0, 256, (n, 1, side, side), dtype=np.uint8)
    out[:, 0, 0, 0], out[:, 0, 0, 1] = np.arange(n) // 256, np.arange(n) % 256
    return out


def _ids(images: np.ndarray) -> set[int]:
    return set((images[:, 0, 0, 0].astype(int) * 256 + images[:, 0, 0, 1]).tolist())


def test_real_subsets_are_disjoint_and_the_compared_one_is_fixed():
    pool = _numbered(500)
    real, partner = real_subsets(pool, 200)
    assert len(real) == len(partner) == 200 and not _ids(real) & _ids(partner)
    again, _ = real_subsets(pool, 200)
    assert np.array_equal(real, again)
    real, partner = real_subsets(pool, 300)               # fewer than 2n: the partner is what is left
    assert len(real) == 300 and len(partner) == 200 and not _ids(real) & _ids(partner)


def test_floor_pair_is_disjoint_in_both_modes():
    real, partner = _numbered(12)[:6], _numbered(12)[6:]
    a, b = floor_pair(real, partner)
    assert len(a) == len(b) == 6 and not _ids(a) & _ids(b)
    a, b = floor_pair(real, partner[:3])                  # partner too small: the halves of `real`
    assert len(a) == len(b) == 3 and not _ids(a) & _ids(b) and _ids(a) | _ids(b) == _ids(real)
    classes = np.repeat(np.arange(2), 6)                  # data in class order: both halves get both classes
    a, b = floor_pair(classes, None)
    assert set(a) == set(b) == {0, 1}


def test_evaluation_reports_floors_ratios_and_real_values(clf16, digits16, no_inception):
    pool = digits16[0]
    real, partner = real_subsets(pool, 300)
    fake = np.random.default_rng(2).integers(0, 256, (300, 1, 16, 16), dtype=np.uint8)
    cfg = _cfg(300, metrics=("kid", "msssim_diversity"))
    r = evaluate_images(fake, real, config=cfg, floor_real=partner, domain="digits")
    m = r.metrics
    assert r.floor_n == 300 and r.floor_split == "disjoint"
    assert r.primary_metric_name == "fd_digits" and r.extractor == f"inception-v3-random-seed0+{clf16.id}"
    assert {"kd_inception_random", "kd_inception_random_floor", "fd_digits", "fd_digits_floor",
            "fd_digits_vs_floor", "kd_digits", "kd_digits_floor", "recognisable", "recognisable_real",
            "class_balance", "class_balance_real", "msssim_diversity"} <= set(m)
    assert "kd_digits_vs_floor" not in m                  # an unbiased KD floor sits around 0: no ratio
    assert m["fd_digits_vs_floor"] == pytest.approx(m["fd_digits"] / m["fd_digits_floor"])
    assert m["fd_digits_vs_floor"] > 10 and m["recognisable"] < 0.05 < 0.8 < m["recognisable_real"]
    assert r.higher_is_better["fd_digits_vs_floor"] is False and r.higher_is_better["recognisable"] is True
    assert "fd_digits_floor" not in r.higher_is_better and "recognisable_real" not in r.higher_is_better
    table = r.table()
    assert "x the real-vs-real floor" in table and "two disjoint subsets of 300" in table
    assert f"recognisable 0% (real {m['recognisable_real']:.0%})" in quality_summary(m)

    again = evaluate_images(fake, real, config=cfg, floor_real=partner, domain="digits")
    assert again.real_cache_hit and again.metrics == m   # floors and real values came from the cache
    halves = evaluate_images(fake, real, config=cfg, domain="digits")
    assert not halves.real_cache_hit and halves.floor_n == 150 and halves.floor_split == "halves"
    assert "n/2" in halves.table()


def test_floor_uses_the_partner_a_copy_gives_zero(clf16, digits16, no_inception):
    real = digits16[0][::10]                              # 500 digits, every class
    r = evaluate_images(real, real, config=_cfg(500, cache_real=False), floor_real=real.copy(), domain="digits")
    assert r.metrics["fd_digits"] == pytest.approx(0.0, abs=1e-6)
    assert r.metrics["fd_digits_floor"] == pytest.approx(0.0, abs=1e-6)
    assert "fd_digits_vs_floor" not in r.metrics          # no ratio over a zero floor (never inf)
    assert r.metrics["recognisable"] == r.metrics["recognisable_real"]


def test_without_a_domain_nothing_of_it_runs(no_inception, digits16):
    real = digits16[0][:40]
    r = evaluate_images(real[::-1].copy(), real, config=_cfg(40, metrics=("kid",), cache_real=False))
    assert set(r.metrics) == {"kd_inception_random", "kd_inception_random_floor"}
    assert r.extractor == "inception-v3-random-seed0" and r.domain is None and r.floor_n == 20
    with pytest.raises(ValueError, match="eval.metrics: \\['fd_digits'\\] belong to a data domain"):
        evaluate_images(real, real, config=_cfg(40, metrics=("fd_digits",)))


def test_too_few_real_images_give_no_floor(no_inception, digits16):
    real = digits16[0][:3]                                # halves of 1 image: no distance; a 1-image partner: unused
    r = evaluate_images(real, real, config=_cfg(3, metrics=("kid",), cache_real=False), floor_real=real[:1])
    assert set(r.metrics) == {"kd_inception_random"} and r.floor_n == 0 and "floors" not in r.table()


# ------------------------------------------------------------------ primary metric, directions, domain

def test_primary_metric_rule():
    cfg = EvalConfig()
    assert "digits" in DOMAINS and DOMAINS["digits"].primary == "fd_digits"
    assert primary_metric_name(cfg, False, "digits") == "fd_digits"       # offline: the digits' own FD
    assert primary_metric_name(cfg, True, "digits") == "fid"              # standard weights: FID first
    assert primary_metric_name(cfg, False, None) == "fd_inception_random"
    assert primary_metric_name(EvalConfig(primary_metric="kid"), False, "digits") == "kd_inception_random"
    assert primary_metric_name(EvalConfig(primary_metric="recognisable"), True, "digits") == "recognisable"


def test_promotion_directions_of_the_new_names():
    from tasks.registry import lower_is_better

    assert lower_is_better("fd_digits") and lower_is_better("kd_digits") and lower_is_better("fd_digits_vs_floor")
    assert lower_is_better("fid_vs_floor") and lower_is_better("fd_inception_random_vs_floor")
    assert not lower_is_better("recognisable") and not lower_is_better("class_balance")
    ranked = directions(False)
    assert ranked["fd_digits"] is False and ranked["recognisable"] is True and ranked["fd_digits_vs_floor"] is False
    assert ranked["fd_inception_random_vs_floor"] is False and "kd_digits_vs_floor" not in ranked


def test_data_domain_knows_the_digits_by_name_folder_and_manifest(tmp_path):
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    from models.paths import data_home
    from tasks.evaluate import data_domain

    digits_dir = data_home() / "datasets" / "digits"
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"path": ["x.png"]}).replace_schema_metadata(
        {b"transsrgan.source": str(digits_dir).encode()}), manifest)
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"path": ["x.png"]}).replace_schema_metadata(
        {b"transsrgan.source": str(tmp_path).encode()}), other)
    assert data_domain("digits") == "digits" and data_domain(str(manifest)) == "digits"
    assert data_domain(str(digits_dir)) == "digits" and data_domain(str(digits_dir.with_name("digits-64"))) == "digits"
    assert data_domain(str(other)) is None and data_domain(str(tmp_path)) is None
    assert data_domain(os.fspath(tmp_path / "digits")) is None          # a folder named digits elsewhere
