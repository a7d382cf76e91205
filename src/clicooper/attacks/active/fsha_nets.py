"""FSHA's three networks, shaped to the run's cut: pilot encoder f̃, decoder f̃⁻¹ and discriminator D.

Pasquini et al., "Unleashing the Tiger: Inference Attacks on Split Learning" (CCS 2021), §3.2 and the
reference code (github pasquini-dario/SplitNN_FSHA, ``architectures.py``, set-up level 1; PyTorch port
zlijingtao/SplitNN_FSHA_torch): a pilot of strided convolutions without activations (so f̃ is easy to
invert), a decoder of transposed convolutions, and a residual discriminator ending in one logit (WGAN).
Widths are smaller than the reference's (64 for its 256-channel residual blocks, 2 blocks for 6) so that a
step costs about as much as the trainer's own segment on two CPU cores; a cut that is a vector (an MLP
head) gets the same roles as MLPs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from clicooper.errors import ConfigError


class _Res(nn.Module):
    """Pre-activation residual block (reference ``ResBlock`` without batch norm)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _Reshape(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


def _factor(input_shape: tuple[int, ...], cut: tuple[int, ...]) -> int:
    f = input_shape[-1] // cut[-1]
    if input_shape[-1] % cut[-1] or f < 1 or f & (f - 1) or input_shape[-2] // cut[-2] != f:
        raise ConfigError(f"FSHA's pilot needs a cut {cut} that downsamples the input {input_shape} by a power "
                          "of two; use another model")
    return f


def make_nets(input_shape: tuple[int, ...], cut: tuple[int, ...], width: int = 64) -> tuple[nn.Module, ...]:
    """(pilot f̃, decoder, discriminator D) for inputs ``input_shape`` and a cut of per-sample shape ``cut``."""
    if len(cut) == 3 and len(input_shape) == 3:
        return _conv_nets(input_shape, cut, width)
    d_in, d_cut = math.prod(input_shape), math.prod(cut)
    pilot = nn.Sequential(nn.Flatten(), nn.Linear(d_in, 256), nn.Linear(256, d_cut), _Reshape(cut))
    decoder = nn.Sequential(nn.Flatten(), nn.Linear(d_cut, 256), nn.LeakyReLU(0.2), nn.Linear(256, d_in),
                            nn.Sigmoid(), _Reshape(input_shape))
    disc = nn.Sequential(nn.Flatten(), nn.Linear(d_cut, 256), nn.LeakyReLU(0.2), nn.Linear(256, 256),
                         nn.LeakyReLU(0.2), nn.Linear(256, 1))
    return pilot, decoder, disc


def _conv_nets(input_shape: tuple[int, ...], cut: tuple[int, ...], width: int) -> tuple[nn.Module, ...]:
    c_in, c = input_shape[0], cut[0]
    n_down = int(math.log2(_factor(input_shape, cut)))
    layers: list[nn.Module] = []
    ch = c_in
    for _ in range(n_down):  # strided convolutions, no activation (reference pilot, level 1)
        layers.append(nn.Conv2d(ch, width, 3, stride=2, padding=1))
        ch = width
    pilot = nn.Sequential(*layers, nn.Conv2d(ch, c, 3, padding=1))
    up: list[nn.Module] = []
    ch = c
    for _ in range(n_down):
        up += [nn.ConvTranspose2d(ch, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        ch = width
    decoder = nn.Sequential(*up, nn.Conv2d(ch, c_in, 3, padding=1), nn.Sigmoid())
    side = cut[-1]
    disc = nn.Sequential(nn.Conv2d(c, width, 3, stride=2 if side >= 8 else 1, padding=1), _Res(width),
                         _Res(width), nn.Conv2d(width, width, 3, stride=2 if side >= 4 else 1, padding=1),
                         nn.Flatten(), nn.LazyLinear(1))
    with torch.no_grad():
        disc(torch.zeros(1, *cut))  # materialise the lazy layer
    return pilot, decoder, disc


def gradient_penalty(disc: nn.Module, real: torch.Tensor, fake: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017, eq. 3): ``E[(‖∇D(x̂)‖₂ − 1)²]`` on random interpolates."""
    eps = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), generator=g)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    grads = torch.autograd.grad(disc(x_hat).sum(), x_hat, create_graph=True)[0]
    return ((grads.flatten(1).norm(dim=1) - 1) ** 2).mean()
