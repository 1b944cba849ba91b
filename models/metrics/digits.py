"""The digits domain: a small CNN trained on the embedded digits; FD and KD on its features, recognisable, balance."""

# Inception features (random ones offline) are blind to whether a digit can be read; the standard practice for
# MNIST-like data is a classifier trained on the domain. This one is trained at first use, deterministically (seeded
# initialisation and order, fixed threads, torch's deterministic algorithms), on 4,000 of the 5,000 embedded digits
# at the evaluated resolution, checked on the other 1,000, and cached under a hash of its data, this file and its
# seed (never downloaded). Measured on the shared 2-core machine: 15-25 s of CPU per training (about 30 s wall
# beside other jobs), held-out accuracy 98.2 % at 32x32 and 97.9 % at 16x16.

import contextlib
import functools
import hashlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.data.digits import load_digits
from models.files import atomic_path
from models.metrics.cache import default_cache_dir
from models.metrics.fid import frechet_distance
from models.metrics.kid import kernel_distance
from models.metrics.registry import MetricInputs, register_domain, register_metric

DOMAIN = "digits"
SEED = 0
CLASSES = 10
NET_SIDE = 32            # the network sees every image at 32x32, the digits' own padded size, whatever the resolution
WIDTH = 12               # channels of the first conv; doubled twice
HIDDEN = 128             # the penultimate layer: the features FD and KD compare
EPOCHS = 7
BATCH_SIZE = 64
MAX_LR = 4e-3            # one-cycle schedule over all steps
SHIFT = 2                # random translation of up to +-2 px (at 32x32) per training image
TRAIN_THREADS = 1        # fixed: the weights must not depend on the core count; on a busy 2-core machine
                         # 2 threads spin-wait and train 10x slower than 1
OUTLIER_EVERY = 4        # a batch of 64 digits gets 16 non-digits (_outliers)
HELD_OUT_EVERY = 5       # every 5th image of each class is held out: 400 + 100 per class
CONFIDENT = 0.9          # recognisable: the top class has softmax >= this


class DigitNet(nn.Module):
    """float (B, 1, H, W) in [0, 1] -> logits (B, 10); `features` gives the 128-d penultimate layer."""

    def __init__(self, width: int = WIDTH, hidden: int = HIDDEN, classes: int = CLASSES):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c in (width, 2 * width, 4 * width):           # 32 -> 16 -> 8 -> 4 px
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * (NET_SIDE // 8) ** 2, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (NET_SIDE, NET_SIDE):
            x = F.interpolate(x, size=(NET_SIDE, NET_SIDE), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > NET_SIDE)
        return self.body(x)                                 # (B, HIDDEN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))                 # (B, CLASSES)


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 1|3, H, W) -> float (N, 1, H, W) in [0, 1]; RGB is averaged to gray (the digits are gray)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    return x.mean(dim=1, keepdim=True) if x.shape[1] == 3 else x


def split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices: every HELD_OUT_EVERY-th image of each class is held out (the file is in class
    order, so a plain head/tail split would hold out whole classes)."""
    held = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        held[np.flatnonzero(labels == c)[HELD_OUT_EVERY - 1::HELD_OUT_EVERY]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


@contextlib.contextmanager
def _deterministic(threads: int) -> Iterator[None]:
    """Fixed thread count, torch's deterministic algorithms and a private RNG stream; all restored afterwards."""
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.use_deterministic_algorithms(old_det)
        torch.set_num_threads(old_threads)


def _shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """(B, 1, H, W) -> each image translated by its own random (dy, dx) in [-max_shift, max_shift], zero-filled."""
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy, dx = (torch.randint(0, 2 * max_shift + 1, (b,), generator=g) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h))[:, :, None]     # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]     # (B, 1, W)
    return padded[torch.arange(b)[:, None, None], 0, rows, cols][:, None]


def _outliers(x: torch.Tensor, y: torch.Tensor, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n images that are not one readable digit, with soft targets (n, 10): uniform noise and flat gray images
    (target uniform), and blends of two digits of the batch, a x_i + (1 - a) x_j with a in [0.35, 0.65] (target
    a e_i + (1 - a) e_j). Without them the network reads any input as some digit with confidence."""
    b = len(x)
    k = n // 3
    noise = torch.rand((k, *x.shape[1:]), generator=g)
    flat = torch.rand((k, 1, 1, 1), generator=g).expand(k, *x.shape[1:])
    i, j = torch.randint(0, b, (n - 2 * k,), generator=g), torch.randint(0, b, (n - 2 * k,), generator=g)
    a = 0.35 + 0.3 * torch.rand((n - 2 * k,), generator=g)
    blend = a[:, None, None, None] * x[i] + (1 - a[:, None, None, None]) * x[j]
    uniform = torch.full((2 * k, CLASSES), 1.0 / CLASSES)
    mixed = a[:, None] * F.one_hot(y[i], CLASSES) + (1 - a[:, None]) * F.one_hot(y[j], CLASSES)
    return torch.cat([noise, flat, blend]), torch.cat([uniform, mixed])


def train_classifier(images: np.ndarray, labels: np.ndarray, seed: int = SEED) -> DigitNet:
    """uint8 (N, 1|3, H, W), int64 (N,) -> a DigitNet in eval mode; the same weights for the same inputs and seed."""
    with _deterministic(TRAIN_THREADS):
        torch.manual_seed(seed)
        net = DigitNet()
        x, y = to_input(images), torch.from_numpy(np.asarray(labels, np.int64))
        steps_per_epoch = math.ceil(len(x) / BATCH_SIZE)
        opt = torch.optim.Adam(net.parameters(), lr=MAX_LR)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, MAX_LR, total_steps=EPOCHS * steps_per_epoch)
        g = torch.Generator().manual_seed(seed)
        max_shift = max(1, round(SHIFT * x.shape[-1] / NET_SIDE))
        net.train()
        for _ in range(EPOCHS):
            order = torch.randperm(len(x), generator=g)
            for i in range(0, len(x), BATCH_SIZE):
                idx = order[i:i + BATCH_SIZE]
                xb, yb = _shift(x[idx], max_shift, g), y[idx]
                xo, to = _outliers(xb, yb, max(3, len(idx) // OUTLIER_EVERY), g)
                logits = net(torch.cat([xb, xo]))
                loss = F.cross_entropy(logits, torch.cat([F.one_hot(yb, CLASSES).float(), to]))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                schedule.step()
    return net.eval().requires_grad_(False)


@torch.inference_mode()
def predict(net: DigitNet, images: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 1|3, H, W) -> features float32 (N, 128) and softmax float64 (N, 10)."""
    feats, probs = [], []
    for i in range(0, len(images), batch_size):
        f = net.features(to_input(images[i:i + batch_size]))
        feats.append(f.numpy())
        probs.append(torch.softmax(net.head(f).double(), dim=1).numpy())
    return np.concatenate(feats).astype(np.float32, copy=False), np.concatenate(probs)


def accuracy(net: DigitNet, images: np.ndarray, labels: np.ndarray) -> float:
    return float((predict(net, images)[1].argmax(axis=1) == labels).mean())


def classifier_key(images: np.ndarray, labels: np.ndarray, seed: int) -> str:
    """sha256 of the training data (all 5,000: the split is in this file), this file's source and the seed."""
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update(json.dumps({"seed": seed, "shape": list(images.shape)}).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels, np.int64).tobytes())
    return h.hexdigest()


@dataclass
class DigitClassifier:
    """The trained network and where it came from; `outputs` is what the domain's metrics read."""

    net: DigitNet
    id: str                       # "digits-cnn-<hash>": named in the MLflow tag feature_extractor
    path: Path                    # the cached weights
    held_out_accuracy: float      # on the 1,000 held-out digits
    trained: bool                 # True: trained by this call; False: loaded from the cache
    seconds: float                # to train or load

    def outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, 1|3, H, W) -> features float32 (N, 128), class probabilities float64 (N, 10)."""
        return predict(self.net, images)


def _load(path: Path, key: str) -> tuple[DigitNet, float] | None:
    """The cached network and its held-out accuracy, or None when absent, unreadable or of another key."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved["key"] != key:
            return None
        net = DigitNet()
        net.load_state_dict(saved["state_dict"])
        return net.eval().requires_grad_(False), float(saved["held_out_accuracy"])
    except Exception:  # noqa: BLE001 - a truncated or foreign file of any kind is retrained, never trusted
        return None


def load_or_train(resolution: int, cache_dir: Path | None = None, seed: int = SEED) -> DigitClassifier:
    """The classifier for digits at `resolution`: from the cache, or trained (seconds) and cached atomically."""
    t = time.perf_counter()
    images, labels = load_digits(resolution)
    key = classifier_key(images, labels, seed)
    path = Path(cache_dir or default_cache_dir()) / f"digits-cnn-r{resolution}-seed{seed}-{key[:16]}.pt"
    train, held = split(labels)
    loaded = _load(path, key)
    if loaded is not None:
        net, acc = loaded
    else:
        net = train_classifier(images[train], labels[train], seed)
        acc = accuracy(net, images[held], labels[held])
        with atomic_path(path) as tmp:
            torch.save({"key": key, "state_dict": net.state_dict(), "held_out_accuracy": acc}, tmp)
    return DigitClassifier(net, f"digits-cnn-{key[:12]}", path, acc, loaded is None, time.perf_counter() - t)


@functools.lru_cache(maxsize=4)
def _classifier(resolution: int, cache_dir: str) -> DigitClassifier:
    return load_or_train(resolution, Path(cache_dir) if cache_dir else None)


def classifier(resolution: int, cache_dir: Path | None = None) -> DigitClassifier:
    """load_or_train once per process and (resolution, cache folder): the domain's extractor."""
    return _classifier(resolution, str(cache_dir or ""))


register_domain(DOMAIN, load=classifier, primary="fd_digits")


# ---------------------------------------------------------------- metrics

def recognisable_rate(probs: np.ndarray, threshold: float = CONFIDENT) -> float:
    """(N, K) class probabilities -> the fraction of samples whose top class has probability >= threshold."""
    return float((probs.max(axis=1) >= threshold).mean())


def class_balance(probs: np.ndarray) -> float:
    """(N, K) -> entropy of the predicted-class histogram / log K: 1 = every class equally often, 0 = one class."""
    counts = np.bincount(probs.argmax(axis=1), minlength=probs.shape[1])
    p = counts[counts > 0] / counts.sum()
    return float(max(0.0, -(p * np.log(p)).sum() / math.log(probs.shape[1])))


@register_metric("fd_digits", higher_is_better={"fd_digits": False}, features=DOMAIN, floor_ratio=True)
def fd_digits(inputs: MetricInputs) -> dict[str, float]:
    (mu_r, sigma_r), (mu_f, sigma_f) = inputs.real_stats, inputs.fake_stats
    return {"fd_digits": frechet_distance(mu_f, sigma_f, mu_r, sigma_r)}


@register_metric("kd_digits", higher_is_better={"kd_digits": False}, features=DOMAIN, floor=True,
                 settings=("kid_subsets", "kid_subset_size"))
def kd_digits(inputs: MetricInputs) -> dict[str, float]:
    c = inputs.config
    return {"kd_digits": kernel_distance(inputs.fake_features, inputs.real_features, c.kid_subsets,
                                         c.kid_subset_size, seed=inputs.seed)}


@register_metric("recognisable", higher_is_better={"recognisable": True, "class_balance": True}, features=DOMAIN,
                 on_real=True)
def recognisable(inputs: MetricInputs) -> dict[str, float]:
    return {"recognisable": recognisable_rate(inputs.fake_probs), "class_balance": class_balance(inputs.fake_probs)}
