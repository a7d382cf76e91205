"""Building blocks of declarative models: the residual block, and evaluating a module in eval mode.

:class:`Residual` is what a model file's ``{type = "Residual", body = [...], shortcut = [...]}`` builds
(:mod:`clicooper.models.spec`): ``body(x) + shortcut(x)``, the shortcut being the identity when it is left
out. In the top-level ``nn.Sequential`` the block is ONE layer, so the partitioner keeps it whole: a cut
never falls inside a residual block (it is one unit, with the parameter-free layers after it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class Residual(nn.Module):
    """``body(x) + shortcut(x)``; ``shortcut`` ``None`` = identity. Both are ``nn.Sequential``."""

    def __init__(self, body: nn.Sequential, shortcut: nn.Sequential | None = None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of the two branches (shapes checked when the model is built from a spec)."""
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.body(x) + skip


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode (BatchNorm's running statistics, no dropout) for the ``with`` block, then
    every submodule back in the mode it had (training goes on in train mode)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training
