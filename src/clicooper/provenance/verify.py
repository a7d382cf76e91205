"""Secret-free verification of a run's ledger and delivered segments (docs/design/ledger.md#verification), in the
order docs/ledger-format.md §11 specifies.

:func:`verify_run` reads every line (schema, canonical form: :func:`~clicooper.provenance.ledger.parse_line`)
and replays it with :class:`~clicooper.provenance.chain.ChainState` (signatures of genesis, every stage entry
and closing; unbroken ``prev`` chain; round/position order; no duplicate stage; position owner; start =
previous end); at the genesis it checks the topology, the trusted keys and the run-directory files the
genesis binds (:class:`Binding`: config.json, …). Then the checks that need the whole ledger: every link of
every round recorded at both ends with equal transcripts (:mod:`~clicooper.provenance.links`), the closing
present (truncation), the final end commitments equal to the presented segments. Every failure is listed
with its entry index and check name; nothing stops at the first, but the first is the report's ``cause``
and a later one that follows from an earlier failure is marked ``consequential``
(:mod:`~clicooper.provenance.causes`).

Check names (``Issue.check``): ``version``, ``parse``, ``genesis``, ``genesis-signature``, ``topology``,
``trusted-key``, ``config-hash``, ``architecture-hash``, ``run-id``, ``prev-chain``, ``order``,
``duplicate-stage``, ``position``, ``position-owner``, ``entry-signature``, ``start-commitment``,
``transcript``, ``closing-missing``, ``closing``, ``closing-signature``, ``after-closing``,
``segment-commitment``, ``segment-unknown``, ``accusation`` (§5.5) (and, from :mod:`~clicooper.provenance.delivered`, ``plan``,
``segment-missing``, ``reveal``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from clicooper.errors import LedgerError
from clicooper.provenance.accusation import Accusation
from clicooper.provenance.causes import Trace, first_cause, mark
from clicooper.provenance.chain import ChainState, Issue
from clicooper.provenance.commitments import segment_commitment
from clicooper.provenance.entries import Entry, Genesis, StageEntry
from clicooper.provenance.ledger import Ledger, parse_line, read_ledger_lines
from clicooper.provenance.links import topology_problem, transcript_issues
from clicooper.provenance.schema import FORMAT_VERSION, FormatVersionError


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
    accusations: list[dict[str, Any]] = field(default_factory=list)  # §5.5: shown, never credited

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

    @property
    def cause(self) -> Issue | None:
        """The first failure (docs/ledger-format.md §11): what to look at first; never consequential."""
        return first_cause(self.failures)

    def to_json(self) -> dict[str, Any]:
        """JSON form for ``verify --json``."""
        cause = self.cause
        return {
            "ok": self.ok, "format_version": FORMAT_VERSION, "run_id": self.run_id,
            "rounds_completed": self.rounds_completed, "closed": self.closed,
            "cause": None if cause is None else cause.to_json(),
            "failures": [f.to_json() for f in self.failures],
            "notes": list(self.notes),
            "credit": {k: c.to_json() for k, c in self.credit.items()},
            "accusations": list(self.accusations),
        }


@dataclass(frozen=True)
class Binding:
    """A run-directory file the genesis binds (docs/ledger-format.md §10): the genesis' ``field`` must equal
    ``value``, the hash the verifier recomputed from ``source``; ``problem`` says why it could not be
    recomputed from a file that is there (unreadable, not JSON): a failure too."""

    check: str  # "config-hash", "architecture-hash"
    field: str  # the genesis field: "config_hash", "architecture_hash"
    source: str  # e.g. "RUN/config.json"
    value: str | None = None
    problem: str | None = None
    depends_on: str | None = None  # a check whose failure explains this one's (it is recomputed from it)

    def issue(self, g: Genesis) -> Issue | None:
        """The failure of this binding against genesis ``g`` (entry 0), or ``None``."""
        if self.problem is not None:
            return Issue(0, self.check, f"{self.source}: {self.problem}")
        want = getattr(g, self.field)
        if self.value != want:
            return Issue(0, self.check, f"{self.source} does not match the genesis' {self.field} (recomputed "
                                        f"{str(self.value)[:16]}…, genesis {want[:16]}…): it was changed after "
                                        "the run")
        return None


LedgerInput = str | os.PathLike[str] | Ledger | list[Entry]


def _load_entries(ledger: LedgerInput, report: VerifyReport) -> tuple[list[Entry | None], dict[int, Issue]]:
    """Entries (``None`` for a line that cannot be parsed) and each such line's ``parse``/``version`` issue."""
    if isinstance(ledger, Ledger):
        return list(ledger.entries), {}
    if isinstance(ledger, list):
        return list(ledger), {}
    contents = read_ledger_lines(ledger)
    if contents.torn_tail is not None:
        report.notes.append(
            f"ignored a torn last line ({len(contents.torn_tail)} bytes, a crash mid-append): not a "
            "committed entry")
    entries: list[Entry | None] = []
    bad: dict[int, Issue] = {}
    for i, line in enumerate(contents.lines):
        try:
            entries.append(parse_line(line, i))
        except FormatVersionError as e:
            bad[i] = Issue(i, "version", str(e))
            entries.append(None)
        except LedgerError as e:
            bad[i] = Issue(i, "parse", str(e))
            entries.append(None)
    return entries, bad


def _genesis_issues(g: Genesis, trusted_keys: Mapping[str, bytes] | None,
                    bindings: Sequence[Binding]) -> list[Issue]:
    """The genesis against the world: its topology, the trusted keys, the files it binds."""
    out = []
    problem = topology_problem(g)
    if problem is not None:
        out.append(Issue(0, "topology", problem))
    if trusted_keys is not None:
        out += _trusted_key_issues(g, trusted_keys, 0)
    for b in bindings:
        x = b.issue(g)
        if x is not None:
            out.append(mark(x, any(y.check == b.depends_on for y in out)))
    return out


def _replay(entries: list[Entry | None], bad: dict[int, Issue], report: VerifyReport, trace: Trace,
            trusted_keys: Mapping[str, bytes] | None, bindings: Sequence[Binding],
            ) -> tuple[ChainState, dict[int, dict[int, tuple[int, StageEntry]]]]:
    """Phase 1 (§11): every line in order: parse, chain checks, and at the genesis its own checks."""
    state = ChainState()
    by_round: dict[int, dict[int, tuple[int, StageEntry]]] = {}
    for i, e in enumerate(entries):
        if e is None:
            report.failures.append(trace.global_issue(bad[i]) if i else bad[i])
            trace.unreadable(i)
            state.count += 1  # keep indices aligned; the next prev check fails as it should
            state.head = None
            continue
        pos = e.position if isinstance(e, StageEntry) else None
        report.failures += trace.entry_issues(i, state.issues(e), pos)
        if isinstance(e, Genesis) and state.genesis is None:
            report.run_id = e.run_id
            report.failures += [trace.global_issue(x) for x in _genesis_issues(e, trusted_keys, bindings)]
        state.advance(e)
        if isinstance(e, Accusation) and state.genesis is not None:  # shown (a note), never credited
            names = {p.party_id: p.name for p in state.genesis.parties}
            report.notes.append(f"entry {i}: {e.describe(names)}")
            report.accusations.append({"index": i} | e.to_json())
        if isinstance(e, StageEntry):
            trace.stage_seen(i, e.round, e.position)
            by_round.setdefault(e.round, {}).setdefault(e.position, (i, e))
    return state, by_round


def verify_run(
    ledger: LedgerInput,
    segments: Mapping[int, Mapping[str, torch.Tensor]] | None = None,
    *,
    trusted_keys: Mapping[str, bytes] | None = None,
    bindings: Sequence[Binding] = (),
    missing: Mapping[int, str] | None = None,
) -> VerifyReport:
    """Verify a ledger (path, open :class:`Ledger` or parsed entries) and, optionally, the delivered segments.

    ``segments`` maps position → state dict (e.g. ``{0: head, 1: seg_1, …}``); each must equal the last
    ``end`` commitment of its position. ``trusted_keys`` maps party name → raw public key known out of band:
    without it, a genesis naming a made-up party key cannot be told from a genuine one. ``bindings`` are the
    run-directory files the genesis binds (config.json, …). ``missing`` (position → why) turns on the
    delivered-run rule: every committed position must be presented, and each absent one is a
    ``segment-missing`` failure. No secrets needed. The checks run in the order
    of docs/ledger-format.md §11; each failure after the first says whether it follows from an earlier one.
    """
    report = VerifyReport(run_id=None)
    entries, bad = _load_entries(ledger, report)
    trace = Trace()
    if bad.get(0) is not None and bad[0].check == "version":
        report.failures.append(bad[0])
        report.notes.append("nothing else was checked: the ledger is of a format version this build cannot read")
        return report
    state, by_round = _replay(entries, bad, report, trace, trusted_keys, bindings)
    g = state.genesis
    if g is None:
        report.failures.append(trace.global_issue(
            Issue(None, "genesis", "no valid genesis: nothing can be verified"), bool(report.failures)))
        return report
    if topology_problem(g) is None:
        for r in sorted(by_round):
            tainted = trace.round_tainted(r)
            report.failures += [mark(x, tainted) for x in transcript_issues(g, r, by_round[r])]
    report.closed = state.closed
    report.rounds_completed = state.expected[0]
    if not state.closed:
        report.failures.append(trace.global_issue(
            Issue(None, "closing-missing", "no closing entry: the ledger is truncated or the run is unfinished"),
            bool(trace.unparsed)))
    elif report.rounds_completed < g.planned_rounds:
        report.notes.append(f"closed after {report.rounds_completed} of {g.planned_rounds} planned rounds")
    if segments is not None or missing is not None:
        report.failures += _segment_issues(state, segments or {}, trace, missing)
    failed = {x.index for x in report.failures if x.index is not None}
    _credit(report, g, entries, failed)
    return report


def _trusted_key_issues(g: Genesis, trusted: Mapping[str, bytes], index: int) -> list[Issue]:
    out = []
    for name, pk in sorted(trusted.items()):
        party = next((p for p in g.parties if p.name == name), None)
        if party is None:
            out.append(Issue(index, "trusted-key", f"trusted party {name} is not in the genesis"))
        elif party.public_key != pk:
            out.append(Issue(index, "trusted-key", f"genesis key of {name} is not its trusted public key "
                                                   "(a made-up party)"))
    return out


def _segment_issues(state: ChainState, segments: Mapping[int, Mapping[str, torch.Tensor]],
                    trace: Trace, missing: Mapping[int, str] | None) -> list[Issue]:
    out = []
    # only a position with a stage entry must be presented (§10.3): a plan position never committed (a
    # closing after 0 rounds, an unused extra position) has nothing to present
    absent = {} if missing is None else {p: missing.get(p, "no file presents it") for p in state.last_end}
    for pos in sorted(set(segments) | set(absent)):
        if pos not in segments:
            out.append(Issue(None, "segment-missing", f"no segment for position {pos}: {absent[pos]}"))
            continue
        sd = segments[pos]
        want = state.last_end.get(pos)
        if want is None:
            out.append(trace.global_issue(Issue(None, "segment-unknown", f"a segment for position {pos}, which "
                                                "has no entry"), bool(trace.unparsed)))
            continue
        try:
            got = segment_commitment(sd)
        except LedgerError as e:
            out.append(Issue(None, "segment-commitment", f"position {pos}: {e}"))
            continue
        if got != want:
            out.append(trace.global_issue(Issue(
                None, "segment-commitment", f"segment presented for position {pos} does not match its final "
                "commitment (altered, or swapped with another position's)"), trace.position_tainted(pos, state.closed)))
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
