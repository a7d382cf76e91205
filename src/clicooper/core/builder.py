"""The one party builder: the DO or a trainer of a run, over the run's blueprint.

An in-process run builds every party from one blueprint (:func:`build_parties`); a node builds its own
party from a blueprint of the same config, seed and plan, so every process starts from the same weights.
The contract test (``tests/test_node_contract.py``) compares the final weights of both paths.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from clicooper.config import RunConfig
from clicooper.core.security import trainer_factory
from clicooper.core.setup import resolve_device
from clicooper.data.augment import augmenter_for
from clicooper.errors import ConfigError
from clicooper.models.partition import Plan
from clicooper.parties.adversary import Adversaries, AdversaryContext
from clicooper.parties.data_owner import DataOwner
from clicooper.parties.optim import make_optimizer
from clicooper.parties.trainer import Trainer
from clicooper.privacy.defenses.base import DefenseContext
from clicooper.privacy.defenses.registry import build_defenses
from clicooper.privacy.runtime import NO_PRIVACY, PrivacyMechanisms


def party_names(config: RunConfig) -> list[str]:
    """``["DO", "T1", …, "TK"]``."""
    return ["DO", *(f"T{i + 1}" for i in range(config.trainers))]


def neighbours(config: RunConfig, name: str) -> list[str]:
    """Parties ``name`` exchanges messages with: the DO talks to every trainer (control + both chain ends);
    a trainer to its chain neighbours and the DO."""
    names = party_names(config)
    if name == "DO":
        return names[1:]
    t = names[1:]
    i = t.index(name)
    return sorted({"DO"} | ({t[i - 1]} if i > 0 else set()) | ({t[i + 1]} if i < len(t) - 1 else set()))


def _optimizer(config: RunConfig, params: Any) -> torch.optim.Optimizer:
    """Each party's optimizer (:func:`clicooper.parties.optim.make_optimizer` from the run's settings)."""
    return make_optimizer(params, kind=config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
                          momentum=config.momentum)


def _lr_schedule(config: RunConfig) -> Callable[[int], float] | None:
    """Each party's learning rate per epoch (``RunConfig.lr_at``); None for a constant one."""
    return None if config.lr_schedule == "constant" else config.lr_at


def build_data_owner(
    config: RunConfig, plan: Plan, modules: dict[str, nn.Sequential], dataset: Any, *,
    privacy: PrivacyMechanisms = NO_PRIVACY, device: str | None = None,
) -> DataOwner:
    """The DO: its head (and tail in U-shape) on its device, one optimizer over both, its data and its privacy
    mechanisms."""
    dev = resolve_device(device or config.device_of("DO"), "DO")
    head, tail = modules["DO:head"].to(dev), modules.get("DO:tail")
    if tail is not None:
        tail.to(dev)
    context = DefenseContext(config=config, head=head, input_shape=tuple(plan.input_shape),
                             cut_shape=tuple(plan.head.output_shape), num_classes=int(dataset.num_classes), device=dev,
                             privacy=privacy)
    defenses = build_defenses(config.defenses, context)  # the run's defences, in the order the DO applies them
    for d in defenses:
        d.setup_head(head)  # e.g. the secret random head: drawn from the DO's key and frozen
    params = [p for p in head.parameters() if p.requires_grad] + (list(tail.parameters()) if tail is not None else [])
    open_tail = config.topology == "open-tail"
    do = DataOwner(
        head=head, tail=tail, optimizer=_optimizer(config, params), x_train=dataset.x_train, y_train=dataset.y_train,
        trainers=party_names(config)[1:], micro_batches=config.micro_batches, defenses=defenses,
        expected_return_shape=None if open_tail else tuple(plan.segments[-1].output_shape),
        hash_transcripts=bool(config.provenance), device=dev,
        augment=augmenter_for(config.data, seed=config.seed), overlap=config.overlap_steps,
    )
    do.wire_dtype = config.wire_dtype  # encoded after the privacy mechanisms (protocol/wire_codec.py)
    do.lr_at = _lr_schedule(config)
    return do


def build_trainer(config: RunConfig, plan: Plan, modules: dict[str, nn.Sequential], name: str, *,
                  device: str | None = None, context: AdversaryContext | None = None,
                  adversaries: Adversaries | None = None) -> Trainer:
    """Trainer ``name`` (``T<i>``): its segment on its device, its optimizer, its chain neighbours and input shape
    (the malicious trainer of ``config.adversary`` where it names ``name``, from the caller's registry
    ``adversaries``: core/security.py)."""
    tnames = party_names(config)[1:]
    i, k = tnames.index(name), len(tnames)
    prev = plan.head if i == 0 else plan.segments[i - 1]
    mod = modules[name].to(resolve_device(device or config.device_of(name), name))
    trainer = trainer_factory(config, name, context, adversaries)(
        name, mod, _optimizer(config, mod.parameters()), left="DO" if i == 0 else tnames[i - 1],
        right="DO" if i == k - 1 else tnames[i + 1], holds_tail=config.topology == "open-tail" and i == k - 1,
        input_shape=tuple(prev.output_shape), hash_transcripts=bool(config.provenance),
        bf16=config.trainer_precision == "bf16",
    )
    trainer.wire_dtype = config.wire_dtype
    # the largest batch the DO may announce to the tail: the run's batch size (unset: what it resolves to at most)
    trainer.max_batch = config.batch_size or max(128, config.micro_batches)
    trainer.lr_at = _lr_schedule(config)
    trainer.defer_ahead = config.overlap_steps  # the DO may run one step ahead (parties/trainer.py)
    return trainer


def build_party(
    config: RunConfig, plan: Plan, modules: dict[str, nn.Sequential], name: str, *, dataset: Any = None,
    privacy: PrivacyMechanisms = NO_PRIVACY, device: str | None = None, context: AdversaryContext | None = None,
    adversaries: Adversaries | None = None,
) -> DataOwner | Trainer:
    """Party ``name`` of the run (``DO`` needs its ``dataset``), its modules on ``device`` (a node's
    ``--device``), else ``config.device_of(name)``; a trainer may be ``config.adversary``'s (``context``,
    ``adversaries``: :func:`build_trainer`)."""
    names = party_names(config)
    if name not in names:
        raise ConfigError(f"--party {name} is not a party of this run; choose one of {', '.join(names)}")
    if name != "DO":
        return build_trainer(config, plan, modules, name, device=device, context=context, adversaries=adversaries)
    if dataset is None:
        raise ConfigError("the data owner needs its dataset")
    return build_data_owner(config, plan, modules, dataset, privacy=privacy, device=device)
