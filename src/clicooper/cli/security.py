"""``clicooper audit``: re-execute sampled stages of a trainer from the ledger and its logs (issue 15).

Thin over :func:`clicooper.core.audit.audit_run` (docs/malicious.md). The library imports torch, so it is
imported inside the command ("lazy: torch").
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from clicooper.cli.common import emit_json, err, guarded, out
from clicooper.errors import LedgerError


def _stages(spec: str | None) -> list[tuple[int, int]] | None:
    if not spec:
        return None
    try:
        return [(int(r), int(p)) for r, p in (part.strip().split(":") for part in spec.split(","))]
    except ValueError as e:
        raise LedgerError(f"bad --stages {spec!r}: use ROUND:POSITION[,…], e.g. 0:1,1:1") from e


@guarded
def audit(
    run: Path = typer.Argument(..., help="run directory (trained with audit.enabled)"),
    party: str = typer.Option(..., "--party", help="the trainer to audit (T1 … TK)"),
    stages: str = typer.Option(None, "--stages", help="ROUND:POSITION,… (default: every stage of the party)"),
    fraction: float = typer.Option(0.1, "--fraction", help="share of each stage's checkpoint intervals replayed"),
    seed: int = typer.Option(0, "--seed", help="the auditor's draw of the intervals (chosen after the run)"),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="relative L2 error allowed (other hardware)"),
    key: Path = typer.Option(None, "--key", help="the party's key file, for its watermark marks (default "
                                                  "RUN/keys/<party>.key when present)"),
    reveal: Path = typer.Option(None, "--reveal", help="a reveal file of the audited (and retained) stages instead "
                                                        "of the key"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object as the last stdout line"),
) -> None:
    """Replay sampled steps of a trainer; exit 0 iff every audited stage is reproduced."""
    from clicooper import jsonbound
    from clicooper.core.audit import audit_run, keys_from_identity, keys_from_reveal  # lazy: torch
    from clicooper.provenance.identity import load_identity

    keys = None
    if reveal is not None:
        try:
            obj = jsonbound.load_file(reveal)
        except (OSError, ValueError) as e:
            raise LedgerError(f"cannot read reveal file {reveal}: {e}") from None
        keys = keys_from_reveal(obj)
    else:
        kf = key or Path(run) / "keys" / f"{party}.key"
        if kf.is_file():
            keys = keys_from_identity(load_identity(kf), run)
    report = audit_run(run, party, stages=_stages(stages), fraction=fraction, seed=seed, tol=tolerance, keys=keys)
    if as_json:
        emit_json(report.to_json())
    else:
        t = Table(title=f"audit of {party} (fraction {fraction:g}, tolerance {tolerance:g})")
        for c in ("stage", "intervals replayed", "worst message error", "verdict"):
            t.add_column(c)
        for s in report.stages:
            worst = max((i.get("max_message_error", 0.0) for i in s.intervals), default=0.0)
            t.add_row(f"({s.round}, {s.position})", f"{len(s.intervals)}/{s.checks.get('intervals_total', '?')}",
                      f"{worst:.2e}", "[green]pass[/]" if s.ok else "[red]FAIL[/]")
        out.print(t)
        for s in report.stages:
            for f in s.failures:
                err.print(f"[red]FAIL[/] stage ({s.round}, {s.position}): {escape(f)}", highlight=False)
        out.print(f"{'OK' if report.ok else 'FAILED'}: {len(report.stages)} stage(s), {report.seconds:.1f} s")
    if not report.ok:
        raise typer.Exit(1)
