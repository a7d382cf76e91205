"""A run's model, built and partitioned ONCE: the initial weights, the plan, the cut shape, the outputs.

Every consumer of "what model does this run train" (the parties' builder, σ's noise-ratio rule, the genesis'
architecture hash, ``clicooper plan``) reads one :class:`Blueprint` instead of building the model again:
building is cheap, but counting its FLOPs (:func:`~clicooper.models.partition.make_plan`) imports torch's
compiler stack and runs the model under a FLOP counter.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from clicooper.config import RunConfig
from clicooper.errors import ConfigError
from clicooper.models import zoo
from clicooper.models.describe import classes_of, is_own_module, own_classes, peer_refusal
from clicooper.models.partition import Plan, make_plan, split_model


def num_outputs_for(config: RunConfig, num_classes: int) -> int:
    """Width of the model's output layer: C, or C·m under label obfuscation."""
    return num_classes * config.labels.expansion if config.obfuscate_labels else num_classes


@dataclass(frozen=True)
class Blueprint:
    """The initial model of a run (public weights from ``config.seed``) and its partition plan."""

    model: nn.Sequential
    plan: Plan
    num_classes: int

    @property
    def cut_shape(self) -> tuple[int, ...]:
        """Per-sample shape of the DO head's output: what is clipped, noised and released."""
        return tuple(int(s) for s in self.plan.head.output_shape)

    @property
    def num_outputs(self) -> int:
        """Width of the output layer (C, or C·m under label obfuscation)."""
        return int(self.plan.extra["num_outputs"])

    def modules(self) -> dict[str, nn.Sequential]:
        """The model cut into ``{"DO:head", "T1", …, "DO:tail"}`` (views sharing the model's parameters)."""
        return split_model(self.model, self.plan)


def check_plan(config: RunConfig, plan: Plan) -> None:
    """A plan read from disk must belong to this config (model, trainers, topology)."""
    got = (plan.model, plan.trainers, plan.topology)
    want = (config.model, config.trainers, config.topology)
    if got != want:
        raise ConfigError(f"the plan file is for (model, trainers, topology) = {got} but the config says {want}: "
                          "give every node the run's own config.json and plan.json")


def build_initial(config: RunConfig, input_shape: Sequence[int], outputs: int) -> nn.Sequential:
    """The run's model with its seeded initial weights: from ``config.model_spec`` when set (a model file or
    a described ``nn.Sequential``; validated layer by layer), else the built-in ``config.model``."""
    return zoo.build_model(config.model, config.model_spec, tuple(input_shape), outputs, seed=config.seed)


def _load_initial(model: nn.Sequential, state: Mapping[str, torch.Tensor]) -> None:
    """Given initial weights (the Python API's own ``nn.Sequential``) into the built model, names and shapes
    checked."""
    own = model.state_dict()
    bad = sorted(set(own) ^ set(state)) or [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        raise ConfigError(f"the given initial weights do not fit the model ({', '.join(bad[:5])}): pass the "
                          "model's own state dict")
    model.load_state_dict(dict(state))


def check_batch_norm(config: RunConfig, plan: Plan, model: nn.Sequential) -> None:
    """Refuse BatchNorm in the DO's head or tail when its releases are differentially private: batch
    statistics let one sample change every release of its micro-batch, which per-sample clipping and the
    accountant do not cover. (BatchNorm at the trainers is fine: what they compute is never released.)"""
    if not (config.protect_activations or config.dp.head_dpsgd is not None):
        return
    layers = list(model)
    for pp in (plan.head, plan.tail):
        if pp is not None and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for i in pp.layers
                                  for m in layers[i].modules()):
            raise ConfigError(f"{pp.party} holds a BatchNorm layer, whose batch statistics mix the samples the "
                              f"DP releases protect one by one (--defense {config.defense}); use GroupNorm or "
                              "LayerNorm in the data owner's layers, or keep BatchNorm at the trainers")


def _own_model(config: RunConfig, module: nn.Sequential | None, plan: Plan | None) -> nn.Sequential | None:
    """A copy of the user's own module for an ``own-module:…`` run; ``None`` for a run built from its
    config. Without the module, such a run is refused with what to do (a peer can never build it)."""
    if module is None:
        if is_own_module(config.model):
            raise ConfigError(peer_refusal(classes_of(config.model)) + "; in Python, pass the same module: model=…")
        return None
    if not is_own_module(config.model):
        raise ConfigError(f"this run's model is {config.model!r}, built from its config; do not pass model=")
    return copy.deepcopy(module)  # the run's parameters, apart from the user's object


def blueprint_for(
    config: RunConfig, input_shape: Sequence[int], num_classes: int, *, plan: Plan | None = None,
    initial_state: Mapping[str, torch.Tensor] | None = None, module: nn.Sequential | None = None,
) -> Blueprint:
    """Build ``config``'s model once; partition it (FLOPs counted once) unless the run's ``plan`` is given.

    A given plan (a run's ``plan.json``) must belong to ``config`` and is used as is: the model is built the
    same way (same builder or spec, same seed), so its weights are those the plan was made from.
    ``initial_state`` replaces the seeded weights (the Python API's ``train(config, model=…)``; its plan
    says so in ``extra["initial_weights"]``, see :func:`clicooper.core.setup.resolve_run`).
    ``module``: the user's own ``nn.Sequential`` of an ``own-module:…`` run (a
    copy is trained; a given plan's architecture hash is checked against it by the caller's stamp).
    """
    outputs = num_outputs_for(config, num_classes)
    own = _own_model(config, module, plan)
    model = own if own is not None else build_initial(config, input_shape, outputs)
    if initial_state is not None:
        _load_initial(model, initial_state)
    if plan is None:
        plan = make_plan(model, model_name=config.model, input_shape=tuple(input_shape), trainers=config.trainers,
                         capacities=config.capacities, topology=config.topology)
        plan.extra["num_classes"] = num_classes
        plan.extra["num_outputs"] = outputs
        if own is not None:
            plan.extra["own_module"] = own_classes(own)
            got = list(plan.parties[-1].output_shape)
            if got != [outputs]:
                raise ConfigError(f"the model= outputs {got} per sample; this run needs [{outputs}] (the classes"
                                  + (f" × labels.expansion {config.labels.expansion}, as labels are obfuscated"
                                     if config.obfuscate_labels else "") + "): change its last layer")
    else:
        check_plan(config, plan)
        plan.extra.setdefault("num_classes", num_classes)
        plan.extra.setdefault("num_outputs", outputs)
    check_batch_norm(config, plan, model)
    return Blueprint(model=model, plan=plan, num_classes=num_classes)
