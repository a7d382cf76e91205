"""The ``clicooper`` typer app. Every command is registered here, explicitly, in ``--help`` order; the
command modules (:mod:`clicooper.cli.train`, ``attacks``, ``net``, ``provenance``) never import this one."""

from __future__ import annotations

import os
import sys

import typer
from typer import rich_utils

from clicooper.cli import attacks, info, net, provenance, security, train
from clicooper.cli.common import _show, emit_json, err
from clicooper.cli.helpfmt import Command

#: --help wider than rich's 80-column default when it is not shown on a terminal (a pipe, a file, a pager),
#: so that option help is not cut mid-word; on a terminal rich reads its real width.
HELP_WIDTH = 120
if rich_utils.MAX_WIDTH is None and not os.environ.get("COLUMNS") and not sys.stdout.isatty():
    rich_utils.MAX_WIDTH = HELP_WIDTH


app = typer.Typer(add_completion=False, no_args_is_help=True, help="CliCooper: cooperative split learning.")



@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=info.version_callback, is_eager=True,
                                 help="print the installed version and exit"),
) -> None:
    """CliCooper: cooperative split learning."""


app.command("train", epilog=train.presets_epilog(), cls=Command)(train.train)
app.command("evaluate", cls=Command)(train.evaluate)
app.command("predict", cls=Command)(train.predict)
app.command("plan", cls=Command)(train.plan)
app.command("models", cls=Command)(info.models)
app.command("fields", cls=Command)(info.fields)
app.command("export", cls=Command)(train.export)
app.command("keygen", cls=Command)(provenance.keygen)
app.command("verify", cls=Command)(provenance.verify)
app.command("reveal", cls=Command)(provenance.reveal_cmd)
app.command("prove", cls=Command)(provenance.prove)
app.command("audit", cls=Command)(security.audit)
app.command("attack", cls=Command)(attacks.attack)
app.command("report", cls=Command)(attacks.report)
app.command("node", cls=Command)(net.node)
app.command("certs", cls=Command)(net.certs)
app.command("launch", cls=Command)(net.launch)
observations = typer.Typer(no_args_is_help=True, help="What trainers received, for `clicooper report`.")
observations.command("import", cls=Command)(net.observations_import)
app.add_typer(observations, name="observations")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point. With ``--json`` anywhere on the line, an error found while parsing the
    line (an unknown option, a bad value) is also printed as one JSON object on stdout, as the commands' own
    errors are (:func:`clicooper.cli.common.guarded`); the exit status is the same. ``verify --json`` prints
    its own verdict object instead, on every exit path."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["verify"] and "--json" in args:  # a verdict on every exit path, a usage error's included
        try:
            code = app(args=args, standalone_mode=False)
        except typer.Abort:
            sys.exit(1)
        except typer.TyperException as e:  # a usage error (typer's own click): its message, then the verdict
            code = int(getattr(e, "exit_code", 2))
            e.show()  # type: ignore[attr-defined]
            provenance.emit_usage_verdict(e.format_message(), code)  # type: ignore[attr-defined]
            sys.exit(code)
        sys.exit(code if isinstance(code, int) else 0)
    if "--json" not in args:
        app(args)
        return
    try:
        code = app(args, standalone_mode=False)
    except typer.TyperException as e:
        _show(e)  # the usual usage line on stderr
        emit_json({"error": e.format_message(), "exit_code": e.exit_code})
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print("[bold red]interrupted[/]")
        emit_json({"error": "interrupted", "exit_code": 130})
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
