"""Each party's optimizer, from the run's public settings (``RunConfig.optimizer``, ``lr``, ``weight_decay``,
``momentum``): the same at every party and in the DO-alone comparison, so a node, a resumed run and an audit
replay step alike (their state travels as safetensors: :func:`clicooper.rundir.optimizer_tensors`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def make_optimizer(params: Iterable[Any], *, kind: str, lr: float, weight_decay: float = 0.0,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    """``adam`` (AdamW with decoupled ``weight_decay`` when > 0) or ``sgd`` (Nesterov ``momentum``, L2
    ``weight_decay``)."""
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)
    if kind != "adam":
        raise ValueError(f"unknown optimizer {kind!r}; choose adam or sgd")
    if weight_decay > 0:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr)
