"""``clicooper`` command line (typer + rich). Thin: each command calls one library function.

:mod:`clicooper.cli.app` builds the app and registers every command; :mod:`clicooper.cli.common` holds
what the command modules share (error handling and exit codes, JSON output, option parsing). No library
module imports this package.
"""

from clicooper.cli.app import app, main

__all__ = ["app", "main"]
