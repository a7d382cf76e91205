"""What a run directory delivers, read back for checking (DESIGN §5): the segments by position, the
parties' trusted public keys, the stages a party expects marked in the final weights, and the verify
verdict of ``clicooper verify`` with its exit status.

Library code (the removal and forgery attacks, the research scripts) and the CLI both use these; nothing
here imports the CLI.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from clicooper import rundir
from clicooper.errors import KeyFileError, LedgerError, RunDirError
from clicooper.models.partition import Plan
from clicooper.provenance.entries import Entry, StageEntry
from clicooper.provenance.identity import load_identity
from clicooper.provenance.ledger import Issue, read_ledger
from clicooper.provenance.reveal import check_reveal
from clicooper.provenance.verify import VerifyReport, verify_run
from clicooper.rundir import model_file


def ledger_path(run: Path) -> Path:
    """``RUN/ledger.jsonl``; :class:`RunDirError` when the run has none."""
    p = Path(run) / rundir.LEDGER
    if not p.is_file():
        raise RunDirError(f"{p} not found: was the run trained with provenance on?")
    return p


def load_segments(run: Path, model_dir: Path | None = None, *, positions: list[int] | None = None,
                  ) -> dict[int, dict[str, torch.Tensor]]:
    """Segments ``{position: state dict}`` from ``RUN/model`` (or ``model_dir``), mapped by ``plan.json``."""
    d = Path(model_dir) if model_dir is not None else Path(run) / rundir.MODEL_DIR
    plan = Plan.from_dict(rundir.read_json(Path(run) / rundir.PLAN))
    out = {}
    for pp in plan.parties:
        if positions is not None and pp.position not in positions:
            continue
        f = d / model_file(pp.party)
        if not f.is_file():
            raise RunDirError(f"{f} is missing: expected the weights of {pp.party} (position {pp.position})")
        out[pp.position] = rundir.load_tensors(f)[0]
    return out


def trusted_keys(run: Path) -> tuple[dict[str, bytes], list[str]]:
    """Public keys known for the run: ``RUN/keys/<name>.key`` (unencrypted) or ``<name>.pub`` (hex)."""
    keys: dict[str, bytes] = {}
    notes: list[str] = []
    d = Path(run) / rundir.KEYS
    if not d.is_dir():
        return keys, [f"no {d}: genesis keys are not pinned to trusted keys"]
    for f in sorted(d.iterdir()):
        if f.suffix == ".pub":
            try:
                keys[f.stem] = bytes.fromhex(f.read_text("ascii").strip())
            except ValueError:
                notes.append(f"{f} is not a hex public key; ignored")
        elif f.suffix == ".key" and f.stem not in keys:
            try:
                keys[f.stem] = load_identity(f).public_key
            except KeyFileError as e:
                notes.append(f"{f}: {e}; not used as a trusted key")
    return keys, notes


def party_record(entries: Sequence[Entry], party: str) -> Any:
    """The genesis record of ``party`` (name, party id, positions); :class:`LedgerError` if absent."""
    rec = next((p for p in entries[0].parties if p.name == party), None)  # type: ignore[union-attr]
    if rec is None:
        raise LedgerError(f"party {party} is not in the run's genesis")
    return rec


def final_retained_stages(ledger: Path, party: str) -> list[tuple[int, int]]:
    """The stages whose marks ``party`` expects in the final weights: for each of its positions, the
    retained rounds of its last watermarked entry."""
    entries, _ = read_ledger(ledger)
    rec = party_record(entries, party)
    last: dict[int, StageEntry] = {}
    for e in entries:
        if isinstance(e, StageEntry) and e.party_id == rec.party_id and e.watermark is not None:
            last[e.position] = e
    return [(r, p) for p, e in sorted(last.items()) for r in e.watermark["retained_rounds"]]  # type: ignore[index]


def read_reveal_file(f: Path) -> Any:
    """The JSON object of a reveal file; :class:`LedgerError` when it cannot be read or parsed."""
    try:
        return json.loads(Path(f).read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise LedgerError(f"cannot read reveal file {f}: {e}") from e


def check_reveal_files(report: VerifyReport, files: Sequence[Path], ledger: Path,
                       segments: dict[int, dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
    """Check each reveal file against ``segments``; a bad or erroneous stage becomes a ``reveal`` failure
    of ``report``. Returns one JSON row per revealed stage."""
    rows = []
    for f in files:
        for sc in check_reveal(read_reveal_file(f), ledger, segments):
            rows.append({"file": str(f), **sc.to_json()})
            if not sc.ok:
                report.failures.append(Issue(None, "reveal", f"{f}: stage ({sc.round}, {sc.position}): {sc.reason}"))
            elif sc.errors:
                report.failures.append(Issue(None, "reveal", f"{f}: stage ({sc.round}, {sc.position}) has "
                                                             f"{sc.errors}/{sc.n_bits} wrong bits"))
    return rows


def verify_delivered(run: Path, model_dir: Path | None = None, reveal_files: Sequence[Path] = (),
                     ) -> tuple[VerifyReport, list[dict[str, Any]]]:
    """What ``clicooper verify RUN [--model DIR] [--reveal FILE…]`` checks: the ledger against the
    presented segments, pinned to the keys of ``RUN/keys``, plus each reveal file. Returns the report
    (key notes included) and the reveal rows; never writes."""
    ledger = ledger_path(run)
    segments = load_segments(run, model_dir)
    keys, key_notes = trusted_keys(run)
    report = verify_run(ledger, segments, trusted_keys=keys or None)
    report.notes += key_notes
    reveals = check_reveal_files(report, reveal_files, ledger, segments)
    return report, reveals


def verify_exit_code(report: VerifyReport) -> int:
    """Exit status of ``clicooper verify`` for ``report``: 0 iff every check holds, else 1."""
    return 0 if report.ok else 1


__all__ = ["check_reveal_files", "final_retained_stages", "ledger_path", "load_segments", "party_record",
           "read_reveal_file", "trusted_keys", "verify_delivered", "verify_exit_code"]
