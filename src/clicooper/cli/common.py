"""What every command module of the CLI shares: the consoles, error handling and exit codes, JSON output,
and turning options into a run config.

Errors a user can cause print one line (``error: …`` saying what to do) and exit non-zero, never a
traceback. ``--json`` prints one JSON object as the last line of stdout; progress goes to stderr. Under
``--json`` an error is that object too: ``{"error": "…", "exit_code": N}`` on stdout, beside the line on
stderr, with the same non-zero exit.
"""

from __future__ import annotations

import difflib
import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console

from clicooper.config import (
    DPConfig,
    LabelConfig,
    RunConfig,
    load_config_file,
    make_config,
    parse_capacities,
    parse_range,
)
from clicooper.config.keys import table_of
from clicooper.errors import CliCooperError, ConfigError

err = Console(stderr=True)
out = Console()
F = TypeVar("F", bound=Callable[..., Any])

#: the flags that fill a table of the config (the rest of each table is reached with --set TABLE.KEY=VALUE)
_DP_KEYS = ("sigma", "target_epsilon")
_DATA_KEYS = ("label_column", "stream")


def _show(e: Exception) -> None:
    """click's own rendering of a usage error (usage line, then the message) on stderr."""
    show = getattr(e, "show", None)
    if callable(show):
        show()
    else:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)


def guarded(f: F) -> F:
    """Turn CliCooper errors and Ctrl-C into one-line messages and exit codes; with ``--json``
    (``as_json=True``) also into one JSON error object on stdout, bad option values included."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json"))
        try:
            return f(*args, **kwargs)
        except CliCooperError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            if as_json:
                emit_json({"error": str(e), "exit_code": e.exit_code})
            raise typer.Exit(e.exit_code) from None
        except typer.TyperException as e:  # typer.BadParameter raised by a command's own checks
            if not as_json:
                raise
            _show(e)
            emit_json({"error": e.format_message(), "exit_code": e.exit_code})
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print("[bold red]interrupted[/]")
            if as_json:
                emit_json({"error": "interrupted", "exit_code": 130})
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def emit_json(obj: Any) -> None:
    """Print one JSON object as the last line of stdout."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def _pop_set(opts: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """Remove ``keys`` from ``opts``; return those among them that were given (not None)."""
    popped = {k: opts.pop(k) for k in keys if k in opts}
    return {k: v for k, v in popped.items() if v is not None}


def _override_table(fields: dict[str, Any], name: str, given: dict[str, Any]) -> None:
    """Options override the config file's ``[name]`` table key by key."""
    table = fields.get(name) or {}
    if not isinstance(table, dict):
        raise typer.BadParameter(f"the config file's {name} must be a table of fields")
    fields[name] = {**table, **given}


def parse_defense_option(text: str) -> dict[str, Any]:
    """``--with KIND[:key=value,…]`` → ``{"kind": KIND, key: value, …}`` (a value is read as JSON where it
    parses, e.g. numbers and true/false, else kept as text; the defence's spec checks it)."""
    kind, _, rest = text.partition(":")
    if not kind.strip():
        raise typer.BadParameter(f"--with {text!r}: start with the defence's kind, e.g. --with nopeek:weight=0.5")
    out: dict[str, Any] = {"kind": kind.strip()}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--with {text!r}: {item!r} is not key=value (e.g. --with nopeek:weight=0.5)")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value.strip()
    return out


def model_file_fields(path: Path, model: str | None) -> dict[str, Any]:
    """``--model-file F`` → the config's ``model`` (the file's ``name``, else its stem) and ``model_spec``
    (its layers, validated against the allowlist)."""
    if model is not None:
        raise typer.BadParameter("give --model NAME or --model-file FILE, not both")
    from clicooper.models.spec import load_model_file  # lazy: torch

    mf = load_model_file(path)
    return {"model": mf.name, "model_spec": mf.layers}


SET_HELP = ("KEY=VALUE: set any config field by its dotted name (repeatable; after every other option), e.g. "
            "--set data.workers=4 --set optimizer=sgd --set party_devices.T1=cuda; VALUE is JSON (numbers, true, "
            "null, [..], {..}) or else a string. `clicooper fields` lists every key with its default")


#: the older defence fields --set still reaches (RunConfig turns them into `defenses`): their tables' models
_SHORTHAND_TABLES: dict[str, type[BaseModel] | None] = {
    "dp": DPConfig, "labels": LabelConfig, "defense": None, "nopeek": None, "adversarial_decoder": None,
    "head_mode": None}


def _check_key(key: str) -> list[str]:
    """``key``'s parts, each a field of the table before it (from :class:`RunConfig`); a wrong part is
    refused with the closest field names (difflib)."""
    parts = key.split(".")
    table: type[BaseModel] | dict[str, Any] | None = RunConfig
    for i, part in enumerate(parts):
        where = ".".join(parts[:i])
        if table is None:
            raise ConfigError(f"--set {key}: {where} is a single value, not a table; use --set {where}=VALUE")
        if isinstance(table, dict):  # e.g. party_devices.T1: its keys are checked by the config itself
            if not part:
                raise ConfigError(f"--set {key}: empty key after {where}")
            return parts
        fields = table.model_fields
        if table is RunConfig and part in _SHORTHAND_TABLES:  # the older defence fields: shorthand for specs
            table = _SHORTHAND_TABLES[part]
            continue
        if part not in fields:
            prefix = f"{where}." if where else ""
            close = difflib.get_close_matches(part, list(fields), n=3, cutoff=0.6)
            hint = (f"did you mean {' or '.join(prefix + c for c in close)}?" if close else
                    f"the fields{' of ' + where if where else ''} are {', '.join(fields)}")
            raise ConfigError(f"--set {key}: {prefix}{part} is not a config field; {hint}")
        table = table_of(fields[part].annotation)
    return parts


def set_hint(option: str) -> str | None:
    """How to set what an unknown ``--option`` names, when it names a config field or a defence (read from
    the config and the defence registry): ``--momentum`` → ``--set momentum=VALUE``, ``--nopeek`` →
    ``--with nopeek:…``; ``None`` when it names neither."""
    from clicooper.config.defenses import defense_kinds
    from clicooper.config.keys import config_keys

    name = option.lstrip("-")
    if name in defense_kinds():
        return f"it is a defence: --with {name}:key=value (`clicooper fields` lists its settings)"
    keys = [k.key + (".NAME" if k.type.startswith("dict") else "") for k in config_keys()]
    keys += [f"{table}.{f}" for table, model in (("dp", DPConfig), ("labels", LabelConfig))
             for f in model.model_fields if table == "labels" or f not in ("head_dpsgd", "sigma_source")]
    leaf = {}
    for k in keys:  # the run config's own fields before the older dp / labels tables
        leaf.setdefault(k.removesuffix(".NAME").rsplit(".", 1)[-1].replace("_", "-"), k)
    close = difflib.get_close_matches(name, list(leaf), n=1, cutoff=0.8)
    if not close:
        return None
    return f"it is a config field: --set {leaf[close[0]]}=VALUE (`clicooper fields` lists them all)"


def _set_value(text: str) -> Any:
    """A ``--set`` value: JSON when it parses (``0.1``, ``true``, ``null``, ``[0, 100]``), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_sets(fields: dict[str, Any], items: Sequence[str]) -> dict[str, Any]:
    """``fields`` with each ``KEY=VALUE`` of ``--set`` applied (dotted keys into tables, key by key); the
    whole config is then validated by :func:`make_config`, which names the key of a bad value."""
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r} is not KEY=VALUE (e.g. --set dp.sigma=0.1)")
        parts = _check_key(key)
        table = fields
        for i, part in enumerate(parts[:-1]):
            sub = table.get(part)
            if sub is None:
                sub = table[part] = {}
            elif isinstance(sub, BaseModel):
                sub = table[part] = sub.model_dump()
            elif not isinstance(sub, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} holds {sub!r}, not a table")
            table = sub
        table[parts[-1]] = _set_value(text)
    return fields


def config_from_options(config_file: Path | None, *, sets: Sequence[str] | None = None, **opts: Any) -> Any:
    """A validated run config from an optional config file overridden by the given (not None) options, then
    by ``--set KEY=VALUE`` overrides (:func:`apply_sets`)."""
    fields: dict[str, Any] = load_config_file(config_file) if config_file else {}
    model_file = opts.pop("model_file", None)
    if model_file is not None:  # --model-file replaces the file's model and model_spec
        fields.pop("model_spec", None)
        opts.update(model_file_fields(model_file, opts.get("model")))
    specs = [parse_defense_option(t) for t in opts.pop("defense_specs", None) or []]
    if specs:  # --with KIND:… replaces the file's defence of the same kind, or adds one
        kinds = {d["kind"] for d in specs}
        fields["defenses"] = [d for d in fields.get("defenses") or [] if d.get("kind") not in kinds] + specs
    if fields.get("defenses") is not None:  # the defences are listed: the shorthand flags would clash
        given = [k for k in (*_DP_KEYS, "defense") if opts.get(k) is not None]
        if given:
            where = "--with" if specs else str(config_file)
            raise typer.BadParameter(
                f"{where} lists the defences; give {', '.join(given)} there too (e.g. --with keyed-noise:sigma=0.1), "
                "not as the older flags")
    dp_opts = _pop_set(opts, _DP_KEYS)
    data_opts = _pop_set(opts, _DATA_KEYS)
    if dp_opts:  # --sigma / --target-epsilon override the file's [dp] table, key by key
        _override_table(fields, "dp", dp_opts)
    if data_opts:  # --label-column / --stream override the file's [data] table, key by key
        _override_table(fields, "data", data_opts)
    if opts.get("capacities") is not None:
        opts["capacities"] = parse_capacities(opts["capacities"])
    if opts.get("train_range") is not None:
        opts["train_range"] = parse_range(opts["train_range"])
    fields.update({k: v for k, v in opts.items() if v is not None})
    return make_config(**apply_sets(fields, sets or []))
