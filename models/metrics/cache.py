"""The real side of an evaluation cached as .npz: features, (mu, sigma), the floors; keyed by what determines them."""

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.files import atomic_path
from models.paths import data_home

VERSION = 2   # 2: the floors and values on real data are cached with the features


def default_cache_dir() -> Path:
    return data_home() / "cache" / "eval"


@dataclass
class RealSide:
    """What an evaluation computes once per real dataset and extractor."""

    features: np.ndarray                  # float32 (n, D) of the compared real subset
    mu: np.ndarray                        # (D,)
    sigma: np.ndarray                     # (D, D)
    probs: np.ndarray | None = None       # (n, K) class probabilities, when the extractor is a classifier
    references: dict[str, float] = field(default_factory=dict)   # public name -> floor or value on real data
    floor_n: int = 0                      # images in each of the two disjoint real subsets behind the floors


def cache_key(images: np.ndarray, extractor_id: str, fingerprint: str | None = None, *,
              floor_images: np.ndarray | None = None, references: str = "") -> str:
    """Hash of what determines the file: the images' bytes and shape (n included), the extractor, the caller's
    dataset fingerprint (e.g. the data gate's), the floor partner's bytes (None: the floors split `images`) and
    `references`, what the floors depend on (metric names, their settings). 1k 32x32 images hash in a millisecond."""
    h = hashlib.sha256()
    h.update(json.dumps({"fingerprint": fingerprint or "", "extractor": extractor_id, "shape": list(images.shape),
                         "dtype": str(images.dtype), "references": references, "version": VERSION,
                         "floor_shape": None if floor_images is None else list(floor_images.shape)},
                        sort_keys=True).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    if floor_images is not None:
        h.update(np.ascontiguousarray(floor_images).tobytes())
    return h.hexdigest()[:24]


def cache_path(cache_dir: Path, images: np.ndarray, extractor_id: str, fingerprint: str | None = None, *,
               floor_images: np.ndarray | None = None, references: str = "") -> Path:
    key = cache_key(images, extractor_id, fingerprint, floor_images=floor_images, references=references)
    return Path(cache_dir) / f"real-{extractor_id}-n{len(images)}-{key}.npz"


def load_real(path: Path) -> RealSide | None:
    """The cached real side, or None if absent or unreadable (a bad file is recomputed)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            return RealSide(z["features"], z["mu"], z["sigma"], z["probs"] if "probs" in z.files else None,
                            dict(zip(z["reference_keys"].tolist(), z["reference_values"].tolist())),
                            int(z["floor_n"]))
    except (OSError, ValueError, KeyError, EOFError):
        return None


def save_real(path: Path, side: RealSide) -> Path:
    """Atomic (models.files.atomic_path): readers never see half a file.

    The keys `mu` and `sigma` make the file usable by pytorch-fid directly: `python -m pytorch_fid FILE.npz DIR`.
    """
    arrays = {"features": side.features, "mu": side.mu, "sigma": side.sigma,
              "reference_keys": np.array(list(side.references), dtype=str),
              "reference_values": np.array(list(side.references.values()), dtype=np.float64),
              "floor_n": np.array(side.floor_n)}
    if side.probs is not None:
        arrays["probs"] = side.probs
    # a file handle, not a name: np.savez would append ".npz" to the temporary name
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return Path(path)
