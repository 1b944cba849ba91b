"""Training data: the embedded MNIST digits, a folder of images, or a manifest written by the data gate."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.data.digits import load_digits
from models.data.images import find_images, load_paths
from models.data.sampler import PartitionedSampler, partition_bounds

EMBEDDED = ("digits",)


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


def load_dataset(source: str, resolution: int, channels: int, limit: int = 0) -> ImageSet:
    """`digits`, a folder (recursive png/jpg/webp), one image file, or a manifest.parquet."""
    if source == "digits":
        images, labels = load_digits(resolution)
        if channels == 3:
            images = np.repeat(images, 3, axis=1)
    else:
        path = Path(source)
        paths = manifest_paths(path) if path.suffix == ".parquet" else find_images(path)
        if not paths:
            raise ValueError(f"data.source: no png/jpg/jpeg/webp images found under {source}")
        if limit:
            paths = paths[:limit]
        images, labels = load_paths(paths, resolution, channels), None
    if limit:
        images = images[:limit]
        labels = labels[:limit] if labels is not None else None
    return ImageSet(images, labels, source)


__all__ = ["ImageSet", "load_dataset", "PartitionedSampler", "partition_bounds", "find_images", "EMBEDDED"]
