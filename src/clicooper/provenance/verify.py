"""Secret-free verification of a run's ledger and delivered segments (DESIGN §5 "Verification").

:func:`verify_run` replays the ledger with :class:`~clicooper.provenance.ledger.ChainState` (signatures of
genesis, every stage entry and closing; unbroken ``prev`` chain; round/position order; no duplicate stage;
position owner; start = previous end) and adds the checks that need the whole ledger: closing present
(truncation), adjacent transcript hashes equal, final end commitments equal to the presented segments,
and — when the caller pins them — genesis public keys equal to trusted keys. Every failure is listed with
its entry index and check name; nothing stops at the first.

Check names (``Issue.check``): ``parse``, ``genesis``, ``genesis-signature``, ``trusted-key``,
``run-id``, ``prev-chain``, ``order``, ``duplicate-stage``, ``position``, ``position-owner``,
``entry-signature``, ``start-commitment``, ``transcript``, ``closing-missing``, ``closing``,
``closing-signature``, ``after-closing``, ``segment-commitment``, ``segment-unknown``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from clicooper.errors import LedgerError
from clicooper.provenance.chain import ChainState, Issue
from clicooper.provenance.commitments import segment_commitment
from clicooper.provenance.entries import Entry, Genesis, StageEntry
from clicooper.provenance.ledger import Ledger, parse_line, read_ledger_lines


@dataclass
class Credit:
    """What one party can claim: stages committed, stages that passed every check, work done."""

    name: str
    party_id: str
    stages_committed: int = 0
    stages_verified: int = 0
    samples: int = 0
    flops: int = 0

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return dict(self.__dict__)


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_run`. ``ok`` iff no failures."""

    run_id: str | None
    failures: list[Issue] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    credit: dict[str, Credit] = field(default_factory=dict)
    rounds_completed: int = 0
    closed: bool = False

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return not self.failures

    def checks_failed(self) -> set[str]:
        """Names of the failed checks."""
        return {f.check for f in self.failures}

    def raise_for_failures(self) -> None:
        """Raise :class:`LedgerError` listing every failure (for the CLI's exit code)."""
        if self.failures:
            raise LedgerError("ledger verification failed:\n" + "\n".join(f"  {f}" for f in self.failures))

    def to_json(self) -> dict[str, Any]:
        """JSON form for ``verify --json``."""
        return {
            "ok": self.ok, "run_id": self.run_id, "rounds_completed": self.rounds_completed,
            "closed": self.closed,
            "failures": [{"index": f.index, "check": f.check, "message": f.message} for f in self.failures],
            "notes": list(self.notes),
            "credit": {k: c.to_json() for k, c in self.credit.items()},
        }


def _load_entries(ledger: str | os.PathLike[str] | Ledger | list[Entry],
                  report: VerifyReport) -> list[Entry | None]:
    if isinstance(ledger, Ledger):
        return list(ledger.entries)
    if isinstance(ledger, list):
        return list(ledger)
    contents = read_ledger_lines(ledger)
    if contents.torn_tail is not None:
        report.notes.append(
            f"ignored a torn last line ({len(contents.torn_tail)} bytes, a crash mid-append): not a "
            "committed entry")
    entries: list[Entry | None] = []
    for i, line in enumerate(contents.lines):
        try:
            entries.append(parse_line(line, i))
        except LedgerError as e:
            report.failures.append(Issue(i, "parse", str(e)))
            entries.append(None)
    return entries


def transcript_issues(genesis: Genesis, round_entries: Mapping[int, tuple[int, StageEntry]]) -> list[Issue]:
    """Adjacent transcript checks for one round: what one side sent must be what the other received.

    ``round_entries`` maps position → (entry index, entry). Two key forms are checked:

    - by position: p's ``"q:sent"`` must equal q's ``"p:recv"`` (and ``recv`` likewise);
    - by party name: party X's ``"Y:sent"`` (from any of X's entries this round — the DO holds two
      positions) must equal party Y's ``"X:recv"``.

    A digest whose counterpart is missing is a failure too (a party hid a link).
    """
    out: list[Issue] = []
    names = {p.party_id: p.name for p in genesis.parties}
    by_name = {p.name: p for p in genesis.parties}
    party_tx: dict[str, dict[str, tuple[int, str]]] = {}  # party name → key → (entry index, digest)
    for p, (i, e) in sorted(round_entries.items()):
        me = names.get(e.party_id, e.party_id)
        for key, digest in sorted(e.transcripts.items()):
            peer, direction = key.rsplit(":", 1)
            opposite = "recv" if direction == "sent" else "sent"
            if not peer.isdigit():
                seen = party_tx.setdefault(me, {})
                if key in seen and seen[key][1] != digest:
                    out.append(Issue(i, "transcript", f"{me} records two different digests for {key}"))
                seen[key] = (i, digest)
                if peer not in by_name or peer == me:
                    out.append(Issue(i, "transcript", f"stage {e.stage} has a transcript with {peer!r}"))
                continue
            q = int(peer)
            if q not in genesis.positions or q == p:
                out.append(Issue(i, "transcript", f"stage {e.stage} has a transcript with position {q}"))
                continue
            other = round_entries.get(q)
            if other is None:
                continue  # that stage is missing; reported by the order checks
            want_key = f"{p}:{opposite}"
            theirs = other[1].transcripts.get(want_key)
            if theirs is None:
                out.append(Issue(i, "transcript", f"stage {e.stage} records link {key} but position {q} "
                                                  f"records no {want_key}"))
            elif theirs != digest and direction == "sent":  # report each mismatch once
                out.append(Issue(i, "transcript", f"position {p} sent to {q} in round {e.round} is not what "
                                                  f"{q} received ({digest[:12]}… vs {theirs[:12]}…)"))
    present = {names.get(e.party_id) for _, e in round_entries.values()}
    for me, keys in sorted(party_tx.items()):
        for key, (i, digest) in sorted(keys.items()):
            peer, direction = key.rsplit(":", 1)
            if peer not in present:
                continue  # that party's stage is missing (order checks) or peer unknown (above)
            want_key = f"{me}:{'recv' if direction == 'sent' else 'sent'}"
            theirs = party_tx.get(peer, {}).get(want_key)
            if theirs is None:
                out.append(Issue(i, "transcript", f"{me} records link {key} but {peer} records no {want_key}"))
            elif theirs[1] != digest and direction == "sent":
                out.append(Issue(i, "transcript", f"{me} sent to {peer} is not what {peer} received "
                                                  f"({digest[:12]}… vs {theirs[1][:12]}…)"))
    return out


def verify_run(
    ledger: str | os.PathLike[str] | Ledger | list[Entry],
    segments: Mapping[int, Mapping[str, torch.Tensor]] | None = None,
    *,
    trusted_keys: Mapping[str, bytes] | None = None,
) -> VerifyReport:
    """Verify a ledger (path, open :class:`Ledger` or parsed entries) and, optionally, the delivered segments.

    ``segments`` maps position → state dict (e.g. ``{0: head, 1: seg_1, …}``); each must equal the last
    ``end`` commitment of its position. ``trusted_keys`` maps party name → raw public key known out of band:
    without it, a genesis naming a made-up party key cannot be told from a genuine one. No secrets needed.
    """
    report = VerifyReport(run_id=None)
    entries = _load_entries(ledger, report)
    state = ChainState()
    by_round: dict[int, dict[int, tuple[int, StageEntry]]] = {}
    bad: set[int] = set()  # indices of entries with any failure
    for i, e in enumerate(entries):
        if e is None:
            state.count += 1  # keep indices aligned; the next prev check fails as it should
            state.head = None
            bad.add(i)
            continue
        issues = state.issues(e)
        report.failures += issues
        if issues:
            bad.add(i)
        if isinstance(e, Genesis) and state.genesis is None:
            report.run_id = e.run_id
            if trusted_keys is not None:
                report.failures += _trusted_key_issues(e, trusted_keys, i)
        state.advance(e)
        if isinstance(e, StageEntry):
            rnd = by_round.setdefault(e.round, {})
            if e.position not in rnd:
                rnd[e.position] = (i, e)
    g = state.genesis
    if g is None:
        report.failures.append(Issue(None, "genesis", "no valid genesis: nothing can be verified"))
        return report
    for r in sorted(by_round):
        issues = transcript_issues(g, by_round[r])
        report.failures += issues
        bad |= {x.index for x in issues if x.index is not None}
    report.closed = state.closed
    report.rounds_completed = state.expected[0]
    if not state.closed:
        report.failures.append(Issue(None, "closing-missing",
                                     "no closing entry: the ledger is truncated or the run is unfinished"))
    elif report.rounds_completed < g.planned_rounds:
        report.notes.append(f"closed after {report.rounds_completed} of {g.planned_rounds} planned rounds")
    if segments is not None:
        report.failures += _segment_issues(state, segments)
    _credit(report, g, entries, bad)
    return report


def _trusted_key_issues(g: Genesis, trusted: Mapping[str, bytes], index: int) -> list[Issue]:
    out = []
    for name, pk in trusted.items():
        party = next((p for p in g.parties if p.name == name), None)
        if party is None:
            out.append(Issue(index, "trusted-key", f"trusted party {name} is not in the genesis"))
        elif party.public_key != pk:
            out.append(Issue(index, "trusted-key", f"genesis key of {name} is not its trusted public key "
                                                   "(a made-up party)"))
    return out


def _segment_issues(state: ChainState, segments: Mapping[int, Mapping[str, torch.Tensor]]) -> list[Issue]:
    out = []
    for pos, sd in sorted(segments.items()):
        want = state.last_end.get(pos)
        if want is None:
            out.append(Issue(None, "segment-unknown", f"a segment for position {pos}, which has no entry"))
            continue
        try:
            got = segment_commitment(sd)
        except LedgerError as e:
            out.append(Issue(None, "segment-commitment", f"position {pos}: {e}"))
            continue
        if got != want:
            out.append(Issue(None, "segment-commitment",
                             f"segment presented for position {pos} does not match its final commitment "
                             "(altered, or swapped with another position's)"))
    return out


def _credit(report: VerifyReport, g: Genesis, entries: list[Entry | None], bad: set[int]) -> None:
    for p in g.parties:
        report.credit[p.party_id] = Credit(p.name, p.party_id)
    for i, e in enumerate(entries):
        if not isinstance(e, StageEntry) or e.party_id not in report.credit:
            continue
        c = report.credit[e.party_id]
        c.stages_committed += 1
        if i in bad:
            continue
        c.stages_verified += 1
        c.samples += _metric_int(e.metrics, "samples")
        c.flops += _metric_int(e.metrics, "flops_fwd_bwd")


def _metric_int(metrics: Mapping[str, Any], key: str) -> int:
    v = metrics.get(key, 0)
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0
