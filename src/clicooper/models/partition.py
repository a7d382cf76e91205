"""Cut an ordered list of layers into ``head | seg_1 | … | seg_K | tail`` (docs/design/protocol.md#partition).

Layers are grouped into *units*: a unit starts at a layer with parameters and takes the parameter-free
layers after it (activations, pooling). Reshape-only layers (``Flatten``) just before a parametrised layer
join that layer's unit, so a cut never falls between a reshape and the layer that needs it. The DO's head
is the first unit; in U-shape its tail is the last unit. The units between go to the K trainers in
contiguous groups so that each group's *counted* forward+backward FLOPs (``torch.utils.flop_counter``,
not timed, so the plan is deterministic) are as close as possible to proportional to its capacity
(minimising the largest FLOPs/capacity ratio, i.e. the slowest trainer's time).

A residual block (:class:`clicooper.models.blocks.Residual`) is ONE layer of the ``nn.Sequential``, so it
lies inside one unit: a cut never falls inside it. BatchNorm is allowed; each party normalises what it
computes, so with M micro-batches the statistics are those of each micro-batch (as in GPipe), and split
training equals centralized training at M = 1 (``tests/test_normalisation.py``).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from clicooper.errors import ConfigError

_RESHAPE = (nn.Flatten, nn.Unflatten)


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


@dataclass
class PartyPlan:
    """One party's share of the model."""

    party: str  # "DO:head", "T1", …, "DO:tail"
    position: int
    layers: list[int]  # indices into the full model
    layer_names: list[str]
    params: int
    flops: int  # forward + backward, per sample
    flop_share: float = 0.0
    output_shape: list[int] = field(default_factory=list)  # per sample


@dataclass
class Plan:
    """The partition plan, printed and saved as ``plan.json``."""

    model: str
    topology: str
    trainers: int
    capacities: list[float]
    parties: list[PartyPlan]
    input_shape: list[int]
    total_flops: int
    do_flop_share: float
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. watermark capacity per segment

    def party(self, name: str) -> PartyPlan:
        """The plan entry of party ``name`` (``DO:head``, ``T1`` …, ``DO:tail``)."""
        for p in self.parties:
            if p.party == name:
                return p
        raise KeyError(name)

    @property
    def head(self) -> PartyPlan:
        """The DO's head."""
        return self.parties[0]

    @property
    def segments(self) -> list[PartyPlan]:
        """The trainers' segments, T1..TK."""
        return [p for p in self.parties if p.party.startswith("T")]

    @property
    def tail(self) -> PartyPlan | None:
        """The DO's tail (U-shape) or ``None`` (open tail)."""
        return self.parties[-1] if self.parties[-1].party == "DO:tail" else None

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain data (what ``plan.json`` holds)."""
        return asdict(self)

    def to_json(self) -> str:
        """Pretty JSON of the plan."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        """Inverse of ``asdict``."""
        d = dict(d)
        d["parties"] = [PartyPlan(**p) for p in d["parties"]]
        return cls(**d)


def units_of(model: nn.Sequential) -> list[list[int]]:
    """Group layer indices into units (see module docstring)."""
    layers = list(model)
    units: list[list[int]] = []
    pending: list[int] = []
    for i, layer in enumerate(layers):
        if _has_params(layer):
            units.append(pending + [i])
            pending = []
        elif isinstance(layer, _RESHAPE) and any(_has_params(m) for m in layers[i + 1 :]):
            pending.append(i)
        elif pending:
            pending.append(i)
        elif units:
            units[-1].append(i)
        else:
            pending.append(i)  # leading parameter-free layers join the first unit
    if pending:
        if not units:
            raise ConfigError("the model has no layer with parameters; nothing to train")
        units[-1].extend(pending)
    return units


def layer_costs(model: nn.Sequential, input_shape: tuple[int, ...]) -> tuple[list[int], list[list[int]]]:
    """Counted forward+backward FLOPs per layer for one sample, and each layer's output shape."""
    x = torch.zeros((1, *input_shape), device="meta")
    flops: list[int] = []
    shapes: list[list[int]] = []
    first = True
    # a copy: counting runs backward, which must not touch .grad; eval mode: BatchNorm takes a batch of one
    # and keeps its running statistics, Dropout draws no random numbers (neither changes the counted FLOPs);
    # on the meta device: the counts follow from shapes alone, so nothing is computed or allocated per layer
    for layer in copy.deepcopy(model).to("meta").eval():
        x = x.detach().requires_grad_(not first)
        counter = FlopCounterMode(display=False)
        with counter:
            y = layer(x)
            if y.requires_grad:
                y.sum().backward()
        flops.append(int(counter.get_total_flops()))
        shapes.append(list(y.shape[1:]))
        if _has_params(layer):
            first = False
        x = y.detach()
    return flops, shapes


def _split_proportional(costs: list[int], caps: list[float]) -> list[int]:
    """Cut points for contiguous groups minimising max(cost_i / cap_i) (ties: closest to proportional)."""
    n, k = len(costs), len(caps)
    prefix = [0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # best[j][i]: best (max ratio, sq deviation) for first i units into first j groups
    best = [[(inf, inf)] * (n + 1) for _ in range(k + 1)]
    arg = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = (0.0, 0.0)
    total = prefix[-1] or 1
    cap_total = sum(caps)
    for j in range(1, k + 1):
        for i in range(j, n - (k - j) + 1):
            for s in range(j - 1, i):
                prev = best[j - 1][s]
                if prev[0] == inf:
                    continue
                c = prefix[i] - prefix[s]
                ratio = c / caps[j - 1]
                dev = (c / total - caps[j - 1] / cap_total) ** 2
                cand = (max(prev[0], ratio), prev[1] + dev)
                if cand < best[j][i]:
                    best[j][i] = cand
                    arg[j][i] = s
    cuts = []
    i = n
    for j in range(k, 0, -1):
        cuts.append(i)
        i = arg[j][i]
    return sorted(cuts)


def _checked_units(model: nn.Sequential, *, model_name: str, trainers: int, caps: list[float], topology: str
                   ) -> list[list[int]]:
    """The model's units, after refusing what no plan can satisfy (with what to do instead)."""
    if trainers < 1:
        raise ConfigError("need at least one trainer (--trainers K with K >= 1)")
    if len(caps) != trainers:
        raise ConfigError(f"{len(caps)} capacities for {trainers} trainers; give one per trainer")
    if any(not (c > 0) for c in caps):
        raise ConfigError("every capacity must be > 0")
    units = units_of(model)
    reserved = 2 if topology == "u-shape" else 1
    if len(units) < trainers + reserved:
        raise ConfigError(
            f"{model_name} has {len(units)} parametrised units; {topology} with {trainers} trainers needs "
            f"at least {trainers + reserved} (one per trainer plus the DO's head"
            f"{' and tail' if reserved == 2 else ''}); use fewer --trainers"
        )
    return units


def make_plan(
    model: nn.Sequential,
    *,
    model_name: str,
    input_shape: tuple[int, ...],
    trainers: int,
    capacities: list[float] | None = None,
    topology: str = "u-shape",
) -> Plan:
    """Partition ``model`` for ``trainers`` trainers; raises :class:`ConfigError` for impossible plans."""
    caps = list(capacities) if capacities is not None else [1.0] * trainers
    units = _checked_units(model, model_name=model_name, trainers=trainers, caps=caps, topology=topology)
    flops, shapes = layer_costs(model, input_shape)
    head_u, rest = units[0], units[1:]
    tail_u = rest[-1] if topology == "u-shape" else None
    middle = rest[:-1] if topology == "u-shape" else rest
    ucost = [sum(flops[i] for i in u) for u in middle]
    cuts = _split_proportional(ucost, caps)
    groups: list[list[int]] = []
    start = 0
    for c in cuts:
        groups.append([i for u in middle[start:c] for i in u])
        start = c
    layers = list(model)

    def pp(name: str, pos: int, idx: list[int]) -> PartyPlan:
        return PartyPlan(
            party=name, position=pos, layers=idx,
            layer_names=[type(layers[i]).__name__ for i in idx],
            params=sum(p.numel() for i in idx for p in layers[i].parameters()),
            flops=sum(flops[i] for i in idx), output_shape=shapes[idx[-1]],
        )

    parties = [pp("DO:head", 0, head_u)]
    parties += [pp(f"T{j + 1}", j + 1, g) for j, g in enumerate(groups)]
    if tail_u is not None:
        parties.append(pp("DO:tail", trainers + 1, tail_u))
    for p in parties:
        if p.params == 0:
            raise ConfigError(f"{p.party} would hold no parameters; use fewer trainers or another model")
    total = sum(p.flops for p in parties) or 1
    for p in parties:
        p.flop_share = p.flops / total
    do_share = sum(p.flop_share for p in parties if p.party.startswith("DO"))
    return Plan(
        model=model_name, topology=topology, trainers=trainers, capacities=caps, parties=parties,
        input_shape=list(input_shape), total_flops=total, do_flop_share=do_share,
    )


#: A trainer's share of the trainers' FLOPs below ``BALANCE_LOW`` × or above ``BALANCE_HIGH`` × its share by
#: capacity makes :func:`balance_warning` speak: the plan cannot spread the work as asked.
BALANCE_LOW, BALANCE_HIGH = 0.5, 2.0


def balance_warning(plan: Plan) -> str | None:
    """A warning when the trainers' shares of their FLOPs are far from what their capacities ask, else
    ``None``. Units are never cut (a residual block is one unit), so a model with few or uneven units
    between the DO's head and tail can leave one trainer almost idle: the two-block model of docs/reference/cli.md with
    K = 2 gives T1 a BatchNorm + ReLU (0 % of the FLOPs) and T2 the rest."""
    segs = plan.segments
    if len(segs) < 2:
        return None
    work = sum(p.flops for p in segs)
    caps = list(plan.capacities) if len(plan.capacities) == len(segs) else [1.0] * len(segs)
    if work <= 0 or sum(caps) <= 0:
        return None
    off = []
    for p, cap in zip(segs, caps, strict=True):
        got, want = p.flops / work, cap / sum(caps)
        if not (BALANCE_LOW * want <= got <= BALANCE_HIGH * want):
            off.append(f"{p.party} gets {got:.1%} of the trainers' FLOPs ({' '.join(p.layer_names)}) "
                       f"against {want:.1%} by capacity")
    if not off:
        return None
    even = "an even split" if len(set(caps)) == 1 else "its capacity"
    return (f"warning: a lopsided plan: {'; '.join(off)}. The {len(segs)} trainers' segments are whole units "
            f"(a layer with parameters and what follows it; a residual block is one unit), and {plan.model} has "
            f"too few or too uneven units between the DO's head and tail for {even}. Use fewer trainers "
            f"(--trainers {len(segs) - 1}), --capacities that match the split, or a model with finer units "
            "(e.g. more, smaller layers); `clicooper plan` shows the split before training.")


def split_model(model: nn.Sequential, plan: Plan) -> dict[str, nn.Sequential]:
    """The parties' modules (sharing the model's parameters): ``{"DO:head": …, "T1": …, "DO:tail": …}``."""
    layers = list(model)
    return {p.party: nn.Sequential(*[layers[i] for i in p.layers]) for p in plan.parties}
