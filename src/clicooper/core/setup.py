"""A run's resolved config and model blueprint, computed once per process; the device."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from clicooper.config import RunConfig
from clicooper.errors import ConfigError
from clicooper.models.blueprint import Blueprint, blueprint_for
from clicooper.models.partition import Plan
from clicooper.privacy.defaults import resolve_sigma
from clicooper.provenance.commitments import stamp_architecture


def resolve_device(name: str, who: str = "this run") -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda`` without a GPU → clear error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{who} asks for device cuda but no CUDA GPU is visible; use cpu or auto "
                          "(--device, or --set party_devices.PARTY=DEVICE)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_run(
    config: RunConfig, *, num_train: int, input_shape: Sequence[int], num_classes: int, plan: Plan | None = None,
    check_devices: bool = True, initial_state: Mapping[str, torch.Tensor] | None = None,
    module: torch.nn.Sequential | None = None,
) -> tuple[RunConfig, Blueprint]:
    """The config as ``config.json`` records it (batch size, and σ from the cut shape when unset) and the
    run's blueprint: the model is built, and its FLOPs counted, once (not at all with the run's ``plan``).

    ``check_devices``: refuse a party device this machine lacks (every party runs here; a DO node checks
    only its own, when it builds its party). The plan records the model's architecture hash (a given plan's
    is checked); ``initial_state``: the Python API's own initial weights (``train(config, model=…)``);
    ``module``: the user's own module classes, trained in-process (:mod:`clicooper.models.describe`)."""
    config = config.resolved(num_train)
    if plan is not None and plan.extra.get("initial_weights") and initial_state is None:
        raise ConfigError("this run starts from given weights (RUN/initial_model.safetensors, the Python API's "
                          "model=), not from its seed; only an in-process run (train(resume=RUN)) can continue it")
    for party in ["DO", *(f"T{i + 1}" for i in range(config.trainers))] if check_devices else []:
        resolve_device(config.device_of(party), party)  # refused here, before anything is written
    blueprint = blueprint_for(config, input_shape, num_classes, plan=plan, initial_state=initial_state,
                              module=module)
    stamp_architecture(blueprint.plan.extra, blueprint.model)
    return resolve_sigma(config, cut_shape=blueprint.cut_shape), blueprint
