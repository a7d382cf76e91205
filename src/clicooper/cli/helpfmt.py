"""How every ``clicooper`` command shows its ``--help`` and reads its switches.

* On/off options read as flags: ``--stream / --no-stream``, never with a ``<bool>`` value, which they do not
  take; a value typed after one (``--stream true``, ``--stream=false``) gets one line saying how to use it.
* Options are shown in two columns, the option (its names, then its type) and its help, so that the help keeps
  most of an 80-column terminal: typer's own table gives the names, the ``--no-…`` names and the type a column
  each, which left the help about 20 columns at 80 and cut long option names and words with an ellipsis.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer import rich_utils
from typer.core import TyperArgument, TyperCommand

from clicooper.cli.common import emit_json, err, set_hint

#: What a user may type after a switch, meaning on or off; read as a value a switch does not take.
_BOOL_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "1", "0", "y", "n", "t", "f"})


def _is_switch(p: Any) -> bool:
    return bool(getattr(p, "is_flag", False)) and not getattr(p, "count", False)


def switch_hint(params: list[Any], args: list[str]) -> str | None:
    """The line for a switch given a value in ``args`` (``--stream true``, ``--stream=false``), else None."""
    switches = {o: p for p in params if _is_switch(p) for o in (*p.opts, *p.secondary_opts)}
    for i, a in enumerate(args):
        if a == "--":
            break
        name, eq, _ = a.partition("=")
        p = switches.get(name if eq else a)
        if p is None or not (eq or (i + 1 < len(args) and args[i + 1].lower() in _BOOL_WORDS)):
            continue
        on = p.opts[0]
        off = p.secondary_opts[0] if p.secondary_opts else None
        return (f"{name if eq else a} is a switch: use {on} or {off}" if off else
                f"{name if eq else a} is a switch: use {on}, or leave it out")
    return None


def _options_panel(*, name: str, params: list[Any], ctx: Any, markup_mode: Any, console: Console) -> None:
    """One panel of options (or arguments) in two columns: the option, then its help (the ``rich_utils``
    panel's replacement). The option column holds the option's names, its ``--no-…`` names on the next line
    and its type after them, or on a line of its own where they do not fit beside the longest name."""
    if not params:
        return
    cells: list[list[tuple[str, str]]] = []  # per param: lines of (text, style)
    for p in params:
        shown = getattr(p, "display_name_raw", None) if isinstance(p, TyperArgument) else None
        if shown is not None and p.metavar is None and p.nargs != 1:
            shown += "..."
        names = ", ".join(o for o in p.opts if o.startswith("--")) or shown or ", ".join(p.opts)
        short = [o for o in p.opts if not o.startswith("--")] if shown is None else []
        first = ", ".join([names, *short]) if short and names not in short else names
        lines = [(first, "option")]
        if p.secondary_opts:
            lines.append((", ".join(p.secondary_opts), "negative_option"))
        typ = p.display_type_rich(ctx=ctx) or ""
        rng = p._get_number_range_help_str() if hasattr(p, "_get_number_range_help_str") else ""
        if rng:
            typ += rich_utils.RANGE_STRING.format(rng)
        if typ:
            lines.append((typ, "types"))
        cells.append(lines)
    width = max(len(text) for lines in cells for text, _ in lines if lines)
    table = Table(show_header=False, expand=True, box=None, pad_edge=False, padding=(0, 1))
    required = any(p.required for p in params)
    if required:
        table.add_column(no_wrap=True, width=1)
    table.add_column(no_wrap=True, width=width)
    table.add_column(ratio=1, overflow="fold")
    for p, lines in zip(params, cells, strict=True):
        if len(lines) >= 2 and lines[-1][1] == "types" and len(lines[-2][0]) + 1 + len(lines[-1][0]) <= width:
            lines = [*lines[:-2], (f"{lines[-2][0]} ", lines[-2][1]), lines[-1]]  # the type beside the last name
            joins = ["\n"] * (len(lines) - 2) + [""]
        else:
            joins = ["\n"] * (len(lines) - 1)
        cell = Text()
        for (text, style), sep in zip(lines, [*joins, ""], strict=True):
            cell.append(text, style=style).append(sep)
        row: list[Any] = [cell, rich_utils._get_parameter_help(param=p, ctx=ctx, markup_mode=markup_mode)]
        if required:
            row.insert(0, Text(rich_utils.REQUIRED_SHORT_STRING, style=rich_utils.STYLE_REQUIRED_SHORT)
                       if p.required else "")
        table.add_row(*row)
    console.print(rich_utils.Panel(table, border_style=rich_utils.STYLE_OPTIONS_PANEL_BORDER, title=name,
                                   title_align=rich_utils.ALIGN_OPTIONS_PANEL))


class Command(TyperCommand):
    """A ``clicooper`` command: switches shown and read as switches, options in two columns (module doc)."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # with --help, which is made per call
        for p in params:
            if _is_switch(p) and p.metavar is None:
                p.metavar = ""  # typer's help shows the metavar, when set, in place of the type
        return params

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """Typer's parsing, with one line for a value given to a switch instead of typer's 'unexpected extra
        argument' or 'does not take a value', and an unknown option that names a config field saying how to set
        it (``--momentum`` → ``--set momentum=VALUE``)."""
        try:
            return super().parse_args(ctx, list(args))
        except typer.TyperException as e:
            hint = switch_hint(self.get_params(ctx), list(args))
            if hint is None or getattr(e, "exit_code", None) != 2:
                name = getattr(e, "option_name", None)  # typer's own click: its NoSuchOption carries it
                if isinstance(name, str) and any(p.name in ("sets", "defense_specs") for p in self.params):
                    how = set_hint(name)
                    if how is not None:
                        e.message = f"No such option: {name}; {how}"  # type: ignore[attr-defined]
                        e.possibilities = None  # type: ignore[attr-defined]  # the hint replaces click's guesses
                raise
            err.print(f"[bold red]error:[/] {hint}", highlight=False, soft_wrap=True)
            if "--json" in args:
                emit_json({"error": hint, "exit_code": 2})
            raise typer.Exit(2) from None

    def format_help(self, ctx: Any, formatter: Any) -> Any:
        """Typer's rich help, with :func:`_options_panel` for its option panels."""
        original = getattr(rich_utils, "_print_options_panel", None)
        if original is None:  # another typer: its own panels
            return super().format_help(ctx, formatter)
        rich_utils._print_options_panel = _options_panel
        try:
            return super().format_help(ctx, formatter)
        finally:
            rich_utils._print_options_panel = original
