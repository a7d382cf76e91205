"""Describe a user's ``nn.Sequential`` as a spec, for ``clicooper.train(model=…)``.

When every layer is exactly an allowlisted type (:data:`clicooper.models.layers.LAYERS`, or
:class:`~clicooper.models.blocks.Residual`; subclasses count as the user's own), the run keeps the
description (``RunConfig.model_spec``): ``load_run``, ``evaluate``, the attacks and every node rebuild the
model from it. Constructor arguments are read back from the layers' attributes; ``inplace=True`` of
activations and dropout is dropped (the rebuilt layer computes the same values out of place).

A ``Sequential`` holding the user's own module classes (:func:`own_classes`: their ``BasicBlock``, their
ResNet) trains in-process as it is: the run's ``model`` is ``own-module:CLASS,…`` (:func:`own_module_name`), keeps its state dicts and the
architecture hash, and the user hands the same module back to reopen it (``load_run(RUN, model=…)``). A
path where a peer must build the model (nodes, ``launch``) needs the declarative spec and says so
(:func:`peer_refusal`). No module is ever pickled or rebuilt from code read from disk.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from torch import nn

from clicooper.errors import ConfigError
from clicooper.models.blocks import Residual
from clicooper.models.layers import LAYERS, RESIDUAL, allowed_types
from clicooper.models.spec import Layer, parse_layer

_BY_CLASS: dict[type[nn.Module], str] = {lt.cls: name for name, lt in LAYERS.items()}
#: ``RunConfig.model`` of a run that trains the user's own module classes is ``own-module:CLASS,…`` (no spec;
#: see the module docstring), so every path that reads the config alone can name the classes
OWN_MODULE = "own-module"


def own_module_name(classes: Sequence[str]) -> str:
    """``RunConfig.model`` of a run of the user's own module ``classes``."""
    return f"{OWN_MODULE}:{','.join(classes)}"


def is_own_module(model: str) -> bool:
    """Whether ``RunConfig.model`` names a run of the user's own module classes."""
    return model == OWN_MODULE or model.startswith(f"{OWN_MODULE}:")


def classes_of(model: str) -> list[str]:
    """The user's own class names an ``own-module:…`` model name records."""
    return [c for c in model.partition(":")[2].split(",") if c]
_INPLACE = re.compile(r",?\s*inplace=True")


def as_sequential(model: nn.Module | Sequence[nn.Module]) -> nn.Sequential:
    """``model`` itself, or a list of modules wrapped in an ``nn.Sequential`` (keys ``"0.weight"``, …)."""
    if isinstance(model, nn.Sequential):
        return model
    if isinstance(model, (list, tuple)) and model and all(isinstance(m, nn.Module) for m in model):
        return nn.Sequential(*model)
    raise ConfigError("model= takes an nn.Sequential or a non-empty list of nn.Module layers; for anything "
                      "else, write a model file (--model-file, docs/reference/cli.md 'Your own model')")


def own_classes(model: nn.Module | Sequence[nn.Module]) -> list[str]:
    """Names of the user's own module classes in ``model`` (layers, and layers of residual bodies and
    shortcuts, that are not exactly an allowlisted type), in order of first use; ``[]`` if describable."""
    found: list[str] = []

    def visit(m: nn.Module) -> None:
        if type(m) is Residual:
            for part in (m.body, m.shortcut):
                if type(part) is nn.Sequential:
                    for x in part:
                        visit(x)
                elif part is not None:
                    visit(part)
            return
        if type(m) not in _BY_CLASS and type(m).__qualname__ not in found:
            found.append(type(m).__qualname__)

    for m in as_sequential(model):
        visit(m)
    return found


def peer_refusal(classes: Sequence[str]) -> str:
    """Why a peer cannot build an :data:`OWN_MODULE` run's model, and what to do."""
    names = ", ".join(classes) if classes else "your own module classes"
    return (f"this run's model holds {names}, which trains in-process only: a peer (a node, launch) builds the "
            "model from a declarative spec and never from code; write it with allowlisted layers and residual "
            "blocks as a model file (--model-file, docs/reference/cli.md 'Your own model')")


def describe(model: nn.Module | Sequence[nn.Module]) -> list[Layer]:
    """The spec of ``model`` (see the module docstring); :class:`ConfigError` names a layer it cannot describe."""
    return [_describe(m, f"layer {i}") for i, m in enumerate(as_sequential(model))]


def _describe(m: nn.Module, label: str) -> Layer:
    if type(m) is Residual:
        return _describe_residual(m, label)
    name = _BY_CLASS.get(type(m))
    if name is None:
        raise ConfigError(
            f"{label} ({type(m).__name__}) is not an allowlisted layer ({', '.join(allowed_types())}), so the run "
            "could not rebuild it (load_run, evaluate, attacks, nodes build from a description, never from "
            "code): use allowlisted layers only, or write the model as a model file (--model-file)")
    _refuse_states(m, f"{label} ({name})")
    d: dict[str, Any] = {"type": name}
    for arg in LAYERS[name].args:
        d[arg] = _plain((getattr(m, arg, None) is not None) if arg == "bias" else getattr(m, arg))
    return parse_layer(d, label)


def _describe_residual(m: Residual, label: str) -> Layer:
    name = f"{label} ({RESIDUAL})"
    if not isinstance(m.body, nn.Sequential) or type(m.body) is not nn.Sequential:
        raise ConfigError(f"{name}: its body must be an nn.Sequential")
    out: Layer = {"type": RESIDUAL, "body": [_describe(x, f"{name} body layer {i}") for i, x in enumerate(m.body)]}
    if m.shortcut is not None:
        if type(m.shortcut) is not nn.Sequential:
            raise ConfigError(f"{name}: its shortcut must be None (identity) or an nn.Sequential")
        if len(m.shortcut):
            out["shortcut"] = [_describe(x, f"{name} shortcut layer {i}") for i, x in enumerate(m.shortcut)]
    return out


def _refuse_states(m: nn.Module, name: str) -> None:
    """Constructor options a model file cannot express."""
    if getattr(m, "return_indices", False):
        raise ConfigError(f"{name}: return_indices=True is not supported (the next layer would get a tuple)")
    if getattr(m, "divisor_override", None) is not None:
        raise ConfigError(f"{name}: divisor_override is not supported")
    size = getattr(m, "output_size", 1)
    if size is None or (isinstance(size, (tuple, list)) and any(s is None for s in size)):
        raise ConfigError(f"{name}: output_size with None entries is not supported; give every size")


def _plain(v: Any) -> Any:
    """Tuples (and ``torch.Size``) as lists, so the spec is JSON."""
    return [_plain(x) for x in v] if isinstance(v, (tuple, list)) else v


def check_rebuilt(given: nn.Module | Sequence[nn.Module], rebuilt: nn.Module) -> None:
    """The model rebuilt from the description must print like the given one (``inplace`` aside)."""
    want, got = _INPLACE.sub("", repr(as_sequential(given))), _INPLACE.sub("", repr(rebuilt))
    if want != got:
        raise ConfigError("the model rebuilt from its description differs from the one given (compare "
                          f"{want!r} with {got!r}); write it as a model file (--model-file)")
