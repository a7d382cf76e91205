"""Reveals and ownership proofs (docs/design/mechanisms.md#reveals-and-ownership).

- :func:`make_reveal` — a party publishes ``sig_{r,p}`` of chosen stages (a JSON reveal file). Each revealed
  key makes that one mark easier to remove, so reveal only the stages a dispute needs.
- :func:`check_reveal` — anyone checks each signature against the party's public key (from the genesis)
  and the entry's key commitment, derives the mark and measures its BER in presented segments.
- :func:`prove` — ownership of a possibly modified copy: align the suspect's units to the committed
  weights (:mod:`clicooper.provenance.align`), pool every revealed mark into one test — total wrong bits
  over all revealed bits N — and claim ownership when the wrong bits are ≤ τ(N), the largest t with
  P[Binom(N, 1/2) ≤ t] < 2⁻⁶⁴ (an unrelated model's extracted bits are independent of the keyed target
  bits, so its wrong bits are Binom(N, 1/2)).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from clicooper.errors import LedgerError
from clicooper.provenance.align import align_chain
from clicooper.provenance.commitments import segment_commitment
from clicooper.provenance.entries import Entry, Genesis, StageEntry
from clicooper.provenance.identity import Identity
from clicooper.provenance.ledger import Ledger, ledger_anchor, read_ledger
from clicooper.provenance.schema import check_reveal_shape
from clicooper.provenance.watermark import (
    Mark,
    MarkParams,
    binomial_cdf_half,
    derive_stage_key,
    ownership_threshold,
    stage_key_from_reveal,
)

REVEAL_FORMAT = "clicooper-reveal/1"
StateDict = Mapping[str, torch.Tensor]
LedgerLike = str | os.PathLike[str] | Ledger | list[Entry]


def _entries(ledger: LedgerLike) -> list[Entry]:
    if isinstance(ledger, Ledger):
        return list(ledger.entries)
    if isinstance(ledger, list):
        return ledger
    return read_ledger(ledger)[0]


def _genesis(entries: list[Entry]) -> Genesis:
    if not entries or not isinstance(entries[0], Genesis):
        raise LedgerError("the ledger does not start with a genesis")
    return entries[0]


def _stage(entries: list[Entry], r: int, p: int) -> StageEntry | None:
    return next((e for e in entries if isinstance(e, StageEntry) and e.stage == (r, p)), None)


def make_reveal(identity: Identity, ledger: LedgerLike, stages: Iterable[tuple[int, int]]) -> dict[str, Any]:
    """Reveal file (JSON object) with ``identity``'s watermark signatures for ``stages`` = [(r, p), …].

    Raises :class:`LedgerError` if a stage is not committed, not ``identity``'s, carries no watermark, or
    its commitment does not match the re-derived key (wrong key file).
    """
    entries = _entries(ledger)
    g = _genesis(entries)
    out = []
    for r, p in stages:
        e = _stage(entries, r, p)
        if e is None:
            raise LedgerError(f"stage ({r}, {p}) is not in the ledger")
        if e.party_id != identity.party_id:
            raise LedgerError(f"stage ({r}, {p}) belongs to party {e.party_id}, not to this key")
        if e.key_commitment is None:
            raise LedgerError(f"stage ({r}, {p}) carries no watermark")
        sk = derive_stage_key(identity, g.run_id, r, p, ledger_anchor(entries, r))
        if sk.commitment != e.key_commitment:
            raise LedgerError(f"stage ({r}, {p}): the key does not match the ledger's commitment")
        out.append({"round": r, "position": p, "signature": sk.signature.hex()})
    return {"format": REVEAL_FORMAT, "run_id": g.run_id, "party_id": identity.party_id, "stages": out}


@dataclass
class StageCheck:
    """Result of checking one revealed stage."""

    round: int
    position: int
    ok: bool
    reason: str = ""
    n_bits: int = 0
    errors: int | None = None  # wrong bits in the presented segment (None if none presented)
    mark: Mark | None = None

    @property
    def ber(self) -> float | None:
        """Bit error rate in the presented segment."""
        return None if self.errors is None or not self.n_bits else self.errors / self.n_bits

    def to_json(self) -> dict[str, Any]:
        """JSON form (without the mark)."""
        return {"round": self.round, "position": self.position, "ok": self.ok, "reason": self.reason,
                "n_bits": self.n_bits, "errors": self.errors, "ber": self.ber}


def check_reveal(reveal: Mapping[str, Any], ledger: LedgerLike,
                 segments: Mapping[int, StateDict] | None = None) -> list[StageCheck]:
    """Check every stage of a reveal file; with ``segments`` (position → state dict), measure its BER.

    Each stage: the entry exists and belongs to the revealing party, the signature verifies under that
    party's genesis key over ``lp("clicooper-wm", run_id, r, p, anchor_r)``, and it hashes to the entry's
    key commitment. Run :func:`~clicooper.provenance.verify.verify_run` on the ledger first: this checks
    the reveal, not the ledger.
    """
    entries = _entries(ledger)
    g = _genesis(entries)
    if not isinstance(reveal, Mapping) or reveal.get("format") != REVEAL_FORMAT:
        fmt = reveal.get("format") if isinstance(reveal, Mapping) else None
        raise LedgerError(f"not a reveal file (format {fmt!r}, expected {REVEAL_FORMAT})")
    check_reveal_shape(reveal)
    if reveal.get("run_id") != g.run_id:
        raise LedgerError("the reveal is for another run (run id differs from the ledger's)")
    party = g.party(str(reveal.get("party_id")))
    if party is None:
        raise LedgerError(f"the revealing party {reveal.get('party_id')} is not in the genesis")
    results = []
    for item in reveal.get("stages", []):
        try:
            r, p, sig = int(item["round"]), int(item["position"]), bytes.fromhex(item["signature"])
        except (KeyError, TypeError, ValueError) as e:
            raise LedgerError(f"malformed reveal stage {item!r}") from e
        results.append(_check_stage(entries, g, party.public_key, party.party_id, r, p, sig, segments))
    return results


def _check_stage(entries: list[Entry], g: Genesis, pk: bytes, pid: str, r: int, p: int, sig: bytes,
                 segments: Mapping[int, StateDict] | None) -> StageCheck:
    e = _stage(entries, r, p)
    if e is None:
        return StageCheck(r, p, False, "stage not in the ledger")
    if e.party_id != pid:
        return StageCheck(r, p, False, "the stage belongs to another party")
    if e.key_commitment is None or e.watermark is None:
        return StageCheck(r, p, False, "the stage carries no watermark")
    try:
        sk = stage_key_from_reveal(pk, sig, g.run_id, r, p, ledger_anchor(entries, r))
    except LedgerError:
        return StageCheck(r, p, False, "signature does not verify under the party's key")
    if sk.commitment != e.key_commitment:
        return StageCheck(r, p, False, "signature does not match the entry's key commitment")
    params = MarkParams.from_json(e.watermark)
    mark = Mark.derive(sk, params)
    check = StageCheck(r, p, True, "", mark.n_bits, None, mark)
    if segments is not None and p in segments:
        try:
            check.errors = mark.errors_in(segments[p])
        except LedgerError as err:
            check.ok, check.reason = False, f"segment does not fit the mark's layout: {err}"
    return check


@dataclass
class ProveReport:
    """Pooled ownership test over every valid revealed mark."""

    n_bits: int
    wrong_bits: int
    tau: int
    false_claim_probability: float  # P[Binom(N, 1/2) ≤ τ] < 2**-64
    p_value: float  # P[Binom(N, 1/2) ≤ wrong bits]: chance an unrelated model does this well
    verdict: bool
    aligned: bool
    stages: list[StageCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ber(self) -> float:
        """Pooled bit error rate."""
        return self.wrong_bits / self.n_bits if self.n_bits else 1.0

    def to_json(self) -> dict[str, Any]:
        """JSON form for ``prove --json``."""
        return {"n_bits": self.n_bits, "wrong_bits": self.wrong_bits, "ber": self.ber, "tau": self.tau,
                "false_claim_probability": self.false_claim_probability, "p_value": self.p_value,
                "verdict": self.verdict, "aligned": self.aligned,
                "stages": [s.to_json() for s in self.stages], "notes": list(self.notes)}

    def summary(self) -> str:
        """One line for the CLI."""
        word = "OWNERSHIP SHOWN" if self.verdict else "not shown"
        return (f"{word}: {self.wrong_bits}/{self.n_bits} wrong bits (BER {self.ber:.4f}), threshold "
                f"τ = {self.tau} (an unrelated model passes with P = {self.false_claim_probability:.2e} "
                f"< 2^-64); p-value {self.p_value:.2e}")


def prove(reveals: Sequence[Mapping[str, Any]], ledger: LedgerLike, suspect: Mapping[int, StateDict], *,
          reference: Mapping[int, StateDict] | None = None, align: bool = True,
          alignment_margin: float = 0.5) -> ProveReport:
    """Pooled ownership test of ``suspect`` (position → state dict) against revealed marks.

    With ``align=True`` the suspect is first aligned to ``reference`` (position → the committed state
    dicts, each of which must match one of its position's ``end`` commitments in the ledger); consecutive
    positions are aligned as one chain. The alignment is used only if it is strong
    (:meth:`~clicooper.provenance.align.Alignment.accepted` with ``alignment_margin``): matching an
    unrelated model's units to the watermarked reference pulls its weights towards the reference just
    enough to bias its bits (we measured an unrelated model reaching exactly τ wrong bits), so a weak
    alignment is discarded and the bits are read from the suspect as presented — where the binomial
    bound is exact. Invalid reveal stages are reported and left out of the pool.
    """
    entries = _entries(ledger)
    notes: list[str] = []
    work = dict(suspect)
    aligned = False
    if align:
        if reference is None:
            raise LedgerError("alignment needs the committed (reference) segments; pass reference= or "
                              "align=False")
        ends: dict[int, set[str]] = {}
        for e in entries:
            if isinstance(e, StageEntry):
                ends.setdefault(e.position, set()).add(e.end)
        for pos, sd in reference.items():
            if segment_commitment(sd) not in ends.get(pos, set()):
                raise LedgerError(f"reference segment of position {pos} matches no commitment in the ledger")
        for run in _contiguous(sorted(set(work) & set(reference))):
            result = align_chain([reference[p] for p in run], [work[p] for p in run])
            sims = ", ".join(f"{s:.2f} (chance {n:.2f})"
                             for s, n in zip(result.layer_similarity, result.null_similarity, strict=True))
            if result.accepted(alignment_margin):
                work.update(dict(zip(run, result.segments, strict=True)))
                aligned = True
                notes.append(f"positions {run}: aligned, unit similarity {sims}")
            else:
                notes.append(f"positions {run}: alignment rejected (unit similarity {sims} too close to "
                             "chance); bits read without alignment")
    stages: list[StageCheck] = []
    for rv in reveals:
        stages += check_reveal(rv, entries, work)
    n = wrong = 0
    for s in stages:
        if not s.ok:
            notes.append(f"stage ({s.round}, {s.position}) left out: {s.reason}")
        elif s.errors is None:
            notes.append(f"stage ({s.round}, {s.position}) left out: no suspect segment for position "
                         f"{s.position}")
        else:
            n += s.n_bits
            wrong += s.errors
    tau, prob = ownership_threshold(n)
    p_value = float(binomial_cdf_half(n, wrong)) if n else 1.0
    return ProveReport(n, wrong, tau, prob, p_value, n > 0 and wrong <= tau, aligned, stages, notes)


def _contiguous(positions: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for p in positions:
        if runs and runs[-1][-1] == p - 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs
