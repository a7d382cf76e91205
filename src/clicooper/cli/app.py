"""The ``clicooper`` typer app. Every command is registered here, explicitly, in ``--help`` order; the
command modules (:mod:`clicooper.cli.train`, ``attacks``, ``net``, ``provenance``) never import this one."""

from __future__ import annotations

import sys

import typer

from clicooper.cli import attacks, net, provenance, security, train

app = typer.Typer(add_completion=False, no_args_is_help=True, help="CliCooper: cooperative split learning.")

app.command("train", epilog=train.presets_epilog())(train.train)
app.command("evaluate")(train.evaluate)
app.command("predict")(train.predict)
app.command("plan")(train.plan)
app.command("export")(train.export)
app.command("keygen")(provenance.keygen)
app.command("verify")(provenance.verify)
app.command("reveal")(provenance.reveal_cmd)
app.command("prove")(provenance.prove)
app.command("audit")(security.audit)
app.command("attack")(attacks.attack)
app.command("report")(attacks.report)
app.command("node")(net.node)
app.command("certs")(net.certs)
app.command("launch")(net.launch)
observations = typer.Typer(no_args_is_help=True, help="What trainers received, for `clicooper report`.")
observations.command("import")(net.observations_import)
app.add_typer(observations, name="observations")


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
