"""What a node needs besides its party: the run id, the plan file, wire shapes and limits.

A node process (``clicooper node``) builds its party with the session core's builder
(:func:`clicooper.core.builder.build_party`) over a blueprint of the public config (same zoo builder, same
seed, same plan as an in-process run, so every node starts from the same weights) and keeps only its own
piece. The data owner alone loads the dataset; a trainer needs only the input shape and the number of
classes (from ``plan.json`` next to the config, else from the dataset's metadata).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from torch import nn

from clicooper import jsonbound
from clicooper.attacks.active.registry import ADVERSARIES
from clicooper.config import RunConfig, load_config_file, make_config
from clicooper.core.builder import build_party, party_names
from clicooper.data import Dataset, load_dataset
from clicooper.data.given import is_owner_code
from clicooper.errors import ConfigError
from clicooper.models.blueprint import Blueprint
from clicooper.models.partition import Plan
from clicooper.parties.adversary import AdversaryContext
from clicooper.parties.data_owner import DataOwner
from clicooper.parties.trainer import Trainer
from clicooper.privacy.runtime import NO_PRIVACY, PrivacyMechanisms


def load_run_config(path: str | Path) -> RunConfig:
    """A run config file (``.json`` / ``.toml`` with :class:`RunConfig` fields) → validated config."""
    return make_config(**load_config_file(path))


def check_node_config(config: RunConfig) -> None:
    """Refuse, in one line, an option of ``config`` that a run of one process per party cannot honour."""
    adv = config.adversary
    if adv is not None and adv.behaviour == "backdoor":
        raise ConfigError("adversary behaviour backdoor uses the simulation's label oracle (the evaluator's ground "
                          "truth), which only an in-process run has: run it with `clicooper train`")


def plan_digest(plan: Plan) -> str:
    """SHA-256 of the plan's canonical JSON (part of the run id: all nodes must split the model alike)."""
    return hashlib.sha256(json.dumps(plan.to_dict(), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def run_id_for(config: RunConfig, fingerprints: dict[str, str] | None, plan: Plan | None = None) -> str:
    """Run id every node derives alike: SHA-256 over the config hash and the pinned certificate table.

    A node started with another config or another certificate set gets another id, and its peers refuse
    its links (``FAILED_PRECONDITION``: "start every node from the same genesis").
    """
    h = hashlib.sha256(b"clicooper/node-run\x00")
    h.update(config.config_hash().encode())
    h.update(json.dumps(fingerprints or {}, sort_keys=True).encode())
    if plan is not None:
        h.update(plan_digest(plan).encode())
    return h.hexdigest()[:32]


@dataclass
class NodeParty:
    """One party with what the node loop needs besides the party object."""

    name: str
    party: DataOwner | Trainer
    config: RunConfig
    blueprint: Blueprint
    modules: dict[str, nn.Sequential]
    dataset: Dataset | None = None  # DO only
    privacy: PrivacyMechanisms = field(default_factory=PrivacyMechanisms)

    @property
    def plan(self) -> Plan:
        """The run's partition plan."""
        return self.blueprint.plan

    @property
    def model(self) -> nn.Module:
        """The whole initial model (the DO hashes its architecture for the genesis)."""
        return self.blueprint.model

    @property
    def own_plan_entries(self) -> list[str]:
        """Plan entries this party holds: ``DO:head``/``DO:tail`` or ``T<i>``."""
        mine = (lambda p: p.startswith("DO")) if self.name == "DO" else (lambda p: p == self.name)
        return [p.party for p in self.plan.parties if mine(p.party)]


def node_party(config: RunConfig, name: str, blueprint: Blueprint, *, dataset: Dataset | None = None,
               privacy: PrivacyMechanisms = NO_PRIVACY, device: str | None = None,
               context: AdversaryContext | None = None) -> NodeParty:
    """Party ``name`` of a node over ``blueprint`` (``config`` resolved for the DO: its batch size drives the
    steps); its modules go to ``device`` (``clicooper node --device``: this process only, not part of the
    run's config or its hash), else ``config.device_of(name)``. A trainer that ``config.adversary`` names
    is that behaviour's malicious trainer (the research option; :data:`ADVERSARIES`), lent ``context``."""
    modules = blueprint.modules()
    party = build_party(config, blueprint.plan, modules, name, dataset=dataset, privacy=privacy, device=device,
                        context=context, adversaries=ADVERSARIES)
    return NodeParty(name=name, party=party, config=config, blueprint=blueprint, modules=modules,
                     dataset=dataset if name == "DO" else None, privacy=privacy)


def read_plan(plan_file: Path) -> tuple[Plan, Any]:
    """``plan.json`` → (Plan, object with ``input_shape``/``num_classes``)."""
    try:
        d = jsonbound.load_file(Path(plan_file))
        plan = Plan.from_dict(d)
        meta = SimpleNamespace(input_shape=tuple(d["input_shape"]), num_classes=int(d["extra"]["num_classes"]))
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{plan_file} is not a CliCooper plan ({e}); pass the run's plan.json (--plan)") from e
    return plan, meta


def dataset_meta(config: RunConfig) -> Any:
    """The dataset's ``input_shape``/``num_classes`` (a trainer without the run's plan file loads it)."""
    if is_owner_code(config.dataset):
        raise ConfigError(f"the dataset {config.dataset!r} is the data owner's own Python data, which a trainer "
                          "never loads; give this node the run's plan.json (--plan)")
    return load_dataset(config.dataset, options=config.data)


def shape_table(plan: Plan, config: RunConfig) -> dict[tuple[str, str], tuple[int | None, ...]]:
    """``expected_shapes`` for :class:`~clicooper.net.GrpcTransport`: per (sender, kind), batch dim free."""
    tn = party_names(config)[1:]
    out: dict[tuple[str, str], tuple[int | None, ...]] = {("DO", "activations"): (None, *plan.head.output_shape)}
    for i, t in enumerate(tn):
        if config.topology == "open-tail" and i == len(tn) - 1:
            continue  # the tail holder sends loss reports and gradients; gradients' shape varies by receiver
        out[(t, "activations")] = (None, *plan.segments[i].output_shape)
    return out


def cut_shapes(plan: Plan, batch_size: int) -> list[tuple[int, ...]]:
    """Full-batch shapes of every tensor crossing a cut (for :meth:`WireLimits.for_shapes`)."""
    shapes = [(batch_size, *plan.head.output_shape)] + [(batch_size, *s.output_shape) for s in plan.segments]
    return shapes + [(batch_size,)]
