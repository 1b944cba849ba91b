"""Training data: the embedded MNIST digits, a folder of images, or a manifest written by the data gate."""

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.data.digits import load_digits, load_digits_28
from models.data.images import find_images, load_paths
from models.data.sampler import PartitionedSampler, partition_bounds

EMBEDDED = ("digits",)
# the label `transsrgan demo-data` (models.data.export) writes into each file name: <index>_label<digit>.png
_LABEL_IN_NAME = re.compile(r"_label(\d+)\.[A-Za-z]+$")


@dataclass
class ImageSet:
    images: np.ndarray          # uint8 (N, C, H, W)
    labels: np.ndarray | None   # int64 (N,) or None
    source: str

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """float32 images in [-1, 1] (B, C, H, W) and labels."""
        x = torch.from_numpy(self.images[indices]).float().div_(127.5).sub_(1.0)
        y = torch.from_numpy(self.labels[indices]) if self.labels is not None else None
        return x, y


def manifest_paths(manifest: str | Path) -> list[str]:
    """Valid image paths from a data-gate manifest (column `path`, absolute)."""
    import pyarrow.parquet as pq

    table = pq.read_table(manifest, columns=["path"])
    return [str(p) for p in table.column("path").to_pylist()]


def source_paths(path: Path) -> list:
    """The image files a source names: a manifest's listed paths, or the images found under a folder (or the file)."""
    return manifest_paths(path) if path.suffix == ".parquet" else find_images(path)


def load_dataset(source: str, resolution: int, channels: int, limit: int = 0) -> ImageSet:
    """`digits`, a folder (recursive png/jpg/webp), one image file, or a manifest.parquet."""
    if source == "digits":
        images, labels = load_digits(resolution)
        if channels == 3:
            images = np.repeat(images, 3, axis=1)
    else:
        paths = source_paths(Path(source))
        if not paths:
            raise ValueError(f"data.source: no png/jpg/jpeg/webp images found under {source}")
        if limit:
            paths = paths[:limit]
        images, labels = load_paths(paths, resolution, channels), labels_from_names(paths)
    if limit:
        images = images[:limit]
        labels = labels[:limit] if labels is not None else None
    return ImageSet(images, labels, source)


def labels_from_names(paths: list[str]) -> np.ndarray | None:
    """The class labels written into the file names by `transsrgan demo-data` (`<index>_label<k>.png`, so also
    the data gate's copy of the embedded digits); None unless every file carries one."""
    found = [_LABEL_IN_NAME.search(Path(p).name) for p in paths]
    if not found or not all(found):
        return None
    return np.array([int(m.group(1)) for m in found], dtype=np.int64)


def source_labels(source: str) -> np.ndarray | None:
    """The labels load_dataset(source) would give, from file names alone (no image is decoded)."""
    if source == "digits":
        return load_digits_28()[1]
    path = Path(source)
    return labels_from_names(source_paths(path)) if path.exists() else None


def check_labels(labels: np.ndarray | None, num_classes: int, source: str) -> None:
    """A class-conditional model (model.num_classes > 0) needs a label in [0, num_classes) for every image."""
    if not num_classes:
        return
    if labels is None:
        raise ValueError(f"model.num_classes: {num_classes} makes the model class-conditional, but {source} has no "
                         f"labels (only the embedded digits and folders written by `transsrgan demo-data` have "
                         f"them); set model.num_classes=0")
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
        raise ValueError(f"model.num_classes: expected more than the largest label of {source} "
                         f"({int(labels.max())}), got {num_classes}")


__all__ = ["ImageSet", "load_dataset", "labels_from_names", "source_labels", "check_labels", "PartitionedSampler", "partition_bounds", "find_images", "EMBEDDED"]
