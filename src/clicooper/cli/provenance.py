"""Provenance commands: ``clicooper keygen``, ``verify``, ``reveal``, ``prove`` (docs/design/ledger.md).

Each is thin over :mod:`clicooper.provenance` (what a run delivers: :mod:`clicooper.provenance.delivered`).
``verify`` and ``prove`` need no secret and never modify the run directory; ``reveal`` reads the party's
key file (``RUN/keys/<party>.key`` unless ``--key`` says otherwise). The provenance library imports torch
(≈2–3 s), so it is imported inside the commands ("lazy: torch"), keeping ``clicooper --help`` fast.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from clicooper.cli.common import emit_json, err, guarded, out
from clicooper.errors import CliCooperError, ConfigError, KeyFileError, LedgerError


def _passphrase(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text("utf-8").rstrip("\r\n")
    except OSError as e:
        raise KeyFileError(f"cannot read passphrase file {path}: {e}") from e


def parse_stages(spec: str, ledger: Path, party: str) -> list[tuple[int, int]]:
    """``all`` (every watermarked stage of ``party``) or ``r:p,r:p,…``."""
    from clicooper.provenance.delivered import party_record  # lazy: torch, with the two below
    from clicooper.provenance.entries import StageEntry
    from clicooper.provenance.ledger import read_ledger

    if spec.strip() == "all":
        entries, _ = read_ledger(ledger)
        rec = party_record(entries, party)
        return [e.stage for e in entries if isinstance(e, StageEntry) and e.party_id == rec.party_id
                and e.key_commitment is not None]
    stages = []
    for part in spec.split(","):
        try:
            r, p = part.strip().split(":")
            stages.append((int(r), int(p)))
        except ValueError as e:
            raise LedgerError(f"bad stage {part!r}: use ROUND:POSITION, e.g. 1:2, or 'all'") from e
    return stages


def credit_table(report: Any) -> Table:
    """Rich table of a verify report's credit."""
    t = Table(title=f"credit (run {str(report.run_id)[:16]}…)")
    for c in ("party", "party id", "stages committed", "stages verified", "samples", "fwd+bwd FLOPs"):
        t.add_column(c, overflow="fold")
    for c in report.credit.values():
        t.add_row(c.name, c.party_id[:16], str(c.stages_committed), str(c.stages_verified), f"{c.samples:,}",
                  f"{c.flops:,}")
    return t


@guarded
def keygen(
    out_path: Path = typer.Option(..., "--out", help="key file to create (mode 0600, never overwritten)"),
    passphrase_file: Path = typer.Option(None, "--passphrase-file", help="encrypt the key with this passphrase"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object as the last stdout line"),
) -> None:
    """Create an Ed25519 party identity; prints its party id and public key."""
    from clicooper.provenance.identity import Identity  # lazy: torch

    ident = Identity.generate()
    ident.save(out_path, _passphrase(passphrase_file))
    res = {"key_file": str(out_path), "party_id": ident.party_id, "public_key": ident.public_key.hex()}
    if as_json:
        emit_json(res)
    else:
        out.print(f"party id {res['party_id']}\npublic key {res['public_key']}\nkey file {out_path}")


def _print_verify(report: Any, reveals: list[dict[str, Any]], secs: float) -> None:
    """The human form of a verify report: notes, reveal rows, credit table, then OK or each failure."""
    for n in report.notes:
        err.print(f"note: {escape(n)}", highlight=False)
    for r in reveals:
        out.print(f"reveal stage ({r['round']}, {r['position']}): {'ok' if r['ok'] else escape(r['reason'])}"
                  f", BER {r['ber']}", highlight=False)
    out.print(credit_table(report))
    if report.ok:
        out.print(f"[green]OK[/]: {report.rounds_completed} rounds, ledger closed, segments match "
                  f"({secs:.2f} s)")
    else:
        err.print(f"[red]FAIL[/] first cause: {escape(str(report.cause))}", highlight=False, soft_wrap=True)
        for f in report.failures[1:]:
            err.print(f"[red]FAIL[/] {escape(str(f))}", highlight=False, soft_wrap=True)


def emit_usage_verdict(message: str, exit_code: int) -> None:
    """The JSON verdict of ``verify --json`` called wrongly (an unknown option, a missing argument)."""
    from clicooper.errors import ConfigError
    from clicooper.provenance.delivered import error_verdict  # lazy: torch

    emit_json(error_verdict(ConfigError(f"usage: {message}"), exit_code) | {"seconds": 0.0})


@guarded
def verify(
    run: Path = typer.Argument(..., help="run directory"),
    model: Path = typer.Option(None, "--model", help="folder of presented segments (default RUN/model)"),
    reveal: list[Path] = typer.Option(None, "--reveal", help="reveal file(s) to check against the segments: "
                                      "--reveal A.json B.json, or --reveal repeated"),
    more: list[Path] = typer.Argument(None, metavar="[FILE]...", help="further reveal files after --reveal"),
    trusted_keys: Path = typer.Option(None, "--trusted-keys", help="JSON file of party name → public key hex, "
                                      "known out of band (from each party's `clicooper certs --party`); pins "
                                      "the genesis keys instead of RUN/keys"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object as the last stdout line"),
) -> None:
    """Check a run's ledger, bound files and segments (docs/ledger-format.md §11). Exit 0 iff all hold."""
    from clicooper.provenance.delivered import (  # lazy: torch
        error_verdict,
        verify_delivered,
        verify_exit_code,
    )

    t0 = time.perf_counter()
    try:
        if more and not reveal:
            raise ConfigError(f"unexpected argument {more[0]}: verify takes one run directory; reveal files follow "
                              "--reveal")
        report, reveals = verify_delivered(run, model, [*(reveal or []), *(more or [])], trusted_keys)
    except (KeyboardInterrupt, Exception) as e:  # a verdict on every path, even a bug's
        if not as_json:
            raise
        code = 130 if isinstance(e, KeyboardInterrupt) else getattr(e, "exit_code", 2)
        if not isinstance(e, (CliCooperError, KeyboardInterrupt)):
            err.print(f"[bold red]error:[/] verify failed unexpectedly ({type(e).__name__}: {e}); please report it",
                      highlight=False, soft_wrap=True)
        emit_json(error_verdict(e, code) | {"seconds": time.perf_counter() - t0})
        raise typer.Exit(code) from None
    secs = time.perf_counter() - t0
    if as_json:
        emit_json(report.to_json() | {"reveals": reveals, "seconds": secs})
    else:
        _print_verify(report, reveals, secs)
    code = verify_exit_code(report)
    if code:
        raise typer.Exit(code)


@guarded
def reveal_cmd(
    run: Path = typer.Argument(..., help="run directory"),
    party: str = typer.Option(..., "--party", help="party name (DO, T1, …)"),
    stages: str = typer.Option("all", "--stages", help="all | ROUND:POSITION,…"),
    out_path: Path = typer.Option(..., "--out", help="reveal file to write (JSON)"),
    key: Path = typer.Option(None, "--key", help="the party's key file (default RUN/keys/<party>.key)"),
    passphrase_file: Path = typer.Option(None, "--passphrase-file"),
) -> None:
    """Publish a party's watermark signatures for chosen stages (anyone can then check and measure them)."""
    from clicooper import rundir  # lazy: torch, with the three below
    from clicooper.provenance.delivered import ledger_path
    from clicooper.provenance.identity import load_identity
    from clicooper.provenance.reveal import make_reveal

    ledger = ledger_path(run)
    ident = load_identity(key or Path(run) / rundir.KEYS / f"{party}.key", _passphrase(passphrase_file))
    chosen = parse_stages(stages, ledger, party)
    if not chosen:
        raise LedgerError(f"{party} has no watermarked stage to reveal")
    obj = make_reveal(ident, ledger, chosen)
    rundir.atomic_write_bytes(out_path, (json.dumps(obj, indent=2) + "\n").encode())
    err.print(f"revealed {len(chosen)} stage(s) of {party} → {out_path}")


def _party_reveals(run: Path, ledger: Path, party: str, files: list[Path] | None) -> list[dict[str, Any]]:
    """The reveals ``prove`` pools: the given files (each must be ``party``'s), or by default a fresh
    reveal of the party's final retained stages made with ``RUN/keys/<party>.key``."""
    from clicooper import rundir  # lazy: torch, with the three below
    from clicooper.provenance import make_reveal
    from clicooper.provenance.delivered import final_retained_stages, party_record, read_reveal_file
    from clicooper.provenance.identity import load_identity
    from clicooper.provenance.ledger import read_ledger

    if files:
        entries, _ = read_ledger(ledger)
        rec = party_record(entries, party)
        reveals = []
        for f in files:
            obj = read_reveal_file(f)
            if not isinstance(obj, dict) or obj.get("party_id") != rec.party_id:
                raise LedgerError(f"reveal file {f} is not {party}'s (party id {rec.party_id})")
            reveals.append(obj)
        return reveals
    chosen = final_retained_stages(ledger, party)
    if not chosen:
        raise LedgerError(f"{party} has no watermarked stage")
    return [make_reveal(load_identity(Path(run) / rundir.KEYS / f"{party}.key"), ledger, chosen)]


@guarded
def prove(
    run: Path = typer.Argument(..., help="run directory (ledger + committed segments)"),
    party: str = typer.Option(..., "--party", help="party claiming ownership"),
    model: Path = typer.Option(..., "--model", help="folder of the suspect model's segment files"),
    reveal: list[Path] = typer.Option(None, "--reveal", help="reveal file(s); default: reveal the final "
                                                              "retained stages with RUN/keys/<party>.key"),
    no_align: bool = typer.Option(False, "--no-align", help="read the suspect as presented"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object as the last stdout line"),
) -> None:
    """Pooled ownership test of a suspect model against the party's marks: τ, probability, BER, verdict."""
    from clicooper.provenance import prove as prove_fn  # lazy: torch
    from clicooper.provenance.delivered import ledger_path, load_segments

    ledger = ledger_path(run)
    reveals = _party_reveals(run, ledger, party, reveal)
    positions = sorted({int(s["position"]) for r in reveals for s in r.get("stages", [])})
    suspect = load_segments(run, model, positions=positions)
    reference = load_segments(run, None, positions=positions)
    rep = prove_fn(reveals, ledger, suspect, reference=reference, align=not no_align)
    if as_json:
        emit_json(rep.to_json())
    else:
        for n in rep.notes:
            err.print(f"note: {escape(n)}", highlight=False)
        out.print(rep.summary(), highlight=False)
    if not rep.verdict:
        raise typer.Exit(1)
