"""First cause and consequences of a verify report (docs/ledger-format.md §11).

``verify`` reports every failure, not only the first, but a single defect makes others: an unreadable line
breaks the next entry's ``prev``, leaves its stage missing (order), its position's start and final
commitments unmatched, and its round's transcripts one-sided. :class:`Trace` follows what each failed or
unreadable entry fed, and says whether a new failure is *consequential* — explained by an earlier one:

=======================  ================================================================================
check                    consequential when
=======================  ================================================================================
any (after the genesis)  the genesis failed to parse or its signatures failed
``prev-chain``           the previous line failed any check or could not be parsed
``order``,               an earlier entry failed ``order``, ``duplicate-stage`` or ``position``, or a line
``duplicate-stage``      could not be parsed (the expected stage follows them)
``start-commitment``     the entry that set the position's previous end failed
``closing``              an earlier line failed or could not be parsed
``transcript``           an entry of that round failed a chain check, or an unreadable line lies between
                         the previous round's last entry and the next round's first
``closing-missing``      a line could not be parsed (it may have been the closing)
``segment-commitment``   the entry that set the position's final end failed or an unreadable line follows
                         it, a stage was skipped or reordered (``order``), or the closing is missing;
                         ``segment-unknown``: a line could not be parsed
``reveal``               the ledger or the segments failed
=======================  ================================================================================

Everything else (``parse``, ``entry-signature``, ``position-owner``, ``trusted-key``, ``config-hash``, …) is
about the entry or file itself and is never consequential. The report's *cause* is its first failure in
the order of §11, which by construction is never consequential.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from clicooper.provenance.chain import Issue

_ORDERING = {"order", "duplicate-stage", "position"}


@dataclass
class Trace:
    """What failed so far while a ledger is replayed, and what it explains."""

    unparsed: list[int] = field(default_factory=list)
    failed: set[int] = field(default_factory=set)
    genesis_failed: bool = False
    order_broken: bool = False
    last_index: dict[int, int] = field(default_factory=dict)  # position → index of its latest entry
    rounds: dict[int, list[int]] = field(default_factory=dict)  # round → indices of its entries

    def _tainted_before(self, index: int) -> bool:
        return any(i < index for i in self.failed) or any(u < index for u in self.unparsed)

    def entry_issues(self, index: int, issues: list[Issue], position: int | None) -> list[Issue]:
        """Mark the chain issues of entry ``index`` (at ``position``, for a stage) and record them."""
        out = []
        for x in issues:
            if self.genesis_failed and index > 0:
                out.append(mark(x))
            elif x.check == "prev-chain":
                out.append(mark(x, index - 1 in self.failed or index - 1 in self.unparsed))
            elif x.check in ("order", "duplicate-stage"):
                out.append(mark(x, self.order_broken or bool(self.unparsed)))
            elif x.check == "start-commitment" and position is not None:
                out.append(mark(x, self.last_index.get(position, -1) in self.failed))
            elif x.check == "closing":
                out.append(mark(x, self._tainted_before(index)))
            else:
                out.append(x)
        if issues:
            self.failed.add(index)
            if index == 0 and any(x.check in ("genesis", "genesis-signature") for x in issues):
                self.genesis_failed = True
            if any(x.check in _ORDERING for x in issues):
                self.order_broken = True
        return out

    def unreadable(self, index: int) -> None:
        """Line ``index`` could not be parsed."""
        self.unparsed.append(index)
        self.failed.add(index)
        if index == 0:
            self.genesis_failed = True

    def stage_seen(self, index: int, round: int, position: int) -> None:
        """A parsed stage entry: the latest of its position, one of its round."""
        self.last_index[position] = index
        self.rounds.setdefault(round, []).append(index)

    def round_tainted(self, r: int) -> bool:
        """Whether round ``r``'s transcript checks can follow from an earlier failure."""
        if any(i in self.failed for i in self.rounds.get(r, [])):
            return True
        lo = max(self.rounds.get(r - 1, [-1]))
        later = [min(v) for k, v in self.rounds.items() if k > r and v]
        hi = min(later) if later else float("inf")
        return any(lo < u < hi for u in self.unparsed)

    def position_tainted(self, p: int, closed: bool) -> bool:
        """Whether a mismatch of position ``p``'s final commitment can follow from an earlier failure: its
        last entry failed or an unreadable line follows it, a stage was skipped or reordered, or the ledger
        has no closing (its last entries are then not the final ones)."""
        last = self.last_index.get(p, -1)
        return last in self.failed or any(u > last for u in self.unparsed) or self.order_broken or not closed

    def global_issue(self, x: Issue, consequential: bool = False) -> Issue:
        """A ledger-wide issue, consequential when asked or when the genesis failed."""
        return mark(x, consequential or self.genesis_failed)


def mark(x: Issue, consequential: bool = True) -> Issue:
    """``x`` marked consequential (or left as is)."""
    return dataclasses.replace(x, consequential=True) if consequential and not x.consequential else x


def first_cause(failures: list[Issue]) -> Issue | None:
    """The report's cause: its first failure (never consequential)."""
    return failures[0] if failures else None
