"""Privacy-oriented architectures for the data owner (issue 5, docs/research/privacy-frontier.md).

Idea: the DO's head is a *cheap* strided conv into a *low-dimensional*, L2-normalised cut, so

* the cut can carry little more than the class (an information bottleneck: with noise of norm ρ a release
  carries at most (d/2)·log2(1 + 1/ρ²) bits),
* the DP clip of docs/design/mechanisms.md#activation-protection is exact: every cut vector has norm ``scale`` (use ``dp.clip_norm = scale`` =
  1.0), so the clip never distorts the signal and σ is the noise-to-signal ratio per unit norm
  (noise norm ≈ σ·√d),
* the trainers still hold most of the FLOPs: wide segments after the cut.

The partitioner (``models/partition.py``) gives the DO the *first parametrised unit* as head, so each head
here is ONE module (:class:`BottleneckHead` / :class:`SpatialBottleneckHead`): conv + pooling + linear +
normalisation all stay with the DO. The last layer (one Linear) is the DO's tail in U-shape.

Names (listed in :data:`MODELS`; :mod:`clicooper.models.zoo` builds them):

* ``fmnist-private-d16`` / ``fmnist-private-d64`` — dense cut of d = 16 / 64 values; trainers: a wide MLP.
* ``fmnist-private-s4`` — spatial cut 4×7×7 (196 values, L2-normalised as a whole); trainers: convs.

``fmnist-cnn`` (the reference, docs/design/protocol.md#reference-model) is untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from clicooper.errors import ConfigError

Builder = Callable[[tuple[int, ...], int], nn.Sequential]
#: name → (builder, one-line description); ``clicooper.models.zoo`` lists these beside its own models
MODELS: dict[str, tuple[Builder, str]] = {}


def register(name: str, doc: str) -> Callable[[Builder], Builder]:
    """Add a builder ``f(input_shape, num_outputs) -> nn.Sequential`` to :data:`MODELS`."""

    def deco(f: Builder) -> Builder:
        MODELS[name] = (f, doc)
        return f

    return deco


class L2Normalize(nn.Module):
    """Scale each sample (all non-batch dims) to L2 norm ``scale``."""

    def __init__(self, scale: float = 1.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.scale, self.eps = float(scale), float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.flatten(1).norm(dim=1).clamp_min(self.eps)
        return x * (self.scale / n).view(-1, *([1] * (x.dim() - 1)))

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class BottleneckHead(nn.Module):
    """Conv(c→ch, 5×5, stride 2) + ReLU + Avg/MaxPool2 + Flatten + Linear(ch·(H/4)·(W/4) → d) + L2-normalise.

    One parametrised unit, so the partitioner hands all of it to the DO.
    """

    def __init__(self, in_ch: int, hw: tuple[int, int], d: int, *, channels: int = 16, scale: float = 1.0,
                 pool: str = "avg") -> None:
        super().__init__()
        h, w = hw
        if h % 4 or w % 4:
            raise ConfigError(f"the private heads need H and W divisible by 4, got {h}×{w}")
        if pool not in ("avg", "max"):
            raise ConfigError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.conv = nn.Conv2d(in_ch, channels, 5, stride=2, padding=2)
        self.fc = nn.Linear(channels * (h // 4) * (w // 4), d)
        self.norm = L2Normalize(scale)
        self.d = d
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.conv(x))
        a = F.max_pool2d(a, 2) if self.pool == "max" else F.avg_pool2d(a, 2)
        return self.norm(self.fc(a.flatten(1)))  # (B, d), ‖·‖ = scale


class TwoConvBottleneckHead(nn.Module):
    """Conv(c→ch1, 5×5, s2) + ReLU + Conv(ch1→ch2, 3×3, s2) + ReLU + Flatten + Linear(ch2·(H/4)·(W/4) → d)
    + L2-normalise: a second (strided, cheap) conv instead of pooling, as one parametrised unit."""

    def __init__(self, in_ch: int, hw: tuple[int, int], d: int, *, ch1: int = 16, ch2: int = 16,
                 scale: float = 1.0) -> None:
        super().__init__()
        h, w = hw
        if h % 4 or w % 4:
            raise ConfigError(f"the private heads need H and W divisible by 4, got {h}×{w}")
        self.conv1 = nn.Conv2d(in_ch, ch1, 5, stride=2, padding=2)
        self.conv2 = nn.Conv2d(ch1, ch2, 3, stride=2, padding=1)
        self.fc = nn.Linear(ch2 * (h // 4) * (w // 4), d)
        self.norm = L2Normalize(scale)
        self.d = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.norm(self.fc(a.flatten(1)))  # (B, d), ‖·‖ = scale


class SpatialBottleneckHead(nn.Module):
    """Conv(c→16, 5×5, s2) + ReLU + Conv1×1(16→k) + AvgPool2 + L2-normalise: a (k, H/4, W/4) cut."""

    def __init__(self, in_ch: int, hw: tuple[int, int], k: int, *, channels: int = 16, scale: float = 1.0) -> None:
        super().__init__()
        h, w = hw
        if h % 4 or w % 4:
            raise ConfigError(f"the private heads need H and W divisible by 4, got {h}×{w}")
        self.conv = nn.Conv2d(in_ch, channels, 5, stride=2, padding=2)
        self.mix = nn.Conv2d(channels, k, 1)
        self.norm = L2Normalize(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(F.avg_pool2d(self.mix(F.relu(self.conv(x))), 2))  # (B, k, H/4, W/4)


class LinearBottleneckHead(nn.Module):
    """Flatten + Linear(C·H·W → d) + L2-normalise: no convolution and no non-linearity at the DO, so the DO
    alone (this head + a linear tail) is a linear model on the pixels and every non-linear feature has to
    come from the trainers."""

    def __init__(self, in_features: int, d: int, *, scale: float = 1.0) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, d)
        self.norm = L2Normalize(scale)
        self.d = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc(x.flatten(1)))  # (B, d), ‖·‖ = scale


class ScaledInputLinear(nn.Linear):
    """``Linear(x · in_scale)``: the first trainer layer after a unit-norm cut sees coordinates of order 1
    (``in_scale = √d``) instead of 1/√d. Where it sits on the trainer's side of the cut, it changes nothing
    the DO releases (clip, noise and ε are those of the unit-norm cut)."""

    def __init__(self, in_features: int, out_features: int, *, in_scale: float) -> None:
        super().__init__(in_features, out_features)
        self.in_scale = float(in_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x * self.in_scale)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", in_scale={self.in_scale:g}"


def image_model_problem(name: str, input_shape: tuple[int, ...], wants: str = "(C, H, W)") -> str:
    """Why image model ``name`` cannot take inputs of ``input_shape``, and which model to use instead."""
    shape = "(" + ", ".join(str(s) for s in input_shape) + ("," if len(input_shape) == 1 else "") + ")"
    if len(input_shape) == 1:  # one feature vector per sample: a csv: table or a flat npz
        return (f"{name} expects {wants} image inputs, but this data has {input_shape[0]} features per sample, "
                f"shape {shape}; use --model tabular-mlp (or your own --model-file)")
    return f"{name} expects {wants} image inputs, got shape {shape}; use another --model"


def _hw(input_shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ConfigError(image_model_problem(name, input_shape))
    c, h, w = input_shape
    return c, h, w


def _after_cut(head: nn.Module, first: nn.Module, width: int, num_outputs: int) -> nn.Sequential:
    """``head`` (DO) | ``first`` + ReLU, Linear W→W, Linear W→256 (trainers) | Linear(256→out) (DO tail)."""
    return nn.Sequential(
        head,  # DO: (B, d), unit norm
        first, nn.ReLU(),  # trainers
        nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, 256), nn.ReLU(),
        nn.Linear(256, num_outputs),  # DO tail
    )


def dense_private(input_shape: tuple[int, ...], num_outputs: int, *, d: int, width: int = 1024,
                  name: str = "fmnist-private", rescale: bool = False, channels: int = 16,
                  pool: str = "avg") -> nn.Sequential:
    """Head = :class:`BottleneckHead` (d-dim cut) | wide MLP d→W→W→256 (trainers) | tail Linear(256→out).

    ``rescale``: the trainers' first layer multiplies the received cut by √d (:class:`ScaledInputLinear`).
    Initialisation order (it decides the weights a seed gives, so the measured figures stay reproducible):
    head first without ``rescale`` (as the d16/d64 rows were measured), the first trainer layer first with it.
    """
    c, h, w = _hw(input_shape, name)
    if rescale:
        first: nn.Module = ScaledInputLinear(d, width, in_scale=d ** 0.5)
        head = BottleneckHead(c, (h, w), d, channels=channels, pool=pool)
    else:
        head = BottleneckHead(c, (h, w), d, channels=channels, pool=pool)
        first = nn.Linear(d, width)
    return _after_cut(head, first, width, num_outputs)


def linear_private(input_shape: tuple[int, ...], num_outputs: int, *, d: int, width: int = 1024,
                   name: str = "fmnist-private-lin") -> nn.Sequential:
    """Head = :class:`LinearBottleneckHead` (d-dim linear cut) | wide MLP d→W→W→256 | tail Linear(256→out)."""
    c, h, w = _hw(input_shape, name)
    head = LinearBottleneckHead(c * h * w, d)
    return _after_cut(head, nn.Linear(d, width), width, num_outputs)


def spatial_private(input_shape: tuple[int, ...], num_outputs: int, *, k: int = 4,
                    name: str = "fmnist-private-s4") -> nn.Sequential:
    """Head = :class:`SpatialBottleneckHead` (k×H/4×W/4 cut) | conv64 | conv128-pool + fc256 | tail."""
    c, h, w = _hw(input_shape, name)
    h4, w4 = h // 4, w // 4
    return nn.Sequential(
        SpatialBottleneckHead(c, (h, w), k),  # DO: (B, k, H/4, W/4), unit norm
        nn.Conv2d(k, 64, 3, padding=1), nn.ReLU(),  # trainers
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(128 * h4 * w4, 256), nn.ReLU(),
        nn.Linear(256, num_outputs),  # DO tail
    )


@register("fmnist-private-d16", "private: cheap strided conv head → 16-d L2-normalised cut | wide MLP | fc")
def fmnist_private_d16(input_shape: tuple[int, ...], num_outputs: int) -> nn.Sequential:
    """Dense 16-d cut (see module docstring)."""
    return dense_private(input_shape, num_outputs, d=16, name="fmnist-private-d16")


@register("fmnist-private-d64", "private: cheap strided conv head → 64-d L2-normalised cut | wide MLP | fc")
def fmnist_private_d64(input_shape: tuple[int, ...], num_outputs: int) -> nn.Sequential:
    """Dense 64-d cut (see module docstring)."""
    return dense_private(input_shape, num_outputs, d=64, name="fmnist-private-d64")


@register("fmnist-private-s4", "private: cheap strided conv head → 4×7×7 L2-normalised cut | convs | fc")
def fmnist_private_s4(input_shape: tuple[int, ...], num_outputs: int) -> nn.Sequential:
    """Spatial 4-channel cut (see module docstring)."""
    return spatial_private(input_shape, num_outputs, k=4, name="fmnist-private-s4")


@register("fmnist-private-lin64", "private: linear head → 64-d L2-normalised cut | wide MLP | fc")
def fmnist_private_lin64(input_shape: tuple[int, ...], num_outputs: int) -> nn.Sequential:
    """Dense 64-d *linear* cut: the DO alone is a linear model (see :class:`LinearBottleneckHead`)."""
    return linear_private(input_shape, num_outputs, d=64, name="fmnist-private-lin64")


@register("fmnist-private-d64r", "private: as fmnist-private-d64, the trainers rescale the cut by √d")
def fmnist_private_d64r(input_shape: tuple[int, ...], num_outputs: int) -> nn.Sequential:
    """``fmnist-private-d64`` whose first trainer layer sees the cut ×√64 (:class:`ScaledInputLinear`)."""
    return dense_private(input_shape, num_outputs, d=64, name="fmnist-private-d64r", rescale=True)


@register("fmnist-private-d64m", "private: as fmnist-private-d64r with max pooling in the DO's head")
def fmnist_private_d64m(input_shape: tuple[int, ...], num_outputs: int) -> nn.Sequential:
    """``fmnist-private-d64r`` whose head max-pools instead of average-pooling (same FLOPs)."""
    return dense_private(input_shape, num_outputs, d=64, name="fmnist-private-d64m", rescale=True, pool="max")


@register("fmnist-private-d64w", "private: as fmnist-private-d64r with a 32-channel head conv")
def fmnist_private_d64w(input_shape: tuple[int, ...], num_outputs: int) -> nn.Sequential:
    """``fmnist-private-d64r`` with 32 head channels instead of 16 (about twice the DO's FLOPs)."""
    return dense_private(input_shape, num_outputs, d=64, name="fmnist-private-d64w", rescale=True, channels=32)


@register("fmnist-private-d64wm", "private: as fmnist-private-d64w with max pooling in the DO's head")
def fmnist_private_d64wm(input_shape: tuple[int, ...], num_outputs: int) -> nn.Sequential:
    """32 head channels and max pooling (``d64w`` + ``d64m``)."""
    return dense_private(input_shape, num_outputs, d=64, name="fmnist-private-d64wm", rescale=True, channels=32,
                         pool="max")


@register("fmnist-private-d128r", "private: 128-d L2-normalised cut, trainers rescale it by √d")
def fmnist_private_d128r(input_shape: tuple[int, ...], num_outputs: int) -> nn.Sequential:
    """``fmnist-private-d64r`` with a 128-d cut (at equal ρ, twice the bits per release)."""
    return dense_private(input_shape, num_outputs, d=128, name="fmnist-private-d128r", rescale=True)


@register("fmnist-private-d64c2", "private: two strided convs (16, 16 channels) → 64-d cut, trainers rescale")
def fmnist_private_d64c2(input_shape: tuple[int, ...], num_outputs: int) -> nn.Sequential:
    """``fmnist-private-d64r`` with :class:`TwoConvBottleneckHead` as the DO's head."""
    c, h, w = _hw(input_shape, "fmnist-private-d64c2")
    d, width = 64, 1024
    head = TwoConvBottleneckHead(c, (h, w), d)
    return _after_cut(head, ScaledInputLinear(d, width, in_scale=d ** 0.5), width, num_outputs)


PRIVATE_MODELS = ("fmnist-private-d16", "fmnist-private-d64", "fmnist-private-s4", "fmnist-private-lin64",
                  "fmnist-private-d64r", "fmnist-private-d64m", "fmnist-private-d64w",
                  "fmnist-private-d64wm", "fmnist-private-d128r", "fmnist-private-d64c2")
