"""Batched Inception feature extraction under torch.inference_mode, with throughput."""

import time

import numpy as np
import torch

from models.metrics.inception import Extractor


def to_inception_input(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (B, C, H, W), C in {1, 3} -> float (B, 3, H, W) in [0, 1], as pytorch-fid's ToTensor gives."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images: expected uint8 (N, 1|3, H, W), got {images.dtype} {images.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).float().div_(255.0)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x       # grayscale -> 3 identical channels


def extract_features(images: np.ndarray, extractor: Extractor, batch_size: int = 100,
                     device: str = "cpu") -> tuple[np.ndarray, float]:
    """uint8 (N, C, H, W) -> (float32 features (N, D), images per second); D = 2048 for InceptionV3.

    The network runs in channels-last memory format (the same math; 1.55x the images per second of the default
    layout for InceptionV3 on a 2-core AVX2 CPU, features equal to ~1e-6)."""
    if batch_size < 1:
        raise ValueError(f"eval.batch_size: expected >= 1, got {batch_size}")
    n = len(images)
    out: list[np.ndarray] = []
    dev = torch.device(device)
    net = extractor.net.to(dev, memory_format=torch.channels_last)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, n, batch_size):
            x = to_inception_input(images[i:i + batch_size], dev).contiguous(memory_format=torch.channels_last)
            out.append(net(x).float().cpu().numpy())
    dt = time.perf_counter() - t0
    return np.concatenate(out).astype(np.float32, copy=False), (n / dt if dt > 0 and n else 0.0)


def resolve_device(device: str) -> str:
    """'auto' -> cuda when available, else cpu."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
