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
import types
import typing
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
from clicooper.errors import CliCooperError, ConfigError

err = Console(stderr=True)
out = Console()
F = TypeVar("F", bound=Callable[..., Any])

_DP_KEYS = ("sigma", "noise_ratio", "target_epsilon", "max_sigma", "clip_norm", "delta", "protect_gradients",
            "grad_clip_norm")
_LABEL_KEYS = ("expansion", "label_dp_epsilon")
_DATA_KEYS = ("label_column", "test_fraction", "image_size", "image_mode", "stream", "workers", "crop_padding",
              "flip")


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


def parse_party_devices(text: str) -> dict[str, str]:
    """``"DO=cpu,T1=cuda"`` → ``{"DO": "cpu", "T1": "cuda"}`` (names and devices are checked by the config)."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, dev = item.partition("=")
        if not sep or not name.strip() or not dev.strip():
            raise typer.BadParameter(f"--party-device entry {item!r} is not PARTY=DEVICE (e.g. T1=cuda)")
        out[name.strip()] = dev.strip()
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
            "--set dp.sigma=0.1 --set data.workers=4; VALUE is JSON (numbers, true, null, [..], {..}) or else "
            "a string")


def _table_of(annotation: Any) -> type[BaseModel] | dict[str, Any] | None:
    """What a field's dotted keys continue into: its pydantic table, ``{}`` for a free-keyed dict, ``None``
    for a plain value (``X | None`` unwrapped)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            sub = _table_of(arg)
            if sub is not None:
                return sub
        return None
    if origin is dict:
        return {}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


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
        table = _table_of(fields[part].annotation)
    return parts


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
        given = [k for k in (*_DP_KEYS, *_LABEL_KEYS, "defense", "nopeek", "adversarial_decoder",
                             "head_mode", "head_dpsgd", "head_dpsgd_clip") if opts.get(k) is not None]
        if given:
            where = "--with" if specs else str(config_file)
            raise typer.BadParameter(
                f"{where} lists the defences; give {', '.join(given)} there too (e.g. --with keyed-noise:sigma=0.1), "
                "not as the older flags")
    dp_opts = _pop_set(opts, _DP_KEYS)
    label_opts = _pop_set(opts, _LABEL_KEYS)
    data_opts = _pop_set(opts, _DATA_KEYS)
    nm, clip = opts.pop("head_dpsgd", None), opts.pop("head_dpsgd_clip", None)
    if clip is not None and nm is None:
        raise typer.BadParameter("--head-dpsgd-clip needs --head-dpsgd NOISE_MULTIPLIER")
    if nm is not None:
        dp_opts["head_dpsgd"] = {"noise_multiplier": nm} | ({"max_grad_norm": clip} if clip is not None else {})
    if dp_opts:  # --sigma / --noise-ratio / --target-epsilon override the file's [dp] table, key by key
        _override_table(fields, "dp", dp_opts)
    if label_opts:  # --label-expansion / --label-dp-epsilon override the file's [labels] table, key by key
        _override_table(fields, "labels", label_opts)
    if data_opts:  # --label-column / --test-fraction / --image-size / --image-mode: the file's [data] table
        _override_table(fields, "data", data_opts)
    if opts.get("capacities") is not None:
        opts["capacities"] = parse_capacities(opts["capacities"])
    if opts.get("train_range") is not None:
        opts["train_range"] = parse_range(opts["train_range"])
    if opts.get("party_devices") is not None:
        opts["party_devices"] = parse_party_devices(opts["party_devices"])
    fields.update({k: v for k, v in opts.items() if v is not None})
    return make_config(**apply_sets(fields, sets or []))
