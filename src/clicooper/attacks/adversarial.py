"""Pieces shared by the distribution-matching inversion attacks (FORA, SDAR): critics for cut-layer
features and images, the multi-kernel maximum mean discrepancy, the WGAN gradient penalty, and a training
loop that reads the attack's figure at ¼, ½ and all of its step budget.

* MK-MMD: Long et al. 2015, "Learning Transferable Features with Deep Adaptation Networks" (ICML), with
  Gaussian kernels of bandwidth² ``α · mean‖zᵢ − zⱼ‖²`` for α ∈ {2⁻³ … 2¹} — the kernels FORA uses (Xu et
  al. 2024, reference code github.com/X1aoyangXu/FORA, ``utils.MultipleKernelMaximumMeanDiscrepancy``).
* Gradient penalty: Gulrajani et al. 2017, "Improved Training of Wasserstein GANs" (NeurIPS), Alg. 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from clicooper.attacks.base import budget_points

T = TypeVar("T")
MMD_ALPHAS: tuple[float, ...] = tuple(2.0**k for k in range(-3, 2))


class Critic(nn.Module):
    """A small discriminator on one sample shape: strided convs for (C, h, w) inputs (feature maps or
    images), an MLP for flat ones. Returns one logit / critic value per sample."""

    def __init__(self, in_shape: tuple[int, ...], width: int = 32) -> None:
        super().__init__()
        if len(in_shape) == 3:
            self.net: nn.Module = nn.Sequential(
                nn.Conv2d(in_shape[0], width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
                nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
                nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * width, 1))
        else:
            d = int(math.prod(in_shape))
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(d, 4 * width), nn.LeakyReLU(0.2),
                                     nn.Linear(4 * width, 4 * width), nn.LeakyReLU(0.2), nn.Linear(4 * width, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).flatten()


def mk_mmd(a: torch.Tensor, b: torch.Tensor, alphas: tuple[float, ...] = MMD_ALPHAS) -> torch.Tensor:
    """Multi-kernel MMD² between two equal-sized batches (flattened), unbiased within-sample terms; the
    bandwidths follow the batch's mean squared distance (not back-propagated)."""
    n = a.shape[0]
    z = torch.cat([a.flatten(1), b.flatten(1)])
    d2 = torch.cdist(z, z).pow(2)
    base = d2.detach().mean().clamp_min(1e-12)
    k = sum(torch.exp(-d2 / (2 * alpha * base)) for alpha in alphas)
    kss, ktt, kst = k[:n, :n], k[n:, n:], k[:n, n:]  # type: ignore[index]
    off = n * (n - 1)
    return (kss.sum() - kss.diagonal().sum()) / off + (ktt.sum() - ktt.diagonal().sum()) / off - 2 * kst.mean()


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP: (‖∇ critic(x̂)‖ − 1)² on random interpolates of real and fake samples."""
    eps = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), generator=generator)
    x = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def run_steps(steps: int, step: Callable[[int], None], read: Callable[[], T]) -> list[T]:
    """Call ``step(i)`` for ``i < steps`` and return ``read()`` after ¼, ½ and all of them (a figure's
    convergence along one run, issue 14)."""
    marks = budget_points(steps)
    got: dict[int, T] = {}
    for i in range(steps):
        step(i)
        if i + 1 in marks and i + 1 < steps:
            got[i + 1] = read()
    final = read()
    return [got.get(p, final) for p in marks[:-1]] + [final]


#: An inverse network "fitted" its own auxiliary images when its MSE on them is at most this share of the
#: mean image's MSE (the error of a decoder that learned nothing but the average).
FIT_RATIO = 0.5


def training_record(fits: list[float], mean_mse: float, *, noise: bool = False,
                    **series: list[float]) -> dict[str, object]:
    """What an inversion attack's own training shows, read at ¼, ½ and all of its steps: the inverse
    network's MSE on a fixed probe of its auxiliary images (``aux_mse``) against the mean image's
    (``mean_image_mse``), and whether it fitted them (``fitted``: at most :data:`FIT_RATIO` of it). A figure on
    the victims at the mean image's level from an attack that fitted its own data most likely means the
    received data gave it nothing to decode (or that its substitute never aligned with the received data, which
    only other seeds tell apart); from one that did not fit, it means the attack failed to train, unless its
    features carried the simulated public noise (``noise``): then the noise may have left nothing to decode.
    ``series``: further per-reading diagnostics (e.g. the substitute's MK-MMD to the received data)."""
    fitted = bool(math.isfinite(fits[-1]) and fits[-1] <= FIT_RATIO * mean_mse)
    return {"aux_mse": [float(f) for f in fits], "mean_image_mse": float(mean_mse), "fit_ratio": FIT_RATIO,
            "fitted": fitted,
            "noise_simulated": bool(noise), **{k: [float(v) for v in vals] for k, vals in series.items()}}


#: Why a setting's value differs from the reference code's, where no reason of the attack's own applies.
STEPS_REASON = "the step budget this run could afford; convergence is read at ¼, ½ and all of it"


def setting_differences(config: object, reference: dict[str, object], keys: tuple[str, ...],
                        reasons: dict[str, str]) -> list[dict[str, str]]:
    """One row (setting, reference, ours, reason) per ``keys`` entry whose value on ``config`` differs from
    ``reference``; the reason is ``reasons[key]``, :data:`STEPS_REASON` for ``steps``, else "set by the caller"."""
    rows = []
    for key in keys:
        ours, ref = getattr(config, key), reference[key]
        if ours != ref:
            why = reasons.get(key, STEPS_REASON if key == "steps" else "set by the caller")
            rows.append({"setting": key, "reference": str(ref), "ours": str(ours), "reason": why})
    return rows
