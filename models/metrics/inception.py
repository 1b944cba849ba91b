"""pytorch-fid's InceptionV3 (2048-d pool3 features): the standard weights policy, or seeded random weights."""

import functools
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from pytorch_fid import inception as pfid
from torch import nn

from models.files import sha256_file
from models.paths import user_path

WEIGHTS_URL = pfid.FID_WEIGHTS_URL
WEIGHTS_FILENAME = WEIGHTS_URL.rsplit("/", 1)[-1]          # pt_inception-2015-12-05-6726825d.pth
HASH_PREFIX = "6726825d"                                   # sha256 prefix in the file name, as torch.hub checks it
ENV_VAR = "TRANSSRGAN_INCEPTION_WEIGHTS"
STANDARD_ID = "inception-v3-pt_inception-2015-12-05"
FEATURE_DIM = 2048


class InceptionWeightsError(RuntimeError):
    """The standard Inception weights are missing or corrupt; the message says how to supply them."""


@dataclass
class Extractor:
    net: nn.Module          # uint8-free: takes float (B, 3, H, W) in [0, 1], returns (B, 2048)
    id: str                 # the MLflow tag `feature_extractor`
    standard: bool          # True only for the verified pt_inception-2015-12-05 weights


def random_id(seed: int) -> str:
    return f"inception-v3-random-seed{seed}"


def hub_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILENAME


def missing_message() -> str:
    return (f"standard Inception weights not found ({WEIGHTS_FILENAME}). Supply the file in one of these ways: "
            f"--inception-weights FILE (config eval.inception_weights), the environment variable {ENV_VAR}=FILE, "
            f"or copy it to the torch hub cache at {hub_weights_path()}. Download it on a machine with internet "
            f"from {WEIGHTS_URL}. Or pass --allow-random-features (eval.allow_random_features) to use seeded "
            f"random weights; the metrics are then renamed (fd_inception_random, ...) and are not FID.")


def verify_weights(path: Path) -> Path:
    """torch.hub's check_hash rule: the file's sha256 must start with the hash prefix in its official name."""
    digest = sha256_file(path)
    if not digest.startswith(HASH_PREFIX):
        raise InceptionWeightsError(f"{path}: sha256 {digest[:16]}... does not start with {HASH_PREFIX}; this is "
                                    f"not {WEIGHTS_FILENAME} (corrupt or a different file). {missing_message()}")
    return path


def _network_available(host: str = "github.com", timeout_s: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def try_download(timeout_s: float = 3.0) -> Path | None:
    """pytorch-fid's own download into the hub cache, only if the network answers; None on any failure."""
    if not _network_available(timeout_s=timeout_s):
        return None
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(max(timeout_s, 30.0))
    try:
        torch.hub.load_state_dict_from_url(WEIGHTS_URL, progress=False, check_hash=True)
    except Exception:  # noqa: BLE001 - any network/IO failure means "not available"; the caller reports it
        return None
    finally:
        socket.setdefaulttimeout(old)
    path = hub_weights_path()
    return path if path.is_file() else None


def find_weights(explicit: str = "", download: bool = True) -> Path | None:
    """eval.inception_weights, then $TRANSSRGAN_INCEPTION_WEIGHTS, then the torch hub cache, then a download."""
    for origin, value in (("eval.inception_weights", explicit), (ENV_VAR, os.environ.get(ENV_VAR, ""))):
        if value:
            path = user_path(value)
            if not path.is_file():
                raise InceptionWeightsError(f"{origin}: file not found: {path}. {missing_message()}")
            return verify_weights(path)
    if hub_weights_path().is_file():
        return verify_weights(hub_weights_path())
    if download:
        path = try_download()
        return verify_weights(path) if path else None
    return None


def fid_backbone() -> nn.Module:
    """pytorch_fid.inception.fid_inception_v3() without its download: the same patched torchvision InceptionV3."""
    net = pfid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pfid.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfid.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfid.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfid.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfid.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfid.FIDInceptionE_1(1280)
    net.Mixed_7c = pfid.FIDInceptionE_2(2048)
    return net


def randomize_(net: nn.Module, seed: int) -> nn.Module:
    """He-normal convs from a private generator (BN stays identity in eval), so pool3 features keep an O(1) scale.

    PyTorch's default conv init shrinks activations ~3x per layer, which leaves pool3 features near 1e-8.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / math.sqrt(m.in_features))
                m.bias.zero_()
    return net


class InceptionFeatures(nn.Module):
    """pytorch_fid.inception.InceptionV3(output_blocks=[3], resize_input=True, normalize_input=True), built
    from a given backbone: (B, 3, H, W) in [0, 1] -> bilinear 299x299 -> [-1, 1] -> pool3 (B, 2048)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        b = backbone
        self.blocks = nn.ModuleList([
            nn.Sequential(b.Conv2d_1a_3x3, b.Conv2d_2a_3x3, b.Conv2d_2b_3x3, nn.MaxPool2d(kernel_size=3, stride=2)),
            nn.Sequential(b.Conv2d_3b_1x1, b.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2)),
            nn.Sequential(b.Mixed_5b, b.Mixed_5c, b.Mixed_5d, b.Mixed_6a, b.Mixed_6b, b.Mixed_6c, b.Mixed_6d,
                          b.Mixed_6e),
            nn.Sequential(b.Mixed_7a, b.Mixed_7b, b.Mixed_7c, nn.AdaptiveAvgPool2d(output_size=(1, 1))),
        ])
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)  # (B, 3, 299, 299)
        x = 2 * x - 1
        for block in self.blocks:
            x = block(x)
        return x.flatten(1)                                                         # (B, 2048)


def load_extractor(weights: str = "", allow_random: bool = False, seed: int = 0, download: bool = True) -> Extractor:
    """The standard extractor if its file is found (and verified); else seeded random weights if allowed; else an
    InceptionWeightsError that says how to supply the file."""
    path = find_weights(weights, download=download)
    if path is None and not allow_random:
        raise InceptionWeightsError(missing_message())
    return _build(str(path) if path else "", seed)


@functools.lru_cache(maxsize=2)
def _build(path: str, seed: int) -> Extractor:
    """One network per (weights file, seed) per process; building takes ~1 s and the weights ~100 MB."""
    backbone = fid_backbone()
    if path:
        backbone.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return Extractor(InceptionFeatures(backbone), STANDARD_ID, True)
    return Extractor(InceptionFeatures(randomize_(backbone, seed)), random_id(seed), False)
