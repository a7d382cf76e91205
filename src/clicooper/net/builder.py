"""Build ONE party of a run, exactly as :class:`clicooper.training.loop.Session` builds all of them.

A node process (``clicooper node``) holds a single party. It builds the whole initial model from the
public config (same zoo function, same seed, same plan, so every node starts from the same weights as an
in-process run) and keeps only its own piece. The data owner alone loads the dataset; a trainer needs only
the input shape and the number of classes (from ``plan.json`` next to the config, else from the dataset's
metadata). Keep this in step with ``Session.__init__``: the contract test
(``tests/test_node_contract.py``) compares the final weights of both paths.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from clicooper.config import RunConfig, load_config_file, make_config
from clicooper.errors import ConfigError
from clicooper.models import zoo
from clicooper.models.partition import Plan, split_model
from clicooper.parties.data_owner import DataOwner
from clicooper.parties.trainer import Trainer
from clicooper.privacy.dpsgd import head_dpsgd_for
from clicooper.runs import num_outputs_for
from clicooper.training.loop import plan_for, resolve_device


def party_names(config: RunConfig) -> list[str]:
    """``["DO", "T1", …, "TK"]``."""
    return ["DO", *(f"T{i + 1}" for i in range(config.trainers))]


def load_run_config(path: str | Path) -> RunConfig:
    """A run config file (``.json`` / ``.toml`` with :class:`RunConfig` fields) → validated config."""
    return make_config(**load_config_file(path))


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
    party: Any  # DataOwner | Trainer
    config: RunConfig
    plan: Plan
    modules: dict[str, nn.Sequential]
    dataset: Any = None  # DO only
    privacy: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = None  # the whole initial model (the DO hashes its architecture for the genesis)

    @property
    def own_plan_entries(self) -> list[str]:
        """Plan entries this party holds: ``DO:head``/``DO:tail`` or ``T<i>``."""
        return [p.party for p in self.plan.parties if (p.party.startswith("DO") if self.name == "DO" else p.party == self.name)]


def read_plan(plan_file: Path) -> tuple[Plan, Any]:
    """``plan.json`` → (Plan, object with ``input_shape``/``num_classes``)."""
    try:
        d = json.loads(Path(plan_file).read_text("utf-8"))
        plan = Plan.from_dict(d)
        meta = SimpleNamespace(input_shape=tuple(d["input_shape"]), num_classes=int(d["extra"]["num_classes"]))
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{plan_file} is not a CliCooper plan ({e}); pass the run's plan.json (--plan)") from e
    return plan, meta


def dataset_meta(config: RunConfig, plan_file: Path | None) -> tuple[Any, Any]:
    """(dataset or None, object with ``input_shape``/``num_classes``) for building the model."""
    if plan_file is not None and plan_file.is_file():
        return None, read_plan(plan_file)[1]
    from clicooper.data import load_dataset

    ds = load_dataset(config.dataset)
    return ds, ds


def build_party(
    config: RunConfig, name: str, *, dataset: Any = None, meta: Any = None, privacy: dict[str, Any] | None = None,
    plan: Plan | None = None,
) -> NodeParty:
    """Build party ``name`` (``DO`` needs ``dataset``; trainers need ``meta`` or ``dataset``).

    Mirrors ``Session.__init__``: same model/plan (``plan_for``), same split, same Adam, same party
    arguments. ``config`` must be resolved for the DO (its batch size is used by the step driver).
    With ``plan`` (the run's ``plan.json``, made by ``plan_for``) the model is built as ``plan_for`` builds
    it (same zoo function and seed) without re-counting FLOPs, which imports torch's compiler stack (~4 s
    per process).
    """
    names = party_names(config)
    if name not in names:
        raise ConfigError(f"--party {name} is not a party of this run; choose one of {', '.join(names)}")
    if name == "DO" and dataset is None:
        raise ConfigError("the data owner needs its dataset")
    info = dataset if dataset is not None else meta
    if info is None:
        raise ConfigError(f"{name} needs the dataset's input shape: pass the run's plan.json")
    device = resolve_device(config.device)
    if plan is None:
        model, plan = plan_for(config, info)
    else:
        check_plan(config, plan)
        model = zoo.build(config.model, tuple(plan.input_shape), num_outputs_for(config, info.num_classes),
                          seed=config.seed)
    model.to(device)
    modules = split_model(model, plan)
    k = config.trainers
    tnames = names[1:]
    open_tail = config.topology == "open-tail"
    hash_tx = bool(config.provenance)
    p = privacy or {}
    if name == "DO":
        head = modules["DO:head"]
        tail = modules.get("DO:tail")
        do_params = list(head.parameters()) + (list(tail.parameters()) if tail is not None else [])
        party: Any = DataOwner(
            head=head, tail=tail, optimizer=torch.optim.Adam(do_params, lr=config.lr),
            x_train=dataset.x_train, y_train=dataset.y_train, trainers=tnames,
            micro_batches=config.micro_batches, protector=p.get("protector"),
            grad_protector=p.get("grad_protector"), label_encoder=p.get("label_encoder"),
            label_noiser=p.get("label_noiser"),
            expected_return_shape=None if open_tail else tuple(plan.segments[-1].output_shape),
            hash_transcripts=hash_tx, device=device, head_dpsgd=head_dpsgd_for(head, p),
        )
    else:
        i = tnames.index(name)
        left = "DO" if i == 0 else tnames[i - 1]
        right = "DO" if i == k - 1 else tnames[i + 1]
        prev = plan.head if i == 0 else plan.segments[i - 1]
        mod = modules[name]
        party = Trainer(
            name, mod, torch.optim.Adam(mod.parameters(), lr=config.lr), left=left, right=right,
            holds_tail=open_tail and i == k - 1, input_shape=tuple(prev.output_shape), hash_transcripts=hash_tx,
        )
    return NodeParty(name=name, party=party, config=config, plan=plan, modules=modules,
                     dataset=dataset if name == "DO" else None, privacy=p, model=model)


def check_plan(config: RunConfig, plan: Plan) -> None:
    """The plan file must belong to this config (model, trainers, topology)."""
    got = (plan.model, plan.trainers, plan.topology)
    want = (config.model, config.trainers, config.topology)
    if got != want:
        raise ConfigError(f"the plan file is for (model, trainers, topology) = {got} but the config says {want}: "
                          "give every node the run's own config.json and plan.json")


def plan_digest(plan: Plan) -> str:
    """SHA-256 of the plan's canonical JSON (part of the run id: all nodes must split the model alike)."""
    from dataclasses import asdict

    return hashlib.sha256(json.dumps(asdict(plan), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def neighbours(config: RunConfig, name: str) -> list[str]:
    """Parties ``name`` exchanges messages with: the DO talks to every trainer (control + both chain ends);
    a trainer to its chain neighbours and the DO."""
    names = party_names(config)
    if name == "DO":
        return names[1:]
    t = names[1:]
    i = t.index(name)
    out = {"DO"}
    if i > 0:
        out.add(t[i - 1])
    if i < len(t) - 1:
        out.add(t[i + 1])
    return sorted(out)


def shape_table(plan: Plan, config: RunConfig) -> dict[tuple[str, str], tuple[int | None, ...]]:
    """``expected_shapes`` for :class:`~clicooper.net.GrpcTransport`: per (sender, kind), batch dim free."""
    names = party_names(config)
    tn = names[1:]
    out: dict[tuple[str, str], tuple[int | None, ...]] = {("DO", "activations"): (None, *plan.head.output_shape)}
    for i, t in enumerate(tn):
        seg = plan.segments[i]
        if config.topology == "open-tail" and i == len(tn) - 1:
            continue  # the tail holder sends loss reports and gradients; gradients' shape varies by receiver
        out[(t, "activations")] = (None, *seg.output_shape)
    return out


def cut_shapes(plan: Plan, batch_size: int) -> list[tuple[int, ...]]:
    """Full-batch shapes of every tensor crossing a cut (for :meth:`WireLimits.for_shapes`)."""
    shapes = [(batch_size, *plan.head.output_shape)] + [(batch_size, *s.output_shape) for s in plan.segments]
    return shapes + [(batch_size,)]
