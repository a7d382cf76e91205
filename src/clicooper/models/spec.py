"""Declarative models: a model file (TOML or JSON) → a validated spec → an ``nn.Sequential``.

A model file is an ordered list of layers, each a table with a ``type`` from the allowlist
(:data:`clicooper.models.layers.LAYERS`) and that type's keyword arguments; a ``Residual`` layer has a
``body`` (a list of layers) and an optional ``shortcut`` (a list of layers; left out = identity) and
computes ``body(x) + shortcut(x)``::

    name = "tiny-resnet"                     # optional; default: the file's stem
    [[layers]]
    type = "Conv2d"                          # in_channels left out: filled in from the input
    out_channels = 16
    kernel_size = 3
    padding = 1
    [[layers]]
    type = "Residual"
    body = [{ type = "Conv2d", out_channels = 16, kernel_size = 3, padding = 1 }, { type = "ReLU" }]
    [[layers]]
    type = "Flatten"
    [[layers]]
    type = "Linear"
    out_features = "outputs"                 # the run's output width (classes, × m under obfuscation)

Arguments that follow from the input (``in_channels``, ``in_features``, ``num_features``,
``num_channels``, ``normalized_shape``) may be left out; when given they are checked against it. The spec
is the canonical list of layers (``{"type": …, **arguments}``, residual branches nested); a run keeps it
in ``RunConfig.model_spec``, so ``config.json`` is self-contained and its hash (in the ledger's genesis)
binds the architecture. Every party builds its model with :func:`build_model` from that data alone: each
layer is validated against the allowlist first, and nothing received is ever executed or unpickled.
Errors name the layer by its index in the ``nn.Sequential`` (0-based, as in the state dict's keys), e.g.
``layer 3 (Conv2d): in_channels=16 but the input has 32 channels``.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from clicooper.errors import ConfigError
from clicooper.models.blocks import Residual
from clicooper.models.layers import LAYERS, OUTPUTS, RESIDUAL, RESIDUAL_KEYS, allowed_types, schema_of

Layer = dict[str, Any]
Shape = tuple[int, ...]

MAX_DEPTH = 8  # residual blocks nested in residual blocks
MAX_LAYERS = 10_000  # in one list, and in the whole model with every residual branch counted
MAX_FILE_BYTES = 1 << 20
# A received spec is checked against these caps before anything is allocated (:func:`check_model` builds
# and runs it on the meta device), so it cannot make a party allocate or compute more than they allow.
MAX_LAYER_WEIGHTS = 1 << 28  # one Linear/Conv weight
MAX_PARAMETERS = 1 << 27  # the whole model: 512 MiB of float32 (before gradients and optimiser state)
MAX_ACTIVATIONS = 1 << 25  # one layer's output, values per sample (128 MiB of float32)
MAX_TOTAL_ACTIVATIONS = 1 << 28  # every layer's output summed, values per sample (what backward keeps)
MAX_FLOPS = 10**10  # counted forward FLOPs per sample (a multiply-add counts two, as torch's flop counter)
#: layers whose output has their input's shape and that hold nothing (their arguments are checked by parsing)
_ELEMENTWISE = frozenset({"ReLU", "Tanh", "Sigmoid", "SiLU", "Identity", "LeakyReLU", "ELU", "GELU", "Dropout"})
#: layers with parameters whose output shape follows from the arguments alone (their meta kernels run
#: through Python decompositions, milliseconds each; computing the shape keeps 10,000 of them cheap)
_SAME_SHAPE = frozenset({"BatchNorm1d", "BatchNorm2d", "GroupNorm", "LayerNorm"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_WHAT = {"channels": "channels", "features": "features", "shape": "per-sample shape"}


# ---------------------------------------------------------------------------------------------- parsing
def parse_layers(data: Any, where: str = "", depth: int = 0) -> list[Layer]:
    """Validate a list of layers (a model file's ``layers``, or a residual branch) into canonical form."""
    if depth == 0 and _count(data, MAX_LAYERS) > MAX_LAYERS:
        raise ConfigError(f"{where.strip() or 'the model'}: more than {MAX_LAYERS} layers in all (residual "
                          "branches counted)")
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{where.strip() or 'the model'}: layers must be a non-empty list of tables, each with "
                          "a 'type'")
    if len(data) > MAX_LAYERS:
        raise ConfigError(f"{where.strip() or 'the model'}: {len(data)} layers, more than the {MAX_LAYERS} allowed")
    return [parse_layer(d, f"{where}layer {i}", depth) for i, d in enumerate(data)]


def _count(data: Any, limit: int) -> int:
    """Layers in ``data`` and its residual branches (those that look like layers), counting stops past ``limit``."""
    n, todo = 0, [data]
    while todo and n <= limit:
        item = todo.pop()
        if not isinstance(item, list):
            continue
        n += len(item)
        todo.extend(v for d in item if isinstance(d, dict) for k, v in d.items() if k in RESIDUAL_KEYS)
    return n


def parse_layer(d: Any, label: str, depth: int = 0) -> Layer:
    """One layer: a known ``type`` and valid arguments (``label`` names it in errors)."""
    if not isinstance(d, dict) or "type" not in d:
        raise ConfigError(f"{label}: each layer is a table with a 'type' (one of {', '.join(allowed_types())})")
    t = d["type"]
    if not isinstance(t, str) or t not in (*LAYERS, RESIDUAL):
        raise ConfigError(f"{label}: unknown layer type {t!r}; allowed: {', '.join(allowed_types())}")
    name = f"{label} ({t})"
    args = {k: v for k, v in d.items() if k != "type"}
    if t == RESIDUAL:
        return _parse_residual(args, name, depth)
    missing = [k for k in LAYERS[t].required if k not in args]
    if missing:
        raise ConfigError(f"{name}: missing argument {', '.join(missing)}")
    try:
        valid = schema_of(t)(**args)
    except ValidationError as e:
        raise ConfigError(f"{name}: {_explain(e, t, args)}") from None
    return {"type": t, **valid.model_dump(exclude_unset=True)}


def _parse_residual(args: dict[str, Any], name: str, depth: int) -> Layer:
    unknown = sorted(set(args) - set(RESIDUAL_KEYS))
    if unknown:
        raise ConfigError(f"{name}: unknown key {', '.join(unknown)}; a residual block has 'body' and "
                          "an optional 'shortcut'")
    if depth >= MAX_DEPTH:
        raise ConfigError(f"{name}: residual blocks nested more than {MAX_DEPTH} deep")
    if "body" not in args:
        raise ConfigError(f"{name}: missing 'body' (the list of layers summed with the shortcut)")
    out: Layer = {"type": RESIDUAL, "body": parse_layers(args["body"], f"{name} body ", depth + 1)}
    if args.get("shortcut"):  # left out or empty: the identity
        out["shortcut"] = parse_layers(args["shortcut"], f"{name} shortcut ", depth + 1)
    return out


def _explain(e: ValidationError, t: str, args: dict[str, Any]) -> str:
    """One clause per bad argument (a union's alternatives joined by 'or')."""
    by_arg: dict[str, list[str]] = {}
    for err in e.errors():
        arg = str(err["loc"][0]) if err["loc"] else "?"
        if err["type"] == "extra_forbidden":
            return f"unknown argument {arg!r}; {t} takes {', '.join(LAYERS[t].args) or 'no arguments'}"
        if err["msg"] not in by_arg.setdefault(arg, []):
            by_arg[arg].append(str(err["msg"]))
    return "; ".join(f"{a}={args.get(a)!r} is invalid ({' or '.join(m)})" for a, m in by_arg.items())


# ---------------------------------------------------------------------------------------------- files
@dataclass(frozen=True)
class ModelFile:
    """A model file read and validated: its name (``name`` key, else the file's stem) and its spec."""

    name: str
    layers: list[Layer]


def load_model_file(path: str | Path) -> ModelFile:
    """Read and validate a ``.toml`` / ``.json`` model file (see the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"model file {p} not found; pass an existing .toml or .json file (--model-file)")
    if p.stat().st_size > MAX_FILE_BYTES:
        raise ConfigError(f"model file {p} is larger than {MAX_FILE_BYTES} bytes; that is no model file")
    try:
        text = p.read_text("utf-8")
        if p.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif p.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"model file {p}: unsupported format {p.suffix!r}; use .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"model file {p} is not valid {p.suffix[1:].upper()}: {e}") from e
    return model_file_from_data(data, default_name=p.stem, where=f"{p}: ")


def model_file_from_data(data: Any, *, default_name: str, where: str = "") -> ModelFile:
    """A model file's content (``{"name"?, "layers"}``, or a bare list of layers) → :class:`ModelFile`."""
    if isinstance(data, list):
        data = {"layers": data}
    if not isinstance(data, dict) or "layers" not in data:
        raise ConfigError(f"{where}a model file holds 'layers' (a list of layer tables) and optionally 'name'")
    unknown = sorted(set(data) - {"name", "layers"})
    if unknown:
        raise ConfigError(f"{where}unknown top-level key {', '.join(unknown)}; a model file has 'name' and 'layers'")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where}model name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    try:
        return ModelFile(name, parse_layers(data["layers"]))
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None


# ---------------------------------------------------------------------------------------------- building
@dataclass
class Budget:
    """What a model may cost, counted per sample while the spec is checked: before anything real exists.

    ``params``: trainable and buffer values together; ``activations``: the values every layer outputs,
    summed (what backward keeps); ``flops``: counted forward FLOPs (see :func:`_flops`).
    """

    params: int = 0
    activations: int = 0
    flops: int = 0


def build_model(layers: Any, input_shape: Shape, num_outputs: int) -> nn.Sequential:
    """Validate ``layers`` and build them for per-sample ``input_shape`` (weights from torch's global RNG:
    the caller seeds it). The output must be ``(num_outputs,)`` per sample.

    The whole model is checked first on the ``meta`` device (shapes, the caps of :func:`check_model`), where
    building allocates nothing and draws no random numbers; only a model within every cap is then built for
    real, layer by layer in the same order, so its weights are exactly those of a plain build.
    """
    spec = parse_layers(layers)
    shape_in = tuple(int(s) for s in input_shape)
    shapes: dict[str, Shape] = {}
    check_model(spec, shape_in, num_outputs, shapes=shapes)
    mods, _ = _build_seq(spec, shape_in, num_outputs, "", _Pass(meta=False, shapes=shapes))
    return nn.Sequential(*mods)


def check_model(layers: Any, input_shape: Shape, num_outputs: int, *,
                shapes: dict[str, Shape] | None = None) -> Budget:
    """Validate ``layers`` for ``input_shape`` without allocating: every layer is built on the ``meta``
    device and run on a meta input, so shapes follow from the arguments alone. Refuses (``ConfigError``
    naming the layer and the cap) a layer whose weight exceeds :data:`MAX_LAYER_WEIGHTS` or whose output
    exceeds :data:`MAX_ACTIVATIONS` values per sample, and a model over :data:`MAX_PARAMETERS`,
    :data:`MAX_TOTAL_ACTIVATIONS` or :data:`MAX_FLOPS`. Returns what the model costs per sample."""
    spec = parse_layers(layers)
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape) or math.prod(shape) > MAX_ACTIVATIONS:
        raise ConfigError(f"input shape {shape} per sample: each dimension must be at least 1 and the sample at "
                          f"most {MAX_ACTIVATIONS:,} values")
    p = _Pass(meta=True, shapes={} if shapes is None else shapes)
    _, out = _build_seq(spec, shape, num_outputs, "", p)
    if out != (num_outputs,):
        raise ConfigError(
            f"the model's output has shape {out} per sample, but this run needs ({num_outputs},), the number of "
            f"classes (× labels.expansion under label obfuscation): end with nn.Linear(…, {num_outputs}) (in a "
            f'model file: out_features = "{OUTPUTS}")')
    return p.budget


@dataclass
class _Pass:
    """One walk over a spec: ``meta`` checks and counts (recording each layer's output shape by its name);
    otherwise the real build, which takes the shapes the meta walk recorded."""

    meta: bool
    shapes: dict[str, Shape]
    budget: Budget = field(default_factory=Budget)


def _build_seq(spec: list[Layer], shape: Shape, num_outputs: int, where: str, p: _Pass
               ) -> tuple[list[nn.Module], Shape]:
    mods = []
    for i, layer in enumerate(spec):
        m, shape = _build_one(layer, shape, num_outputs, f"{where}layer {i} ({layer['type']})", p)
        mods.append(m)
    return mods, shape


def _build_one(layer: Layer, shape: Shape, num_outputs: int, name: str, p: _Pass) -> tuple[nn.Module, Shape]:
    t = layer["type"]
    if t == RESIDUAL:
        return _build_residual(layer, shape, num_outputs, name, p)
    lt = LAYERS[t]
    if lt.ranks is not None and len(shape) not in lt.ranks:
        dims = " or ".join(str(r) for r in lt.ranks)
        raise ConfigError(f"{name}: takes inputs of {dims} dimension(s) per sample, but the input has shape {shape}")
    kw = {k: v for k, v in layer.items() if k != "type"}
    for arg, source in lt.infer.items():
        have = _from_shape(source, shape, t)
        if arg not in kw:
            kw[arg] = have
        elif _as_list(kw[arg]) != _as_list(have):
            raise ConfigError(f"{name}: {arg}={kw[arg]} but the input has {have} {_WHAT[source]} "
                              f"(input shape {shape}); fix {arg} or leave it out")
    kw = {k: num_outputs if v == OUTPUTS else tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
    if not p.meta:
        return lt.cls(**kw), p.shapes[name]  # checked, with these very arguments, by the meta walk
    if t in _ELEMENTWISE:  # same shape out, no parameters: nothing to build or probe (10,000 ReLUs stay cheap)
        size = math.prod(shape)
        _charge(p.budget, name, 0, size, size)
        p.shapes[name] = shape
        return nn.Identity(), shape
    if _weights(t, kw, len(shape)) > MAX_LAYER_WEIGHTS:
        raise ConfigError(f"{name}: its weight would have more than {MAX_LAYER_WEIGHTS:,} values; that is no model "
                          "this framework trains")
    try:
        with torch.device("meta"):  # nothing allocated, no random numbers drawn
            m = lt.cls(**kw)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{name}: {e}") from None
    out = _probe(m, shape, name, p.budget, (*shape[:-1], int(kw["out_features"])) if t == "Linear"
                 else shape if t in _SAME_SHAPE else None)
    p.shapes[name] = out
    return m, out


def _build_residual(layer: Layer, shape: Shape, num_outputs: int, name: str, p: _Pass) -> tuple[nn.Module, Shape]:
    body, out = _build_seq(layer["body"], shape, num_outputs, f"{name} body ", p)
    short, s_out = _build_seq(layer["shortcut"], shape, num_outputs, f"{name} shortcut ", p) \
        if "shortcut" in layer else ([], shape)
    if out != s_out:
        raise ConfigError(f"{name}: the body gives {out} per sample but the shortcut gives {s_out}; they are "
                          "summed, so they must match (e.g. a shortcut Conv2d with kernel_size 1 and the body's "
                          "stride and out_channels)")
    if p.meta:
        _charge(p.budget, name, 0, math.prod(out), math.prod(out))  # the sum
    return Residual(nn.Sequential(*body), nn.Sequential(*short) if short else None), out


def _from_shape(source: str, shape: Shape, t: str) -> int | list[int]:
    if not shape:
        raise ConfigError(f"{t} needs an input with at least one dimension per sample")
    return {"channels": shape[0], "features": shape[-1], "shape": list(shape)}[source]


def _weights(t: str, kw: dict[str, Any], rank: int) -> int:
    """Values of a Linear's or a convolution's weight (0 for other layers), before it is allocated."""
    if t == "Linear":
        return int(kw["in_features"]) * int(kw["out_features"])
    if t.startswith("Conv"):
        k = kw["kernel_size"]
        taps = 1
        for s in (k if isinstance(k, tuple) else (k,) * (rank - 1)):
            taps *= int(s)
        return int(kw["in_channels"]) * int(kw["out_channels"]) * taps // int(kw.get("groups", 1))
    return 0


def _as_list(v: Any) -> list[int]:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _probe(m: nn.Module, shape: Shape, name: str, budget: Budget, known: Shape | None = None) -> Shape:
    """The meta layer's per-sample output shape, found by running it on a meta batch of two (eval mode, no
    grad), or ``known`` when it follows from the arguments; its parameters, output and counted FLOPs are
    charged to ``budget``."""
    # meta kernels compute shapes only: a huge padding or kernel costs nothing here, the caps refuse it
    if known is None:
        m.eval()
        try:
            with torch.no_grad():
                y = m(torch.zeros((2, *shape), device="meta"))
        except (RuntimeError, ValueError, IndexError, NotImplementedError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"{name}: cannot take an input of shape {shape} per sample: {first}") from None
        finally:
            m.train()
        if not isinstance(y, torch.Tensor) or y.dim() == 0 or y.shape[0] != 2:
            raise ConfigError(f"{name}: its output mixes the samples of a batch (start_dim/dim 0 is the batch)")
        if y.numel() == 0:
            raise ConfigError(f"{name}: gives an empty output {tuple(y.shape[1:])} for input {shape}")
        known = tuple(int(s) for s in y.shape[1:])
    out = known
    size = math.prod(out)
    params = sum(t.numel() for t in (*m.parameters(), *m.buffers()))
    flops = _flops(m, shape, out)
    _charge(budget, name, params, size, flops)
    return out


def _flops(m: nn.Module, shape: Shape, out: Shape) -> int:
    """Counted forward FLOPs of one layer for one sample: a matrix product or convolution as torch's flop
    counter counts it (two per multiply-add, bias aside), a pooling window one per value it reads, any other
    layer one per input value. Computed from the shapes: counting with a dispatch mode would import the
    compiler stack."""
    n_out = math.prod(out)
    if isinstance(m, nn.Linear):
        return 2 * n_out * m.in_features
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return 2 * n_out * (m.in_channels // m.groups) * math.prod(m.kernel_size)
    if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)):
        k = m.kernel_size
        return n_out * (math.prod(k) if isinstance(k, (tuple, list)) else int(k) ** (len(shape) - 1))
    return max(math.prod(shape), n_out)


def _charge(budget: Budget, name: str, params: int, size: int, flops: int) -> None:
    """Add one layer's cost, refusing the first cap it passes (the layer named, the cap given)."""
    budget.params += params
    budget.activations += size
    budget.flops += flops
    fix = "make the layer smaller (fewer channels or features, less padding, more stride or pooling earlier)"
    if size > MAX_ACTIVATIONS:
        raise ConfigError(f"{name}: its output has {size:,} values per sample, more than the {MAX_ACTIVATIONS:,} "
                          f"allowed for one layer; {fix}")
    if budget.params > MAX_PARAMETERS:
        raise ConfigError(f"{name}: the model reaches {budget.params:,} parameters here, more than the "
                          f"{MAX_PARAMETERS:,} allowed in all; {fix}")
    if budget.activations > MAX_TOTAL_ACTIVATIONS:
        raise ConfigError(f"{name}: the layers' outputs reach {budget.activations:,} values per sample here, more "
                          f"than the {MAX_TOTAL_ACTIVATIONS:,} allowed in all; {fix}")
    if budget.flops > MAX_FLOPS:
        raise ConfigError(f"{name}: the model reaches {budget.flops:,} counted FLOPs per sample here, more than the "
                          f"{MAX_FLOPS:,} allowed in all; {fix}")
