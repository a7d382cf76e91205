"""Provenance commands of the ``clicooper`` CLI: ``keygen``, ``verify``, ``reveal``, ``prove`` (DESIGN §5).

``register(app)`` adds them to the typer app of :mod:`clicooper.cli`. Each is thin over
:mod:`clicooper.provenance`. ``verify`` and ``prove`` need no secret and never modify the run directory;
``reveal`` reads the party's key file (``RUN/keys/<party>.key`` unless ``--key`` says otherwise).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from clicooper.errors import KeyFileError, LedgerError, RunDirError

# stage selection ---------------------------------------------------------------------------------------


def _passphrase(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text("utf-8").rstrip("\r\n")
    except OSError as e:
        raise KeyFileError(f"cannot read passphrase file {path}: {e}") from e


def _ledger_path(run: Path) -> Path:
    from clicooper import rundir

    p = Path(run) / rundir.LEDGER
    if not p.is_file():
        raise RunDirError(f"{p} not found: was the run trained with provenance on?")
    return p


def _plan(run: Path) -> Any:
    from clicooper import rundir
    from clicooper.models.partition import Plan

    return Plan.from_dict(rundir.read_json(Path(run) / rundir.PLAN))


def load_segments(run: Path, model_dir: Path | None = None, *, positions: list[int] | None = None,
                  ) -> dict[int, dict[str, Any]]:
    """Segments ``{position: state dict}`` from ``RUN/model`` (or ``model_dir``), mapped by ``plan.json``."""
    from clicooper import rundir
    from clicooper.runs import model_file

    d = Path(model_dir) if model_dir is not None else Path(run) / rundir.MODEL_DIR
    out = {}
    for pp in _plan(run).parties:
        if positions is not None and pp.position not in positions:
            continue
        f = d / model_file(pp.party)
        if not f.is_file():
            raise RunDirError(f"{f} is missing: expected the weights of {pp.party} (position {pp.position})")
        out[pp.position] = rundir.load_tensors(f)[0]
    return out


def trusted_keys(run: Path) -> tuple[dict[str, bytes], list[str]]:
    """Public keys known for the run: ``RUN/keys/<name>.key`` (unencrypted) or ``<name>.pub`` (hex)."""
    from clicooper import rundir
    from clicooper.provenance.identity import load_identity

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


def parse_stages(spec: str, ledger: Path, party: str) -> list[tuple[int, int]]:
    """``all`` (every watermarked stage of ``party``) or ``r:p,r:p,…``."""
    from clicooper.provenance.entries import StageEntry
    from clicooper.provenance.ledger import read_ledger

    if spec.strip() == "all":
        entries, _ = read_ledger(ledger)
        g = entries[0]
        rec = next((p for p in g.parties if p.name == party), None)  # type: ignore[union-attr]
        if rec is None:
            raise LedgerError(f"party {party} is not in the run's genesis")
        return [e.stage for e in entries if isinstance(e, StageEntry) and e.party_id == rec.party_id
                and e.key_commitment is not None]
    out = []
    for part in spec.split(","):
        try:
            r, p = part.strip().split(":")
            out.append((int(r), int(p)))
        except ValueError as e:
            raise LedgerError(f"bad stage {part!r}: use ROUND:POSITION, e.g. 1:2, or 'all'") from e
    return out


def final_retained_stages(ledger: Path, party: str) -> list[tuple[int, int]]:
    """The stages whose marks ``party`` expects in the final weights: for each of its positions, the
    retained rounds of its last watermarked entry."""
    from clicooper.provenance.entries import StageEntry
    from clicooper.provenance.ledger import read_ledger

    entries, _ = read_ledger(ledger)
    rec = next((p for p in entries[0].parties if p.name == party), None)  # type: ignore[union-attr]
    if rec is None:
        raise LedgerError(f"party {party} is not in the run's genesis")
    last: dict[int, StageEntry] = {}
    for e in entries:
        if isinstance(e, StageEntry) and e.party_id == rec.party_id and e.watermark is not None:
            last[e.position] = e
    return [(r, p) for p, e in sorted(last.items()) for r in e.watermark["retained_rounds"]]  # type: ignore[index]


def credit_table(report: Any) -> Table:
    """Rich table of a verify report's credit."""
    t = Table(title=f"credit (run {str(report.run_id)[:16]}…)")
    for c in ("party", "party id", "stages committed", "stages verified", "samples", "fwd+bwd FLOPs"):
        t.add_column(c, overflow="fold")
    for c in report.credit.values():
        t.add_row(c.name, c.party_id[:16], str(c.stages_committed), str(c.stages_verified), f"{c.samples:,}",
                  f"{c.flops:,}")
    return t


# commands ------------------------------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    """Add ``keygen``, ``verify``, ``reveal`` and ``prove`` to ``app`` (idempotent)."""
    if getattr(app, "_clicooper_provenance_registered", False):
        return
    app._clicooper_provenance_registered = True  # type: ignore[attr-defined]
    from clicooper.cli import emit_json, err, guarded, out

    @app.command()
    @guarded
    def keygen(
        out_path: Path = typer.Option(..., "--out", help="key file to create (mode 0600, never overwritten)"),
        passphrase_file: Path = typer.Option(None, "--passphrase-file", help="encrypt the key with this passphrase"),
        as_json: bool = typer.Option(False, "--json", help="print one JSON object as the last stdout line"),
    ) -> None:
        """Create an Ed25519 party identity; prints its party id and public key."""
        from clicooper.provenance.identity import Identity

        ident = Identity.generate()
        ident.save(out_path, _passphrase(passphrase_file))
        res = {"key_file": str(out_path), "party_id": ident.party_id, "public_key": ident.public_key.hex()}
        if as_json:
            emit_json(res)
        else:
            out.print(f"party id {res['party_id']}\npublic key {res['public_key']}\nkey file {out_path}")

    @app.command()
    @guarded
    def verify(
        run: Path = typer.Argument(..., help="run directory"),
        model: Path = typer.Option(None, "--model", help="folder of presented segments (default RUN/model)"),
        reveal: list[Path] = typer.Option(None, "--reveal", help="reveal file(s) to check against the segments"),
        as_json: bool = typer.Option(False, "--json", help="print one JSON object as the last stdout line"),
    ) -> None:
        """Check a run's ledger and segments (signatures, chain, transcripts, commitments). Exit 0 iff all hold."""
        from clicooper.provenance.ledger import Issue
        from clicooper.provenance.reveal import check_reveal
        from clicooper.provenance.verify import verify_run

        t0 = time.perf_counter()
        ledger = _ledger_path(run)
        segments = load_segments(run, model)
        keys, key_notes = trusted_keys(run)
        report = verify_run(ledger, segments, trusted_keys=keys or None)
        report.notes += key_notes
        reveals = []
        for f in reveal or []:
            try:
                obj = json.loads(Path(f).read_text("utf-8"))
            except (OSError, ValueError) as e:
                raise LedgerError(f"cannot read reveal file {f}: {e}") from e
            for sc in check_reveal(obj, ledger, segments):
                reveals.append({"file": str(f), **sc.to_json()})
                if not sc.ok:
                    report.failures.append(Issue(None, "reveal", f"{f}: stage ({sc.round}, {sc.position}): {sc.reason}"))
                elif sc.errors:
                    report.failures.append(Issue(None, "reveal", f"{f}: stage ({sc.round}, {sc.position}) has "
                                                                 f"{sc.errors}/{sc.n_bits} wrong bits"))
        secs = time.perf_counter() - t0
        if as_json:
            emit_json(report.to_json() | {"reveals": reveals, "seconds": secs})
        else:
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
                for f in report.failures:
                    err.print(f"[red]FAIL[/] {escape(str(f))}", highlight=False, soft_wrap=True)
        if not report.ok:
            raise typer.Exit(1)

    @app.command("reveal")
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
        from clicooper import rundir
        from clicooper.provenance.identity import load_identity
        from clicooper.provenance.reveal import make_reveal

        ledger = _ledger_path(run)
        ident = load_identity(key or Path(run) / rundir.KEYS / f"{party}.key", _passphrase(passphrase_file))
        chosen = parse_stages(stages, ledger, party)
        if not chosen:
            raise LedgerError(f"{party} has no watermarked stage to reveal")
        obj = make_reveal(ident, ledger, chosen)
        rundir.atomic_write_bytes(out_path, (json.dumps(obj, indent=2) + "\n").encode())
        err.print(f"revealed {len(chosen)} stage(s) of {party} → {out_path}")

    @app.command()
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
        from clicooper import rundir
        from clicooper.provenance import make_reveal
        from clicooper.provenance import prove as prove_fn
        from clicooper.provenance.identity import load_identity

        ledger = _ledger_path(run)
        if reveal:
            from clicooper.provenance.ledger import read_ledger

            entries, _ = read_ledger(ledger)
            rec = next((p for p in entries[0].parties if p.name == party), None)  # type: ignore[union-attr]
            if rec is None:
                raise LedgerError(f"party {party} is not in the run's genesis")
            reveals = []
            for f in reveal:
                try:
                    obj = json.loads(Path(f).read_text("utf-8"))
                except (OSError, ValueError) as e:
                    raise LedgerError(f"cannot read reveal file {f}: {e}") from e
                if not isinstance(obj, dict) or obj.get("party_id") != rec.party_id:
                    raise LedgerError(f"reveal file {f} is not {party}'s (party id {rec.party_id})")
                reveals.append(obj)
        else:
            chosen = final_retained_stages(ledger, party)
            if not chosen:
                raise LedgerError(f"{party} has no watermarked stage")
            reveals = [make_reveal(load_identity(Path(run) / rundir.KEYS / f"{party}.key"), ledger, chosen)]
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
