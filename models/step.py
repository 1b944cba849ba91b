"""The single-step GAN math shared by the reference trainer and DFAGD: noise per global batch, grads, one update.

A training iteration is `n_critic` D updates followed by one G update. Each update is:
    grads  = mean over data partitions of d/dθ loss(partition slice)   # workers (DFAGD) or one process
    update = clip(grads) -> Adam step                                     # always on one copy (the driver)
Every random number of an update (z, GP interpolation eps, fake labels, augmentation draws) is drawn for the
whole global batch from a generator seeded by (seed, step, phase) and then sliced, so the math does not depend
on how the batch is split.
"""

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from models import build_discriminator, build_generator
from models.augment import DRAWS, Augmented, policy
from models.config import Config, TrainConfig
from models.losses import d_adversarial, g_adversarial, gradient_penalty

G_PHASE = 1_000_000  # phase id of the generator update (D phases are 0..n_critic-1)

log = logging.getLogger(__name__)
Net = Callable[..., torch.Tensor]   # a module, or its compiled form: called as net(x, labels)


def phase_seed(seed: int, step: int, phase: int) -> int:
    """A 63-bit seed that differs for every (seed, step, phase); splitmix64-style mixing."""
    x = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + phase * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & (2**64 - 1)
    x ^= x >> 32
    return x & (2**63 - 1)


@dataclass
class Noise:
    z: torch.Tensor                  # (b, z_dim)
    eps: torch.Tensor                # (b,) GP interpolation weights
    labels: torch.Tensor | None      # (b,) fake labels, or None when unconditional
    aug: torch.Tensor | None = None  # (b, 2, augment.DRAWS) uniforms: [:, 0] for real images, [:, 1] for fakes
    step: int = 0                    # the update these draws belong to
    phase: int = 0


def draw_noise(seed: int, step: int, phase: int, batch_size: int, z_dim: int, num_classes: int,
               start: int = 0, stop: int | None = None) -> Noise:
    """Noise for rows [start, stop) of the global batch of this (step, phase)."""
    g = torch.Generator().manual_seed(phase_seed(seed, step, phase))
    z = torch.randn(batch_size, z_dim, generator=g)
    eps = torch.rand(batch_size, generator=g)
    labels = torch.randint(0, num_classes, (batch_size,), generator=g) if num_classes else None
    aug = torch.rand(batch_size, 2, DRAWS, generator=g)   # drawn last: z, eps and labels are what they always were
    sl = slice(start, stop if stop is not None else batch_size)
    return Noise(z[sl], eps[sl], labels[sl] if labels is not None else None, aug[sl], step, phase)


def autocast(tc: TrainConfig, device: torch.device | str) -> torch.autocast:
    """The forward passes' precision: bf16 autocast if train.precision says so, else a no-op (exact fp32)."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=tc.precision == "bf16")


def d_loss(G: Net, D: Net, real: torch.Tensor, real_labels: torch.Tensor | None, noise: Noise,
           tc: TrainConfig, D_penalty: nn.Module | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The critic's loss. D_penalty (default D) takes the gradient penalty, whose double backward a compiled D
    cannot do; D scores real and fake images. Scores are cast to float32 before any loss (a no-op in fp32).

    With train.augment, D sees augmented images, and the penalty is taken through the reals' augmentation with
    respect to the un-augmented images (DiffAugment's and StyleGAN2-ADA's R1). With train.reg_every k, only every
    k-th D update computes the penalty, weighted k times; its logged value is then k x the penalty or 0, whose
    mean over the updates is the penalty's.
    """
    D_pen = D if D_penalty is None else D_penalty
    kinds = policy(tc.augment)
    D_real, D_fake = D, D
    if kinds:
        assert noise.aug is not None, "augmentation draws come with the noise (draw_noise)"
        D_real, D_fake, D_pen = (Augmented(D, kinds, noise.aug[:, 0]), Augmented(D, kinds, noise.aug[:, 1]),
                                 Augmented(D_pen, kinds, noise.aug[:, 0]))
    k = tc.reg_every
    regularise = (noise.step * tc.n_critic + noise.phase) % k == 0
    with autocast(tc, real.device):
        with torch.no_grad():
            fake = G(noise.z, noise.labels)
        adv = d_adversarial(tc.loss, D_real(real, real_labels).float(), D_fake(fake, noise.labels).float())
        gp = (gradient_penalty(tc.penalty, D_pen, real, fake, noise.eps, real_labels) if regularise
              else real.new_zeros(()))
    if k > 1:
        gp = gp * k
    loss = adv + tc.gp_weight * gp.float()
    return loss, {"loss_d": loss.detach(), "gradient_penalty": gp.detach()}


def g_loss(G: Net, D: Net, noise: Noise, tc: TrainConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    kinds = policy(tc.augment)
    if kinds:
        assert noise.aug is not None, "augmentation draws come with the noise (draw_noise)"
        D = Augmented(D, kinds, noise.aug[:, 1])
    with autocast(tc, noise.z.device):
        scores = D(G(noise.z, noise.labels), noise.labels).float()
    loss = g_adversarial(tc.loss, scores)
    return loss, {"loss_g": loss.detach()}


def flat_grad(loss: torch.Tensor, params: list[nn.Parameter], out: torch.Tensor | None = None) -> torch.Tensor:
    """d loss / d params as one float32 vector (the unit DFAGD exchanges), written into `out` when given.

    The layout is each parameter's logical (row-major) order, whatever its memory format (channels_last too).
    """
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    if out is None:
        out = torch.empty(sum(p.numel() for p in params), dtype=torch.float32, device=params[0].device)
    i = 0
    for g, p in zip(grads, params):
        n = p.numel()
        dst = out[i:i + n].view(p.shape)
        if g is None:
            dst.zero_()
        else:
            dst.copy_(g)
        i += n
    return out


def params_of(module: nn.Module) -> list[nn.Parameter]:
    """All parameters in registration order: the layout of every flat vector (grads and weights)."""
    return list(module.parameters())


def get_flat(module: nn.Module, out: torch.Tensor | None = None) -> torch.Tensor:
    """The module's weights as one flat float32 vector (logical order), written into `out` when given."""
    params = params_of(module)
    if out is None:
        out = torch.empty(sum(p.numel() for p in params), dtype=torch.float32, device=params[0].device)
    i = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            out[i:i + n].view(p.shape).copy_(p)
            i += n
    return out


def set_flat(module: nn.Module, flat: torch.Tensor) -> None:
    i = 0
    with torch.no_grad():
        for p in params_of(module):
            n = p.numel()
            p.copy_(flat[i:i + n].view(p.shape))
            i += n


def apply_update(module: nn.Module, optimizer: torch.optim.Optimizer, grad: torch.Tensor,
                 clip_norm: float | None) -> tuple[float, bool]:
    """Clip the averaged gradient by global norm and take one optimizer step.

    Returns (grad norm before clipping, applied). A non-finite gradient is not applied.
    """
    norm = float(grad.norm())
    if not torch.isfinite(grad).all():
        return norm, False
    if clip_norm is not None:
        coef = min(1.0, clip_norm / (norm + 1e-6))   # same rule as torch.nn.utils.clip_grad_norm_
        grad = grad * coef
    i = 0
    for p in params_of(module):
        n = p.numel()
        p.grad = grad[i:i + n].view_as(p).clone()
        i += n
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm, True


@torch.no_grad()
def ema_update(ema: nn.Module, G: nn.Module, decay: float, step: int, start: int) -> None:
    d = 0.0 if step < start else decay
    for pe, p in zip(ema.parameters(), G.parameters()):
        pe.lerp_(p, 1.0 - d)
    for be, b in zip(ema.buffers(), G.buffers()):
        be.copy_(b)


@dataclass(frozen=True)
class Nets:
    """The networks a gradient is computed with; they share their parameters with the modules they came from.

    G, D: what the passes with one backward call (compiled per train.compile); D_penalty: D itself, for the
    gradient penalty's double backward (aot_autograd does not support double backward).
    """

    G: Net
    D: Net
    D_penalty: nn.Module


def compute_nets(G: nn.Module, D: nn.Module, tc: TrainConfig) -> Nets:
    """G and D ready to compute gradients: compiled per train.compile (any failure falls back to the eager modules,
    with the reason logged).

    Memory format stays contiguous: channels_last saved ~3 % CPU time per demo iteration here, but it changes the
    convolutions' summation order, so a run would no longer reproduce earlier runs bit for bit.
    """
    if tc.precision == "bf16" and next(G.parameters()).device.type == "cpu" and not _cpu_has_bf16():
        log.warning("train.precision=bf16: this CPU has no native bf16 matrix units (oneDNN reports none); "
                    "autocast will emulate bf16 and run slower than fp32")
    if tc.compile == "off":
        return Nets(G, D, D)
    log.info("train.compile=%s: G and D are compiled for the passes with one backward; the gradient penalty's "
             "double backward runs D uncompiled (aot_autograd does not support double backward)", tc.compile)
    return Nets(_Compiled(G, tc.compile), _Compiled(D, tc.compile), D)


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class _Compiled:
    """torch.compile(module) that falls back to the module itself, once and logged, if compiling fails."""

    def __init__(self, module: nn.Module, mode: str):
        self.module, self.mode = module, mode
        self.fn: nn.Module | None = None
        try:
            self.fn = torch.compile(module, mode=mode)
        except Exception as exc:  # noqa: BLE001 - e.g. no C++ compiler, an unsupported Python; eager is exact
            self._fall_back(exc)

    def _fall_back(self, exc: BaseException) -> None:
        log.warning("train.compile=%s: torch.compile failed for %s (%s: %s); running it uncompiled", self.mode,
                    type(self.module).__name__, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        self.fn = None

    def __call__(self, *args: torch.Tensor | None) -> torch.Tensor:
        if self.fn is not None:
            try:
                return self.fn(*args)
            except Exception as exc:  # noqa: BLE001 - compile errors surface at the first call; retried eagerly
                self._fall_back(exc)
        return self.module(*args)


@dataclass
class GANState:
    """Everything one training run owns; DFAGD's driver holds exactly one of these."""

    config: Config
    G: nn.Module
    D: nn.Module
    G_ema: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def build_state(config: Config) -> GANState:
    """Seeded construction: the same config gives the same initial weights on any machine."""
    torch.manual_seed(config.train.seed)
    G = build_generator(config.model)
    D = build_discriminator(config.model)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    tc = config.train
    opt_g = torch.optim.Adam(params_of(G), lr=tc.lr_g, betas=tuple(tc.betas))
    opt_d = torch.optim.Adam(params_of(D), lr=tc.lr_d, betas=tuple(tc.betas))
    return GANState(config, G, D, G_ema, opt_g, opt_d)
