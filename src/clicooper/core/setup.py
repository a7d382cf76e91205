"""A run's resolved config and model blueprint, computed once per process; the device."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clicooper.config import RunConfig
from clicooper.errors import ConfigError
from clicooper.models.blueprint import Blueprint, blueprint_for
from clicooper.models.partition import Plan
from clicooper.privacy.defaults import resolve_sigma


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda`` without a GPU → clear error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked but no CUDA GPU is visible; use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_run(
    config: RunConfig, *, num_train: int, input_shape: Sequence[int], num_classes: int, plan: Plan | None = None
) -> tuple[RunConfig, Blueprint]:
    """The config as ``config.json`` records it (batch size, and σ from the cut shape when unset) and the
    run's blueprint: the model is built, and its FLOPs counted, once (not at all with the run's ``plan``)."""
    config = config.resolved(num_train)
    blueprint = blueprint_for(config, input_shape, num_classes, plan=plan)
    return resolve_sigma(config, cut_shape=blueprint.cut_shape), blueprint
