"""``clicooper models`` and ``clicooper --version``: what a new user asks before training anything."""

from __future__ import annotations

import typer
from rich.table import Table

from clicooper.cli.common import emit_json, guarded, out


def version_callback(value: bool) -> None:
    """``--version``: print the installed version and stop (eager: before any command runs)."""
    if value:
        from clicooper import __version__

        out.print(f"clicooper {__version__}", highlight=False)
        raise typer.Exit(0)


@guarded
def models(
    as_json: bool = typer.Option(False, "--json", help="print one JSON object as the last stdout line"),
) -> None:
    """List the built-in models (the names --model takes), one line each; --model-file takes your own."""
    from clicooper.models import zoo  # lazy: torch

    rows = [(name, zoo.describe(name), zoo.spec_of(name) is not None) for name in zoo.names()]
    if as_json:
        emit_json({"models": [{"name": n, "description": d, "spec": s} for n, d, s in rows]})
        return
    t = Table(title="built-in models (--model NAME)", show_lines=False)
    t.add_column("name", no_wrap=True, style="bold")
    t.add_column("layers: DO head | trainers … | DO tail (where the plan puts them)")
    for n, d, _ in rows:
        t.add_row(n, d)
    t.caption = ("`clicooper plan --model NAME` shows a model's split and FLOP shares; "
                 "--model-file FILE trains your own layers (docs/reference/cli.md 'Your own model')")
    out.print(t)
