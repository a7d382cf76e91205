"""What a run directory delivers, read back for checking (docs/design/ledger.md): the segments by position, the
parties' trusted public keys, the stages a party expects marked in the final weights, and the verify
verdict of ``clicooper verify`` with its exit status.

Library code (the removal and forgery attacks, the research scripts) and the CLI both use these; nothing
here imports the CLI.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from clicooper import jsonbound, rundir
from clicooper.errors import ConfigError, KeyFileError, LedgerError, RunDirError
from clicooper.provenance.bindings import run_bindings
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


_PLAN_PARTY = re.compile(r"^(DO:head|DO:tail|T[1-9][0-9]*)$")
_PUB_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


def plan_files(run: Path) -> dict[int, str]:
    """Position → file name in ``model/``, from ``plan.json``'s ``parties[].party`` and ``parties[].position``
    (the only fields verify reads: docs/ledger-format.md §10); :class:`RunDirError` when they are unusable."""
    path = Path(run) / rundir.PLAN
    obj = rundir.read_json(path)
    parties = obj.get("parties") if isinstance(obj, dict) else None
    if not isinstance(parties, list):
        raise RunDirError(f"{path} has no list 'parties': it is not a run's partition plan")
    out: dict[int, str] = {}
    for i, pp in enumerate(parties):
        party = pp.get("party") if isinstance(pp, dict) else None
        pos = pp.get("position") if isinstance(pp, dict) else None
        if not isinstance(party, str) or not _PLAN_PARTY.match(party) or type(pos) is not int or pos < 0 \
                or pos in out:
            raise RunDirError(f"{path}: parties[{i}] must have a 'party' (DO:head, T<i>, DO:tail) and a "
                              "'position' (an integer ≥ 0, each once)")
        out[pos] = model_file(party)
    return out


def load_segments(run: Path, model_dir: Path | None = None, *, positions: list[int] | None = None,
                  ) -> dict[int, dict[str, torch.Tensor]]:
    """Segments ``{position: state dict}`` from ``RUN/model`` (or ``model_dir``), mapped by ``plan.json``."""
    d = Path(model_dir) if model_dir is not None else Path(run) / rundir.MODEL_DIR
    out = {}
    for pos, name in sorted(plan_files(run).items()):
        if positions is not None and pos not in positions:
            continue
        f = d / name
        if not f.is_file():
            raise RunDirError(f"{f} is missing: expected the weights of position {pos}")
        out[pos] = rundir.load_tensors(f)[0]
    return out


def present_segments(run: Path, model_dir: Path | None, files: dict[int, str],
                     ) -> tuple[dict[int, dict[str, torch.Tensor]], dict[int, str]]:
    """The presented segments, and why each absent or unreadable one is missing (position → reason)."""
    d = Path(model_dir) if model_dir is not None else Path(run) / rundir.MODEL_DIR
    segments, missing = {}, {}
    for pos, name in sorted(files.items()):
        try:
            segments[pos] = rundir.load_tensors(d / name)[0]
        except RunDirError as e:
            missing[pos] = str(e)
    return segments, missing


def trusted_keys(run: Path) -> tuple[dict[str, bytes], list[str]]:
    """Public keys known for the run: ``RUN/keys/<name>.pub`` (64 hex digits, surrounding whitespace
    ignored) or, when there is none, ``<name>.key`` (an unencrypted PKCS#8 PEM Ed25519 private key)."""
    keys: dict[str, bytes] = {}
    notes: list[str] = []
    d = Path(run) / rundir.KEYS
    if not d.is_dir():
        return keys, [f"no {d}: genesis keys are not pinned to trusted keys"]
    for f in sorted(d.iterdir()):
        if f.suffix == ".pub":
            try:
                text = jsonbound.read_bytes(f, 4096).decode("ascii").strip()  # a .pub is 65 bytes
            except (OSError, ValueError):
                text = ""
            if _PUB_HEX.match(text):
                keys[f.stem] = bytes.fromhex(text)
            else:
                notes.append(f"{f} is not 64 hex digits (a raw Ed25519 public key); ignored")
    for f in sorted(d.iterdir()):
        if f.suffix == ".key" and f.stem not in keys:
            try:
                keys[f.stem] = load_identity(f).public_key
            except KeyFileError as e:
                notes.append(f"{f}: {e}; not used as a trusted key")
    return keys, notes


_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
#: a trusted-keys file names a few parties: anything larger is not one
MAX_TRUSTED_KEYS_BYTES = 1 << 20


def read_trusted_keys(path: Path) -> dict[str, bytes]:
    """A trusted-keys file (docs/ledger-format.md §3.3): one JSON object, party name → its raw Ed25519
    public key as 64 hex digits, e.g. ``{"DO": "3b6a…", "T1": "8f1c…"}``, taken from the parties themselves.
    :class:`ConfigError` (naming the file and what to fix) for anything else."""
    try:
        obj = jsonbound.load_file(path, max_bytes=MAX_TRUSTED_KEYS_BYTES)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--trusted-keys {path}: cannot be read as JSON ({e}); give a JSON object of party "
                          'name → public key hex, e.g. {"T1": "<64 hex digits>"}') from None
    if not isinstance(obj, dict) or not obj:
        raise ConfigError(f"--trusted-keys {path}: must be a non-empty JSON object of party name → public key "
                          "hex (64 digits, the party's `clicooper certs --party NAME` prints it)")
    keys: dict[str, bytes] = {}
    for name, value in obj.items():
        if not _NAME.match(name) or not isinstance(value, str) or not _PUB_HEX.match(value.strip()):
            raise ConfigError(f"--trusted-keys {path}: entry {name!r} must map a party name (letters, digits, "
                              "'_', '.', '-') to its public key as 64 hex digits")
        keys[name] = bytes.fromhex(value.strip())
    return keys


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
        return jsonbound.load_file(Path(f))
    except (OSError, ValueError) as e:
        raise LedgerError(f"cannot read reveal file {f}: {e}") from e


def check_reveal_files(report: VerifyReport, files: Sequence[Path], ledger: Path,
                       segments: dict[int, dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
    """Check each reveal file against ``segments``; an unreadable file, a bad stage or one with wrong bits
    becomes a ``reveal`` failure of ``report`` (consequential when the ledger or segments failed already).
    Returns one JSON row per revealed stage."""
    rows = []
    after = bool(report.failures)
    for f in files:
        try:
            checks = check_reveal(read_reveal_file(f), ledger, segments)
        except LedgerError as e:
            report.failures.append(Issue(None, "reveal", f"{f}: {e}", after))
            continue
        for sc in checks:
            rows.append({"file": str(f), **sc.to_json()})
            if not sc.ok:
                report.failures.append(Issue(None, "reveal", f"{f}: stage ({sc.round}, {sc.position}): "
                                                             f"{sc.reason}", after))
            elif sc.errors:
                report.failures.append(Issue(None, "reveal", f"{f}: stage ({sc.round}, {sc.position}) has "
                                                             f"{sc.errors}/{sc.n_bits} wrong bits", after))
    return rows


def verify_delivered(run: Path, model_dir: Path | None = None, reveal_files: Sequence[Path] = (),
                     trusted_keys_file: Path | None = None) -> tuple[VerifyReport, list[dict[str, Any]]]:
    """What ``clicooper verify RUN [--model DIR] [--reveal FILE…]`` checks (docs/ledger-format.md §11): the
    ledger, pinned to the keys of ``RUN/keys``, with the files the genesis binds (config.json, the model it
    describes); every position's presented segment; each reveal file. With ``trusted_keys_file`` (see
    :func:`read_trusted_keys`) the genesis is pinned to the keys it names instead of ``RUN/keys``, which
    are only as trustworthy as whoever handed the directory over. Returns the report (notes included) and
    the reveal rows; never writes. Raises (:class:`RunDirError`, :class:`LedgerError`,
    :class:`ConfigError` for a bad trusted-keys file) only when there is nothing to verify against."""
    ledger = ledger_path(run)
    if trusted_keys_file is not None:
        keys = read_trusted_keys(trusted_keys_file)
        notes = [f"genesis keys pinned to {trusted_keys_file} ({', '.join(sorted(keys))}); RUN/keys not used"]
    else:
        keys, notes = trusted_keys(run)
    bindings = run_bindings(run, notes)
    plan_issue = None
    segments: dict[int, dict[str, torch.Tensor]] = {}
    missing: dict[int, str] | None = None
    try:
        segments, missing = present_segments(run, model_dir, plan_files(run))
    except RunDirError as e:
        plan_issue = Issue(None, "plan", f"{e}: the presented segments cannot be mapped to positions")
    report = verify_run(ledger, segments if missing is not None else None, trusted_keys=keys or None,
                        bindings=bindings, missing=missing)
    if plan_issue is not None:
        report.failures.append(plan_issue)
    report.notes += notes
    if keys:
        unpinned = sorted(c.name for c in report.credit.values() if c.name not in keys)
        if unpinned:
            report.notes.append(f"no trusted key for {', '.join(unpinned)}: their genesis keys are not pinned")
    reveals = check_reveal_files(report, reveal_files, ledger, segments)
    return report, reveals


def error_verdict(error: BaseException, exit_code: int) -> dict[str, Any]:
    """The JSON verdict of a ``verify`` that could not run (no ledger, unreadable run directory, …): the
    keys of :meth:`VerifyReport.to_json`, not ok, the error as its cause (check ``error``)."""
    cause = Issue(None, "error", str(error) or type(error).__name__)
    report = VerifyReport(run_id=None, failures=[cause])
    return report.to_json() | {"reveals": [], "error": cause.message, "exit_code": exit_code}


def verify_exit_code(report: VerifyReport) -> int:
    """Exit status of ``clicooper verify`` for ``report``: 0 iff every check holds, else 1."""
    return 0 if report.ok else 1


__all__ = ["check_reveal_files", "final_retained_stages", "ledger_path", "load_segments", "party_record",
           "error_verdict", "plan_files", "present_segments", "read_reveal_file", "read_trusted_keys", "trusted_keys", "verify_delivered",
           "verify_exit_code"]
