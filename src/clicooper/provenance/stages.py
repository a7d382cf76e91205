"""The provenance stage engine: one round of one run's positions, as every party runs it (docs/design/ledger.md).

Both ways of running a run drive this one engine: the in-process run (every party in one process, every
identity at hand: ``clicooper.training.provenance_hooks``) and a node (one party, one identity:
``clicooper.net.node_ledger``). Per round:

- :meth:`StageEngine.begin_round`: the marks of each owned position (retained rounds' keys re-derived from
  their anchors), start commitments, fresh transcripts, the watermark term as the owner's step hook;
- :meth:`StageEngine.end_stage`, positions in order: bounded watermark-only steps until BER = 0, then the
  stage entry, signed by its owner and appended with ``allow_identical=True`` — a round redone after a
  crash between its ledger commit and its checkpoint must reproduce the committed entry byte for byte
  (training is deterministic), and then it is a no-op.

A party object is anything with ``transcripts``, ``step_hooks``, ``samples_processed``, ``steps_taken``,
``optimizer`` and ``transcript_digests()`` (:class:`clicooper.parties.base.PartyBase`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from clicooper.config import RunConfig
from clicooper.errors import LedgerError
from clicooper.models.partition import Plan
from clicooper.provenance.commitments import module_commitment
from clicooper.provenance.entries import StageEntry
from clicooper.provenance.identity import Identity
from clicooper.provenance.ledger import Ledger
from clicooper.provenance.watermark import (
    CapacityPlan,
    Mark,
    WatermarkTerm,
    derive_stage_key,
    embed_until_zero,
    marks_for_round,
    module_errors,
    module_layout,
    plan_capacity,
)

#: λ floor of the round-end watermark-only steps. Those steps minimise the watermark term alone, so λ only
#: scales their gradient against the optimizer's state: Adam's second moments still hold the (much larger)
#: task gradients, and with the training-time λ = 0.01 the 200-step bound was nearly exhausted on the
#: digits head (199 steps). With a floor of 1 the same stage takes a few steps. The ledger records the
#: training-time λ (the regularizer's strength); the extra steps are counted in the entry.
EXTRA_STEP_LAMBDA = 1.0


def owner_of(plan_party: str) -> str:
    """Party name holding a plan entry: ``DO:head``/``DO:tail`` → ``DO``, ``T<i>`` → itself."""
    return "DO" if plan_party.startswith("DO") else plan_party


def num_params(module: nn.Module) -> int:
    """Number of trainable weights of a segment (the watermark layout's length)."""
    return sum(p.numel() for p in module.parameters())


def capacity_for(config: RunConfig, n: int) -> CapacityPlan:
    """The watermark capacity of an ``n``-weight segment under ``config.watermark``."""
    wm = config.watermark
    if not wm.enabled or n < 1:
        return CapacityPlan(n, False, 0, 0, 0, wm.strength, 0, n // 8, -1, -1, False,
                            reason="watermark disabled in the run config" if not wm.enabled else "no weights")
    if n < wm.min_params:
        # docs/design/mechanisms.md#watermarks: a segment too small for a robust mark gets none, stated in the plan. Measured on
        # fmnist-cnn's 1,290-weight tail: a 128-bit mark needed 300+ watermark-only steps per round and
        # cost accuracy, because the task's gradients on so few weights keep undoing it.
        return CapacityPlan(n, False, 0, 0, 0, wm.strength, 0, n // 8, -1, -1, False,
                            reason=f"{n} weights < watermark.min_params = {wm.min_params}: no mark")
    return plan_capacity(n, planned_rounds=config.epochs, lam=wm.strength, max_extra_steps=wm.max_extra_steps,
                         robust_min_params=wm.min_params)


@dataclass
class Position:
    """One position of the plan as the engine sees it; ``module``/``cap`` only where this process holds it."""

    position: int
    plan_party: str  # "DO:head", "T1", …
    owner: str  # "DO", "T1", …
    module: nn.Module | None
    cap: CapacityPlan | None
    flops_per_sample: int


def positions_of(config: RunConfig, plan: Plan, modules: dict[str, nn.Module], *, holder: str | None = None
                 ) -> list[Position]:
    """The plan's positions in order; with ``holder``, only that party's modules are held (a node)."""
    out = []
    for pp in sorted(plan.parties, key=lambda x: x.position):
        owner = owner_of(pp.party)
        mod = modules[pp.party] if holder is None or owner == holder else None
        cap = capacity_for(config, num_params(mod)) if mod is not None else None
        out.append(Position(pp.position, pp.party, owner, mod, cap, int(pp.flops)))
    return out


class StageEngine:
    """Marks, commitments and signed stage entries of the positions held here (see module docstring)."""

    def __init__(self, ledger: Ledger, positions: list[Position], identities: dict[str, Identity]) -> None:
        self.ledger, self.identities = ledger, identities
        self.held = [p for p in positions if p.module is not None and p.owner in identities]
        self.marks: dict[int, list[Mark]] = {}
        self.starts: dict[int, str] = {}
        self.samples0: dict[str, int] = {}
        self.steps0: dict[str, int] = {}

    def begin_round(self, r: int, parties: dict[str, Any]) -> None:
        """Marks, start commitments, fresh transcripts and the watermark terms as step hooks."""
        if self.ledger.closed:
            raise LedgerError(f"the ledger {self.ledger.path} is closed; round {r} cannot be added")
        hooks: dict[str, list[WatermarkTerm]] = {n: [] for n in parties}
        for pos in self.held:
            assert pos.module is not None and pos.cap is not None
            anchors = {q: self.ledger.anchor(q) for q in pos.cap.retained_for(r)}
            marks = marks_for_round(self.identities[pos.owner], self.ledger.run_id, pos.position, r, anchors,
                                    pos.cap, module_layout(pos.module))
            self.marks[pos.position] = marks
            self.starts[pos.position] = module_commitment(pos.module)
            if marks and pos.owner in hooks:
                # the term ignores the module it is called with (the DO's ModuleDict) and uses the segment
                hooks[pos.owner].append(WatermarkTerm(pos.module, marks, lam=pos.cap.lam))
        for name, party in parties.items():
            party.transcripts = {}
            party.step_hooks = hooks[name]
            self.samples0[name] = party.samples_processed
            self.steps0[name] = party.steps_taken

    def end_stage(self, r: int, position: int, party: Any, *, audit: dict[str, Any] | None = None,
                  ) -> tuple[StageEntry, dict[str, Any]]:
        """Extra steps until BER = 0, then the owner's signed entry for stage (r, position), appended;
        ``audit``: the checkpoint commitments of the party's audit log (``metrics["audit"]``)."""
        pos = next((p for p in self.held if p.position == position), None)
        if pos is None:
            raise LedgerError(f"position {position} is not held here; its owner drafts stage ({r}, {position})")
        assert pos.module is not None and pos.cap is not None
        marks = self.marks.get(position, [])
        wrong_before, total = module_errors(pos.module, marks)
        extra = 0
        if marks:
            extra = embed_until_zero(pos.module, marks, lam=max(pos.cap.lam, EXTRA_STEP_LAMBDA),
                                     optimizer=party.optimizer, max_steps=pos.cap.max_extra_steps)
        wrong_after, _ = module_errors(pos.module, marks)
        signed = self._signed_entry(r, pos, party, extra, audit)
        written = self.ledger.append(signed, allow_identical=True)
        return signed, {"party": pos.plan_party, "bits": total,
                        "ber_before_extra": wrong_before / total if total else None,
                        "ber": wrong_after / total if total else None, "extra_steps": extra, "committed": written}

    def _signed_entry(self, r: int, pos: Position, party: Any, extra: int, audit: dict[str, Any] | None = None,
                      ) -> StageEntry:
        assert pos.module is not None and pos.cap is not None
        identity = self.identities[pos.owner]
        samples = party.samples_processed - self.samples0[pos.owner]
        wm = kc = None
        if pos.cap.enabled:
            sk = derive_stage_key(identity, self.ledger.run_id, r, pos.position, self.ledger.anchor(r))
            wm = pos.cap.mark_params(module_layout(pos.module), r, extra).to_json()
            kc = sk.commitment
        entry = self.ledger.draft_stage(
            round=r, position=pos.position, start=self.starts[pos.position], end=module_commitment(pos.module),
            transcripts=party.transcript_digests(), watermark=wm, key_commitment=kc,
            metrics={"samples": samples, "flops_fwd_bwd": pos.flops_per_sample * samples,
                     "steps": party.steps_taken - self.steps0[pos.owner], "extra_watermark_steps": extra}
            | ({"audit": audit} if audit is not None else {}),
        )
        committed = self.ledger.stage(r, pos.position)
        if committed is not None:
            # Redone after a crash between this round's ledger commit and its checkpoint: the redo must
            # reproduce the committed entry byte for byte (it chains to that entry's prev, not the head).
            entry = dataclasses.replace(entry, prev=committed.prev)
            if entry.signed(identity) != committed:
                raise LedgerError(
                    f"round {r} was redone after an interruption but stage ({r}, {pos.position}) differs "
                    "from the entry already committed (training was not reproduced exactly); the ledger "
                    "cannot hold both: restore the round's checkpoint or start a new run")
        return entry.signed(identity)

    @staticmethod
    def end_round(parties: dict[str, Any]) -> None:
        """Remove the watermark terms from the parties' steps (the round's stages are done)."""
        for party in parties.values():
            party.step_hooks = []
