"""A minimal in-process provenance run: the integration sequence of docs/provenance.md, executable.

:func:`simulate_run` drives the provenance API exactly as the training loop is meant to (genesis →
per round: keys and marks, steps with the watermark term, transcripts, BER = 0, stage entries in position
order → closing), with a stand-in for the task update. Tests, the ledger-forgery attack and the docs use
it to get a genuine ledger to tamper with; it is not a training loop.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from clicooper.provenance.canonical import lp, sha256_hex
from clicooper.provenance.commitments import module_commitment
from clicooper.provenance.entries import Genesis, PartyRecord, sign_multi
from clicooper.provenance.identity import Identity
from clicooper.provenance.ledger import Ledger
from clicooper.provenance.transcript import TranscriptHasher
from clicooper.provenance.watermark import (
    CapacityPlan,
    Mark,
    derive_stage_key,
    embed_until_zero,
    marks_for_round,
    module_layout,
    plan_capacity,
    watermark_loss,
)


@dataclass
class SimRun:
    """What :func:`simulate_run` produced."""

    ledger: Ledger
    identities: dict[str, Identity]  # party name → identity
    owners: dict[int, str]  # position → party name
    segments: dict[int, nn.Module]
    plans: dict[int, CapacityPlan]
    marks: dict[tuple[int, int], Mark] = field(default_factory=dict)  # (r, p) → mark of that stage


def simulate_run(path: str | os.PathLike[str], segments: Sequence[nn.Module], *, rounds: int,
                 identities: dict[str, Identity] | None = None, steps_per_round: int = 3,
                 n_bits: int = 128, close: bool = True,
                 transcript_keys: Literal["position", "name"] = "position") -> SimRun:
    """Run ``rounds`` simulated rounds over ``segments`` = [head, seg_1 … seg_K, tail] (U-shape: the DO
    holds the first and last position, trainer ``T<i>`` position i) and write a genuine ledger at ``path``.

    The stand-in task update is a small weight decay, so commitments change each round. With
    ``transcript_keys="name"`` transcripts are kept per party and keyed by peer name (as the parties of
    the training loop keep them); with ``"position"`` per position, keyed by peer position.
    """
    k = len(segments) - 2
    if k < 1:
        raise ValueError("need head, at least one trainer segment and tail")
    names = ["DO"] + [f"T{i}" for i in range(1, k + 1)]
    ids = identities or {n: Identity.generate() for n in names}
    owners = {0: "DO", k + 1: "DO", **{i: f"T{i}" for i in range(1, k + 1)}}
    ledger = _start(Path(path), names, ids, owners, rounds)
    seg = dict(enumerate(segments))
    plans = {p: plan_capacity(sum(x.numel() for x in m.parameters()), planned_rounds=rounds, n_bits=n_bits)
             for p, m in seg.items()}
    sim = SimRun(ledger, ids, owners, seg, plans)

    def side(q: int) -> int | str:  # who keeps a transcript, and how its peers are named
        return q if transcript_keys == "position" else owners[q]

    for r in range(rounds):
        _round(sim, r, steps_per_round, side)
    if close:
        closing = ledger.closing_body()
        ledger.close([sign_multi(ids[n], closing) for n in names])
    return sim


def _start(path: Path, names: list[str], ids: dict[str, Identity], owners: dict[int, str], rounds: int) -> Ledger:
    """Run start: a new ledger holding the genesis, signed by every party."""
    parties = tuple(
        PartyRecord(n, ids[n].public_key, tuple(p for p, o in owners.items() if o == n)) for n in names
    )
    body = Genesis(config_hash=sha256_hex(b"config"), dataset_commitment=sha256_hex(b"data"),
                   architecture_hash=sha256_hex(b"arch"), planned_rounds=rounds, parties=parties)
    genesis = body.with_signatures([sign_multi(ids[n], body) for n in names])
    return Ledger.create(path, genesis)


def _round(sim: SimRun, r: int, steps_per_round: int, side: Callable[[int], int | str]) -> None:
    """One round: this round's marks (retained earlier rounds' too), steps with the watermark term and
    stand-in messages on every link, then :func:`_commit_round`."""
    ledger, seg, plans, ids, owners = sim.ledger, sim.segments, sim.plans, sim.identities, sim.owners
    anchors = {q: ledger.anchor(q) for q in range(r + 1)}
    marks = {p: marks_for_round(ids[owners[p]], ledger.run_id, p, r, anchors, plans[p],
                                module_layout(m)) for p, m in seg.items()}
    starts = {p: module_commitment(m) for p, m in seg.items()}
    hashers = {side(p): TranscriptHasher() for p in seg}
    opts = {p: torch.optim.Adam(m.parameters(), lr=1e-2) for p, m in seg.items()}
    for step in range(steps_per_round):
        for p, m in seg.items():  # one optimizer step per party: task term + watermark term
            opts[p].zero_grad()
            loss = sum((x * x).sum() for x in m.parameters()) * 0.005  # stand-in task loss
            loss = loss + watermark_loss(m, marks[p], lam=plans[p].lam)
            loss.backward()
            opts[p].step()
        for p in range(len(seg) - 1):  # stand-in messages on each link of the chain
            for direction, (a, b) in (("fwd", (p, p + 1)), ("bwd", (p + 1, p))):
                msg = lp(r, step, a, b, direction)
                hashers[side(a)].sent(side(b), msg)
                hashers[side(b)].received(side(a), msg)
    _commit_round(sim, r, anchors[r], starts, marks, opts, {p: hashers[side(p)].digests() for p in seg},
                  steps_per_round)


def _commit_round(sim: SimRun, r: int, anchor: str, starts: dict[int, str], marks: dict[int, list[Mark]],
                  opts: dict[int, torch.optim.Optimizer], transcripts: dict[int, dict[str, str]],
                  steps_per_round: int) -> None:
    """Round end: BER = 0 with bounded extra steps, then the stage entries in position order."""
    ledger, seg, plans, ids, owners = sim.ledger, sim.segments, sim.plans, sim.identities, sim.owners
    extra = {p: embed_until_zero(m, marks[p], lam=plans[p].lam, optimizer=opts[p],
                                 max_steps=plans[p].max_extra_steps) if marks[p] else 0
             for p, m in seg.items()}
    for p, m in seg.items():
        wm = kc = None
        if plans[p].enabled:
            sk = derive_stage_key(ids[owners[p]], ledger.run_id, r, p, anchor)
            params = plans[p].mark_params(module_layout(m), r, extra[p])
            wm, kc = params.to_json(), sk.commitment
            sim.marks[(r, p)] = Mark.derive(sk, params)
        entry = ledger.draft_stage(
            round=r, position=p, start=starts[p], end=module_commitment(m),
            transcripts=transcripts[p], watermark=wm, key_commitment=kc,
            metrics={"samples": 100, "flops_fwd_bwd": 1000 * (p + 1), "steps": steps_per_round},
        )
        ledger.append(entry.signed(ids[owners[p]]))
