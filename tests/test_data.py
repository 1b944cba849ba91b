"""The embedded digits and users' folders of mixed sizes and modes."""

import numpy as np
import pytest
from PIL import Image

from models.data import check_labels, find_images, labels_from_names, load_dataset, source_labels
from models.data.digits import load_digits_28
from models.data.export import export_digits


def test_embedded_digits_are_real_mnist():
    images, labels = load_digits_28()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert set(np.unique(labels)) == set(range(10))
    assert images.max() == 255 and 0.05 < (images > 0).mean() < 0.4   # ink on black, like MNIST


@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_digits_at_resolution(resolution):
    ds = load_dataset("digits", resolution, 1)
    assert ds.images.shape == (5000, 1, resolution, resolution)
    x, y = ds.batch(np.arange(4))
    assert x.min() >= -1 and x.max() <= 1 and y.shape == (4,)
    assert load_dataset("digits", 32, 3, limit=10).images.shape == (10, 3, 32, 32)


def test_demo_data_roundtrip(tmp_path):
    n, out = export_digits(tmp_path / "digits")
    assert n == 5000 and len(find_images(out)) == 5000
    ds = load_dataset(str(out), 32, 1, limit=50)
    ref = load_dataset("digits", 32, 1, limit=50)
    assert np.array_equal(ds.images, ref.images)     # PNG is lossless and files sort in dataset order
    # the labels come back from the file names, for a folder and for a manifest's paths alike
    assert np.array_equal(ds.labels, ref.labels)
    assert np.array_equal(source_labels(str(out)), load_dataset("digits", 32, 1).labels)


def test_labels_only_when_every_file_names_one(tmp_path):
    assert labels_from_names(["a/00001_label3.png", "b/00002_label10.PNG"]).tolist() == [3, 10]
    assert labels_from_names(["a/00001_label3.png", "b/cat.png"]) is None
    assert labels_from_names(["my_label3_photo.png"]) is None and labels_from_names([]) is None
    Image.new("L", (8, 8), 9).save(tmp_path / "x.png")
    assert load_dataset(str(tmp_path), 16, 1).labels is None and source_labels(str(tmp_path)) is None


def test_a_class_conditional_model_needs_labels_in_range():
    check_labels(None, 0, "anything")                                   # unconditional: no labels needed
    check_labels(np.array([0, 9]), 10, "digits")
    with pytest.raises(ValueError, match=r"^model.num_classes: 10 makes the model class-conditional, but /d has no"):
        check_labels(None, 10, "/d")
    with pytest.raises(ValueError, match=r"^model.num_classes: expected more than the largest label of digits \(9\)"):
        check_labels(np.array([0, 9]), 5, "digits")


def test_folder_of_mixed_sizes_and_modes(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (100, 30), dtype=np.uint8)).save(tmp_path / "sub" / "b.jpg")
    Image.fromarray(rng.integers(0, 255, (50, 50, 4), dtype=np.uint8), "RGBA").save(tmp_path / "sub" / "c.png")
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).convert("P").save(tmp_path / "sub" / "deeper" / "d.png")
    Image.fromarray((rng.integers(0, 65535, (32, 32))).astype(np.uint16)).save(tmp_path / "e16.png")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "f.webp")
    (tmp_path / "notes.txt").write_text("not an image")
    paths = find_images(tmp_path)
    assert len(paths) == 6
    for channels in (1, 3):
        ds = load_dataset(str(tmp_path), 16, channels)
        assert ds.images.shape == (6, channels, 16, 16) and ds.labels is None


def test_missing_folder_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_dataset(str(tmp_path / "does-not-exist"), 16, 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no png/jpg/jpeg/webp images"):
        load_dataset(str(tmp_path / "empty"), 16, 1)
