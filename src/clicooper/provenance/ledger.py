"""Append-only JSON-lines ledger file (docs/design/ledger.md#the-ledger).

One entry per line, each line the RFC 8785 canonical JSON of the entry (see
:mod:`clicooper.provenance.entries`) followed by ``\\n``. Order: genesis; then for each round r = 0, 1, …
the stage entries of positions 0 … N-1 (appended when the round ends); then one closing entry.

Durability: :meth:`Ledger.append` writes the whole line with one ``write``, flushes and ``os.fsync``\\ s
before returning; an entry counts as committed only once ``append`` has returned. A crash mid-append can
leave a *torn* last line (no trailing newline, or unparsable): :func:`read_ledger` reports it and ignores
it, :meth:`Ledger.open` also cuts it off the file. It is never taken for a committed stage. A bad line
anywhere else (invalid UTF-8, invalid JSON, not canonical, malformed entry) is corruption, not a crash:
:class:`LedgerError` naming the line.

Checks common to appending and verifying live in :class:`~clicooper.provenance.chain.ChainState` (one
entry at a time, no secrets; re-exported here); this module is the file: reading it, cutting a torn tail,
appending durably. :mod:`clicooper.provenance.verify` adds the cross-party checks (transcripts, presented
segments) and the credit table.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clicooper import jsonbound
from clicooper.errors import LedgerError
from clicooper.provenance.accusation import Accusation
from clicooper.provenance.chain import ChainState, Issue, multi_signature_issues
from clicooper.provenance.entries import (
    Closing,
    Entry,
    Genesis,
    SignatureRecord,
    StageEntry,
    entry_bytes,
    entry_from_json,
    entry_hash,
)
from clicooper.provenance.schema import FormatVersionError, check_entry

__all__ = ["ChainState", "Issue", "Ledger", "LedgerContents", "ledger_anchor", "multi_signature_issues",
           "parse_line", "read_ledger", "read_ledger_lines"]

#: the longest line an entry may take (a genesis of many parties is a few KiB): a longer one is refused
#: unparsed, as is one nested deeper than :data:`clicooper.jsonbound.MAX_DEPTH`
MAX_LINE_BYTES = 1 << 20


def _json(line: bytes) -> Any:
    """One line's JSON value, size and depth bounded (``ValueError`` otherwise, never ``RecursionError``)."""
    return jsonbound.loads(line, max_bytes=MAX_LINE_BYTES, what="the line")


# ------------------------------------------------------------------------------------------- reading
@dataclass
class LedgerContents:
    """What :func:`read_ledger` found: committed lines and the torn tail (if any)."""

    lines: list[bytes]
    torn_tail: bytes | None
    committed_length: int  # byte length of the committed prefix


def read_ledger_lines(path: str | os.PathLike[str]) -> LedgerContents:
    """Split a ledger file into committed lines and a torn last line (no trailing newline/unparsable).

    Does not parse entries or modify the file.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError as e:
        raise LedgerError(f"ledger {p} not found") from e
    except OSError as e:
        raise LedgerError(f"cannot read ledger {p}: {e}") from e
    lines = data.split(b"\n")
    last = lines.pop()  # b"" when the file ends with a newline
    torn: bytes | None = last if last else None
    if torn is None and lines and not _parses(lines[-1]):
        torn = lines.pop() + b"\n"
    committed = sum(len(x) + 1 for x in lines)
    return LedgerContents(lines, torn, committed)


def _parses(line: bytes) -> bool:
    """Whether ``line`` reads as an entry (UTF-8, JSON, its type's schema and field checks; a genesis of an
    unknown version counts: docs/ledger-format.md §4.2): a last line that does not is a torn tail."""
    try:
        obj = _json(line)
        check_entry(obj)
        entry_from_json(obj)
    except FormatVersionError:
        return True  # a whole entry, of a format this build does not read: not a torn write
    except (UnicodeDecodeError, ValueError):
        return False
    return True


def parse_line(line: bytes, index: int) -> Entry:
    """Parse committed line ``index`` (0-based); :class:`LedgerError` names the line on any defect."""
    where = f"ledger line {index + 1}"
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LedgerError(f"{where} is not valid UTF-8 (byte {e.start}): the ledger is corrupt") from e
    try:
        obj = _json(line)
    except ValueError as e:
        raise LedgerError(f"{where} is not valid JSON ({e}): the ledger is corrupt") from e
    try:
        check_entry(obj)
        entry = entry_from_json(obj)
    except FormatVersionError as e:
        raise FormatVersionError(f"{where}: {e}") from e
    except LedgerError as e:
        raise LedgerError(f"{where}: {e}") from e
    if entry_bytes(entry) != line:
        raise LedgerError(f"{where} is not in canonical form (RFC 8785): it was edited after writing")
    return entry


def read_ledger(path: str | os.PathLike[str]) -> tuple[list[Entry], bytes | None]:
    """Parse every committed line; return ``(entries, torn_tail)``. Raises on corruption."""
    contents = read_ledger_lines(path)
    return [parse_line(line, i) for i, line in enumerate(contents.lines)], contents.torn_tail


# -------------------------------------------------------------------------------------- ledger file
class Ledger:
    """An open, append-only ledger file whose every entry passed :class:`ChainState`'s checks."""

    def __init__(self, path: Path, entries: list[Entry], state: ChainState,
                 cut_tail: bytes | None = None) -> None:
        self.path = path
        self.entries = entries
        self._state = state
        #: the torn last line that :meth:`open` cut off (``None`` if the file was clean).
        self.cut_tail = cut_tail

    # ---- construction
    @classmethod
    def create(cls, path: str | os.PathLike[str], genesis: Genesis) -> Ledger:
        """Create a new ledger holding ``genesis`` (which every party must already have signed)."""
        p = Path(path)
        state = ChainState()
        issues = state.issues(genesis)
        if issues:
            raise LedgerError("; ".join(str(x) for x in issues))
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError as e:
            raise LedgerError(f"ledger {p} already exists; open it with Ledger.open to resume") from e
        with os.fdopen(fd, "wb") as f:
            f.write(entry_bytes(genesis) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(p.parent)
        state.advance(genesis)
        return cls(p, [genesis], state)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, repair: bool = True) -> Ledger:
        """Open an existing ledger, replaying every check; a torn last line is cut off (and reported
        in :attr:`cut_tail`); with ``repair=False`` the file is left as it is."""
        p = Path(path)
        contents = read_ledger_lines(p)
        if not contents.lines:
            raise LedgerError(f"ledger {p} has no committed genesis; delete it and start the run again")
        entries = [parse_line(line, i) for i, line in enumerate(contents.lines)]
        state = ChainState()
        for e in entries:
            issues = state.issues(e)
            if issues:
                raise LedgerError(f"ledger {p}: " + "; ".join(str(x) for x in issues))
            state.advance(e)
        if contents.torn_tail is not None and repair:
            with open(p, "r+b") as f:
                f.truncate(contents.committed_length)
                f.flush()
                os.fsync(f.fileno())
        return cls(p, entries, state, contents.torn_tail)

    # ---- queries
    @property
    def genesis(self) -> Genesis:
        """The run's genesis."""
        g = self.entries[0]
        assert isinstance(g, Genesis)
        return g

    @property
    def run_id(self) -> str:
        """The run id (hash of the genesis body)."""
        return self.genesis.run_id

    @property
    def head(self) -> str:
        """Hash of the last entry: the ``prev`` of the next one."""
        assert self._state.head is not None
        return self._state.head

    @property
    def closed(self) -> bool:
        """Whether the closing entry is written."""
        return self._state.closed

    @property
    def rounds_completed(self) -> int:
        """Rounds whose every stage entry is committed."""
        return self._state.expected[0]

    def next_stage(self) -> tuple[int, int] | None:
        """The stage (round, position) the next entry must be for; ``None`` once closed."""
        return None if self.closed else self._state.expected

    def stages(self) -> Iterator[StageEntry]:
        """Stage entries in ledger order."""
        return (e for e in self.entries if isinstance(e, StageEntry))

    def stage(self, round: int, position: int) -> StageEntry | None:
        """The committed entry of stage (round, position), if any."""
        for e in self.stages():
            if e.stage == (round, position):
                return e
        return None

    def last_ends(self) -> dict[int, str]:
        """Latest end commitment per position."""
        return dict(self._state.last_end)

    def anchor(self, round: int) -> str:
        """``anchor_r``: hash of the last entry of round r-1 (the genesis for r = 0). docs/design/mechanisms.md#dynamic-chained-keys."""
        return ledger_anchor(self.entries, round)

    # ---- appending
    def append(self, entry: StageEntry | Closing | Accusation, *, allow_identical: bool = False) -> bool:
        """Check and durably append ``entry``; returns ``True`` if written.

        With ``allow_identical=True`` an entry byte-identical to an already committed one (a round-end
        commit redone after a crash, docs/design/protocol.md#crash-and-resume) is accepted as a no-op and ``False`` is returned; a
        *different* entry for an already committed stage is always a :class:`LedgerError`.
        """
        if allow_identical:
            line = entry_bytes(entry)
            if any(entry_bytes(e) == line for e in self.entries):
                return False
        issues = self._state.issues(entry)
        if issues:
            raise LedgerError("refusing to append: " + "; ".join(str(x) for x in issues))
        line = entry_bytes(entry) + b"\n"
        with open(self.path, "ab") as f:
            f.write(line)  # one write: a crash leaves a prefix, which open() cuts off
            f.flush()
            os.fsync(f.fileno())
        self._state.advance(entry)
        self.entries.append(entry)
        return True

    def draft_stage(self, *, round: int, position: int, start: str, end: str,
                    transcripts: Mapping[str, str] | None = None, watermark: Mapping[str, Any] | None = None,
                    key_commitment: str | None = None, metrics: Mapping[str, Any] | None = None) -> StageEntry:
        """Unsigned entry for stage (round, position) chained to the current head; the owner signs it with
        :meth:`StageEntry.signed` and it is appended with :meth:`append` (positions in order 0 … N-1)."""
        return StageEntry(
            run_id=self.run_id, round=round, position=position,
            party_id=self.genesis.owner(position).party_id, prev=self.head, start=start, end=end,
            transcripts=dict(transcripts or {}), watermark=None if watermark is None else dict(watermark),
            key_commitment=key_commitment, metrics=dict(metrics or {}),
        )

    def closing_body(self) -> Closing:
        """Unsigned closing for the ledger as it stands (each party signs it with ``sign_multi``)."""
        if self._state.expected[1] != 0:
            raise LedgerError(f"round {self._state.expected[0]} is incomplete; finish it before closing")
        return Closing(
            run_id=self.run_id, prev=self.head, rounds_completed=self.rounds_completed,
            final_commitments={str(p): h for p, h in sorted(self._state.last_end.items())},
        )

    def close(self, signatures: list[SignatureRecord]) -> Closing:
        """Append the closing entry signed by every party."""
        closing = self.closing_body().with_signatures(signatures)
        self.append(closing)
        return closing


def ledger_anchor(entries: list[Entry], round: int) -> str:
    """``anchor_r`` = hash of the last entry of round r-1, or of the genesis for r = 0 (docs/design/mechanisms.md#dynamic-chained-keys)."""
    if round < 0:
        raise LedgerError("round must be ≥ 0")
    if round == 0:
        return entry_hash(entries[0])
    last: Entry | None = None
    for e in entries:
        if isinstance(e, StageEntry) and e.round == round - 1:
            last = e
    g = entries[0]
    if last is None or not isinstance(g, Genesis) or last.position != g.positions[-1]:
        raise LedgerError(f"round {round - 1} is not fully committed; its anchor does not exist yet")
    return entry_hash(last)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
