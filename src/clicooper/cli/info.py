"""``clicooper models``, ``clicooper fields`` and ``clicooper --version``: what a new user asks before training
anything."""

from __future__ import annotations

import typer
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

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


@guarded
def fields(
    as_json: bool = typer.Option(False, "--json", help="print one JSON object as the last stdout line"),
) -> None:
    """List every run-config key (what --set KEY=VALUE and --config files take) and every defence setting
    (what --with KIND:key=value takes), with types, defaults and descriptions, read from the config itself."""
    from dataclasses import asdict

    from clicooper.config.keys import config_keys, defense_keys

    keys, specs = config_keys(), defense_keys()
    if as_json:
        emit_json({"fields": [asdict(k) for k in keys], "defenses": [asdict(k) for k in specs]})
        return
    for title, rows in (("run config: --set KEY=VALUE, or KEY = VALUE in a --config run.toml", keys),
                        ("defences: --with KIND:key=value,…, or a [[defenses]] table with kind = KIND (the older "
                         "--set dp.KEY / labels.KEY reach the same settings)", specs)):
        out.print(Text(title, style="bold"))
        for k in rows:  # a list, not a table: the descriptions stay readable at any terminal width
            out.print(Padding(Text.assemble((k.key, "bold"), f": {k.type} = {k.default}"), (0, 0, 0, 2), expand=False))
            if k.description:
                out.print(Padding(Text(k.description), (0, 0, 0, 6), expand=False))
