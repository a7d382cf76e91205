"""Overhead of the keyed activation noise at fmnist-cnn's cut: ``python -m benchmarks.noise``.

Times, single-threaded, per batch of B = 128: the keyed noise for a (32, 14, 14) activation, the whole
``protect`` (clip + noise), unkeyed ``torch.randn`` of the same size (the floor), and for scale the
forward + backward of fmnist-cnn's head and of the whole fmnist-cnn (docs/design/protocol.md#reference-model).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from clicooper.privacy.activation import ActivationProtector


def _median_ms(fn: Callable[[], object], *, repeat: int = 7, number: int = 10) -> float:
    fn()
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(number):
            fn()
        runs.append((time.perf_counter() - t) / number * 1e3)
    return statistics.median(runs)


def main() -> None:
    """Print the timings (ms per batch) and the noise overhead relative to one training step."""
    torch.set_num_threads(1)
    b = 128
    head = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    rest = nn.Sequential(
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3136, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    x = torch.randn(b, 1, 28, 28)
    y = torch.randint(0, 10, (b,))
    a = head(x).detach()  # (B, 32, 14, 14)
    ids = torch.arange(b)
    protector = ActivationProtector(sigma=1.0, clip_norm=1.0, secret=bytes(32))

    def head_step() -> None:
        out = head(x)
        out.backward(torch.ones_like(out))

    def model_step() -> None:
        nn.functional.cross_entropy(rest(head(x)), y).backward()

    timings = {
        "keyed noise (B,32,14,14)": _median_ms(lambda: protector.noise(a.shape[1:], sample_ids=ids, round=0)),
        "protect = clip + keyed noise": _median_ms(lambda: protector.protect(a, sample_ids=ids, round=0)),
        "torch.randn same size (unkeyed floor)": _median_ms(lambda: torch.randn_like(a)),
        "fmnist-cnn head fwd+bwd": _median_ms(head_step),
        "fmnist-cnn whole model fwd+bwd": _median_ms(model_step, repeat=5, number=3),
    }
    for name, ms in timings.items():
        print(f"{name:40s} {ms:8.2f} ms")
    step = timings["fmnist-cnn whole model fwd+bwd"]
    print(f"protect / whole-model step: {timings['protect = clip + keyed noise'] / step:.1%}")


if __name__ == "__main__":
    main()
