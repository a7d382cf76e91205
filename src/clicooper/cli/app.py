"""The ``clicooper`` typer app. Every command is registered here, explicitly, in ``--help`` order; the
command modules (:mod:`clicooper.cli.train`, ``attacks``, ``net``, ``provenance``) never import this one."""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperCommand

from clicooper.cli import attacks, net, provenance, security, train


class _Command(TyperCommand):
    """A command whose ``--help`` shows on/off options as flags (``--stream``, ``--provenance/--no-provenance``)
    rather than with a ``<bool>`` value, which they do not take."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # with --help, which is made per call
        for p in params:
            if getattr(p, "is_flag", False) and p.metavar is None:
                p.metavar = ""  # typer's help shows the metavar, when set, in place of the type
        return params


app = typer.Typer(add_completion=False, no_args_is_help=True, help="CliCooper: cooperative split learning.")

app.command("train", epilog=train.presets_epilog(), cls=_Command)(train.train)
app.command("evaluate", cls=_Command)(train.evaluate)
app.command("predict", cls=_Command)(train.predict)
app.command("plan", cls=_Command)(train.plan)
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


def main() -> None:
    """Console-script entry point."""
    argv = sys.argv[1:]
    if argv[:1] == ["verify"] and "--json" in argv:  # a verdict on every exit path, a usage error's included
        try:
            code = app(args=argv, standalone_mode=False)
        except typer.Abort:
            sys.exit(1)
        except typer.TyperException as e:  # a usage error (typer's own click): its message, then the verdict
            code = int(getattr(e, "exit_code", 2))
            e.show()  # type: ignore[attr-defined]
            provenance.emit_usage_verdict(e.format_message(), code)  # type: ignore[attr-defined]
            sys.exit(code)
        sys.exit(code if isinstance(code, int) else 0)
    app()
