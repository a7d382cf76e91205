"""What every command module of the CLI shares: the consoles, error handling and exit codes, JSON output,
and turning options into a run config.

Errors a user can cause print one line (``error: …`` saying what to do) and exit non-zero, never a
traceback. ``--json`` prints one JSON object as the last line of stdout; progress goes to stderr. Under
``--json`` an error is that object too: ``{"error": "…", "exit_code": N}`` on stdout, beside the line on
stderr, with the same non-zero exit.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from clicooper.config import load_config_file, make_config, parse_capacities, parse_range
from clicooper.errors import CliCooperError

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


def config_from_options(config_file: Path | None, **opts: Any) -> Any:
    """A validated run config from an optional config file overridden by the given (not None) options."""
    fields: dict[str, Any] = load_config_file(config_file) if config_file else {}
    model_file = opts.pop("model_file", None)
    if model_file is not None:  # --model-file replaces the file's model and model_spec
        fields.pop("model_spec", None)
        opts.update(model_file_fields(model_file, opts.get("model")))
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
    return make_config(**fields)
