"""Built-in models, each an ordered list of layers (an ``nn.Sequential``).

``fmnist-cnn`` is exactly the reference model of DESIGN §2; the attack figures are anchored on it, so it
must not change. Privacy-oriented architectures get their own names.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from clicooper.errors import ConfigError
from clicooper.models import private

Builder = Callable[[tuple[int, ...], int], nn.Sequential]
_REGISTRY: dict[str, tuple[Builder, str]] = dict(private.MODELS)  # the privacy-oriented models


def register(name: str, doc: str) -> Callable[[Builder], Builder]:
    """Register a model builder ``f(input_shape, num_outputs) -> nn.Sequential``."""

    def deco(f: Builder) -> Builder:
        _REGISTRY[name] = (f, doc)
        return f

    return deco


def names() -> list[str]:
    """Names of the built-in models."""
    return sorted(_REGISTRY)


def describe(name: str) -> str:
    """One-line description of a built-in model."""
    return _REGISTRY[name][1]


def build(name: str, input_shape: tuple[int, ...], num_outputs: int, *, seed: int) -> nn.Sequential:
    """Build model ``name`` with weights initialised from ``seed`` (public: weights are not secret)."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(names())}")
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = _REGISTRY[name][0](tuple(input_shape), num_outputs)
    finally:
        torch.random.set_rng_state(gen_state)
    return model


@register("fmnist-cnn", "reference CNN (DESIGN §2): conv32-pool | conv64-pool | fc128 | fc10")
def fmnist_cnn(input_shape: tuple[int, ...], num_outputs: int) -> nn.Sequential:
    """Reference model: head conv(1→32) | T1 conv(32→64) | T2 flatten+fc128 | tail fc(→classes)."""
    c, h, w = input_shape
    if (h, w) != (28, 28):
        raise ConfigError(f"fmnist-cnn expects 28×28 inputs, got {h}×{w}; use another --model")
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 14, 14)
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, 7, 7)
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),  # (B, 128)
        nn.Linear(128, num_outputs),  # (B, classes)
    )


@register("digits-mlp", "MLP for 8×8 digits: fc256 | fc256 | fc256 | fc64 | fc(classes)")
def digits_mlp(input_shape: tuple[int, ...], num_outputs: int) -> nn.Sequential:
    """Small MLP used in fast tests; deep enough for K ≤ 3 (U-shape) or 4 (open tail)."""
    f = 1
    for s in input_shape:
        f *= s
    return nn.Sequential(
        nn.Flatten(), nn.Linear(f, 256), nn.ReLU(),  # (B, 256)
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 64), nn.ReLU(),  # (B, 64)
        nn.Linear(64, num_outputs),
    )


@register("tabular-mlp", "MLP for tabular features (F,): fc128 | fc128 | fc128 | fc64 | fc(classes)")
def tabular_mlp(input_shape: tuple[int, ...], num_outputs: int) -> nn.Sequential:
    """MLP for ``csv:`` tables (input ``(F,)``); deep enough for K ≤ 3 (U-shape) or 4 (open tail)."""
    f = 1
    for s in input_shape:
        f *= s
    return nn.Sequential(
        nn.Flatten(), nn.Linear(f, 128), nn.ReLU(),  # (B, 128)
        nn.Linear(128, 128), nn.ReLU(),
        nn.Linear(128, 128), nn.ReLU(),
        nn.Linear(128, 64), nn.ReLU(),  # (B, 64)
        nn.Linear(64, num_outputs),
    )


@register("digits-cnn", "small CNN for 8×8 digits: conv16 | conv32-pool | fc64 | fc(classes)")
def digits_cnn(input_shape: tuple[int, ...], num_outputs: int) -> nn.Sequential:
    """Small CNN for fast inversion/attack tests on digits."""
    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(),  # (B, 16, 8, 8)
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 4, 4)
        nn.Flatten(), nn.Linear(32 * (h // 2) * (w // 2), 64), nn.ReLU(),
        nn.Linear(64, num_outputs),
    )
