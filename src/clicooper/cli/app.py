"""The ``clicooper`` typer app. Every command is registered here, explicitly, in ``--help`` order; the
command modules (:mod:`clicooper.cli.train`, ``attacks``, ``net``, ``provenance``) never import this one."""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from typer import rich_utils
from typer.core import TyperCommand

from clicooper.cli import attacks, info, net, provenance, security, train
from clicooper.cli.common import _show, emit_json, err, set_hint

#: --help wider than rich's 80-column default when it is not shown on a terminal (a pipe, a file, a pager),
#: so that option help is not cut mid-word; on a terminal rich reads its real width.
HELP_WIDTH = 120
if rich_utils.MAX_WIDTH is None and not os.environ.get("COLUMNS") and not sys.stdout.isatty():
    rich_utils.MAX_WIDTH = HELP_WIDTH


class _Command(TyperCommand):
    """A command whose ``--help`` shows on/off options as flags (``--stream``, ``--provenance/--no-provenance``)
    rather than with a ``<bool>`` value, which they do not take, and whose unknown option that names a config
    field says how to set it (``--momentum`` → ``--set momentum=VALUE``)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except typer.TyperException as e:  # typer's own click: its NoSuchOption carries option_name
            name = getattr(e, "option_name", None)
            if isinstance(name, str) and any(p.name in ("sets", "defense_specs") for p in self.params):
                hint = set_hint(name)
                if hint is not None:
                    e.message = f"No such option: {name}; {hint}"  # type: ignore[attr-defined]
                    e.possibilities = None  # type: ignore[attr-defined]  # the hint replaces click's guesses
            raise

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # with --help, which is made per call
        for p in params:
            if getattr(p, "is_flag", False) and p.metavar is None:
                p.metavar = ""  # typer's help shows the metavar, when set, in place of the type
        return params


app = typer.Typer(add_completion=False, no_args_is_help=True, help="CliCooper: cooperative split learning.")



@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=info.version_callback, is_eager=True,
                                 help="print the installed version and exit"),
) -> None:
    """CliCooper: cooperative split learning."""


app.command("train", epilog=train.presets_epilog(), cls=_Command)(train.train)
app.command("evaluate", cls=_Command)(train.evaluate)
app.command("predict", cls=_Command)(train.predict)
app.command("plan", cls=_Command)(train.plan)
app.command("models", cls=_Command)(info.models)
app.command("fields", cls=_Command)(info.fields)
app.command("export", cls=_Command)(train.export)
app.command("keygen", cls=_Command)(provenance.keygen)
app.command("verify", cls=_Command)(provenance.verify)
app.command("reveal", cls=_Command)(provenance.reveal_cmd)
app.command("prove", cls=_Command)(provenance.prove)
app.command("audit", cls=_Command)(security.audit)
app.command("attack", cls=_Command)(attacks.attack)
app.command("report", cls=_Command)(attacks.report)
app.command("node", cls=_Command)(net.node)
app.command("certs", cls=_Command)(net.certs)
app.command("launch", cls=_Command)(net.launch)
observations = typer.Typer(no_args_is_help=True, help="What trainers received, for `clicooper report`.")
observations.command("import", cls=_Command)(net.observations_import)
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
