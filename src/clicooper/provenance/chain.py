"""The chain checks (docs/design/ledger.md#the-ledger): :class:`ChainState` replays a ledger one entry at a time and says
what is wrong with the next one, with no secrets and no file: run id, ``prev`` chain, (round, position)
order, duplicates, position owner, signatures, start commitment = previous end commitment, closing
consistency. :class:`~clicooper.provenance.ledger.Ledger` refuses an entry with issues;
:func:`~clicooper.provenance.verify.verify_run` records them and goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clicooper.errors import LedgerError
from clicooper.provenance.accusation import Accusation, accusation_problems
from clicooper.provenance.entries import Closing, Entry, Genesis, StageEntry, entry_hash
from clicooper.provenance.identity import verify as verify_signature


@dataclass(frozen=True)
class Issue:
    """One failed check: ``index`` is the 0-based entry (line) index, ``None`` for the whole ledger.

    ``consequential`` marks a failure that follows from an earlier one (docs/ledger-format.md §11: e.g.
    the ``prev`` of the entry after an unreadable line); the first failure of a report never is.
    """

    index: int | None
    check: str
    message: str
    consequential: bool = False

    def __str__(self) -> str:
        where = "ledger" if self.index is None else f"entry {self.index} (line {self.index + 1})"
        tag = " (consequential)" if self.consequential else ""
        return f"{where}: [{self.check}]{tag} {self.message}"

    def to_json(self) -> dict[str, object]:
        """JSON form for ``verify --json``."""
        return {"index": self.index, "check": self.check, "message": self.message,
                "consequential": self.consequential}


def multi_signature_issues(entry: Genesis | Closing, genesis: Genesis, index: int,
                           check: str) -> list[Issue]:
    """Every genesis party must have exactly one valid signature on ``entry``; no one else may sign."""
    issues: list[Issue] = []
    seen: set[str] = set()
    msg = entry.signing_bytes()
    for s in entry.signatures:
        party = genesis.party(s.party_id)
        if party is None:
            issues.append(Issue(index, check, f"signature by {s.party_id}, who is not a party of this run"))
            continue
        if s.party_id in seen:
            issues.append(Issue(index, check, f"{party.name} signed twice"))
        seen.add(s.party_id)
        try:
            verify_signature(party.public_key, s.signature, msg)
        except LedgerError:
            issues.append(Issue(index, check, f"invalid signature of {party.name} ({s.party_id})"))
    for party in genesis.parties:
        if party.party_id not in seen:
            issues.append(Issue(index, check, f"missing signature of {party.name} ({party.party_id})"))
    return issues


@dataclass
class ChainState:
    """Replays a ledger one entry at a time and reports what is wrong with the next entry.

    ``issues(entry)`` is pure; ``advance(entry)`` records it. :class:`~clicooper.provenance.ledger.Ledger`
    refuses an entry with issues; ``verify_run`` records the issues and advances anyway, to report everything.
    """

    genesis: Genesis | None = None
    head: str | None = None  # entry_hash of the last entry
    count: int = 0
    expected: tuple[int, int] = (0, 0)
    seen: set[tuple[int, int]] = field(default_factory=set)
    last_end: dict[int, str] = field(default_factory=dict)
    closed: bool = False
    stages: list[StageEntry] = field(default_factory=list)

    @property
    def positions(self) -> list[int]:
        """Chain positions from the genesis."""
        return self.genesis.positions if self.genesis else []

    def next_stage(self, stage: tuple[int, int]) -> tuple[int, int]:
        """The stage after ``stage`` in ledger order."""
        r, p = stage
        n = len(self.positions)
        return (r, p + 1) if p + 1 < n else (r + 1, 0)

    def issues(self, entry: Entry) -> list[Issue]:
        """Problems with ``entry`` as the next entry (index = ``self.count``)."""
        i = self.count
        if self.genesis is None:
            if not isinstance(entry, Genesis):
                return [Issue(i, "genesis", "the first entry must be the genesis")]
            return multi_signature_issues(entry, entry, i, "genesis-signature")
        g = self.genesis
        out: list[Issue] = []
        if isinstance(entry, Genesis):
            return [Issue(i, "order", "a second genesis")]
        if self.closed:
            out.append(Issue(i, "after-closing", "entry after the closing entry"))
        if entry.run_id != g.run_id:
            out.append(Issue(i, "run-id", f"run id {entry.run_id[:16]}… is not this run's {g.run_id[:16]}…"))
        if entry.prev != self.head:
            out.append(Issue(i, "prev-chain", "prev does not equal the hash of the previous entry"))
        if isinstance(entry, Closing):
            return out + self._closing_issues(entry, i)
        if isinstance(entry, Accusation):  # a claim: signed by a party, about parties; no stage order
            return out + [Issue(i, c, m) for c, m in accusation_problems(entry, g)]
        out += self._stage_issues(entry, i)
        return out

    def _stage_issues(self, e: StageEntry, i: int) -> list[Issue]:
        g = self.genesis
        assert g is not None  # internal invariant, not user input
        out: list[Issue] = []
        if e.position not in g.positions:
            return out + [Issue(i, "position", f"position {e.position} is not in the genesis")]
        if e.round >= g.planned_rounds:
            out.append(Issue(i, "order", f"round {e.round} beyond the {g.planned_rounds} planned rounds"))
        if e.stage in self.seen:
            out.append(Issue(i, "duplicate-stage", f"stage {e.stage} was already committed (replay)"))
        elif e.stage != self.expected:
            kind = "skipped" if e.stage > self.expected else "reordered"
            out.append(Issue(i, "order", f"stage {e.stage} where {self.expected} was expected ({kind})"))
        owner = g.owner(e.position)
        if e.party_id != owner.party_id:
            claimed = g.party(e.party_id)
            who = claimed.name if claimed else f"unknown party {e.party_id}"
            out.append(Issue(i, "position-owner",
                             f"{who} claims position {e.position}, which the genesis gives to {owner.name}"))
        try:
            verify_signature(owner.public_key, e.signature, e.signing_bytes())
        except LedgerError:
            out.append(Issue(i, "entry-signature",
                             f"signature on stage {e.stage} is not {owner.name}'s ({owner.party_id})"))
        prev_end = self.last_end.get(e.position)
        if e.round > 0 and prev_end is not None and e.start != prev_end:
            out.append(Issue(i, "start-commitment",
                             f"start of stage {e.stage} differs from the end of round {e.round - 1}"))
        return out

    def _closing_issues(self, c: Closing, i: int) -> list[Issue]:
        g = self.genesis
        assert g is not None
        out = multi_signature_issues(c, g, i, "closing-signature")
        if self.expected[1] != 0:
            out.append(Issue(i, "order", f"closing in the middle of round {self.expected[0]}"))
        if c.rounds_completed != self.expected[0]:
            out.append(Issue(i, "closing", f"closing claims {c.rounds_completed} rounds, the ledger "
                                           f"holds {self.expected[0]}"))
        want = {str(p): h for p, h in self.last_end.items()}
        if dict(c.final_commitments) != want:
            out.append(Issue(i, "closing", "final commitments differ from the last stage entries' ends"))
        return out

    def advance(self, entry: Entry) -> None:
        """Record ``entry`` as the next entry (whether or not it had issues)."""
        if isinstance(entry, Genesis) and self.genesis is None:
            self.genesis = entry
        elif isinstance(entry, StageEntry):
            if self.genesis is not None and entry.position in self.genesis.positions:
                if entry.stage not in self.seen and entry.stage >= self.expected:
                    self.expected = self.next_stage(entry.stage)
                self.seen.add(entry.stage)
                self.last_end[entry.position] = entry.end
            self.stages.append(entry)
        elif isinstance(entry, Closing):
            self.closed = True
        self.head = entry_hash(entry)
        self.count += 1
