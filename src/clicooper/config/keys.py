"""Every settable key of a run config, read from the pydantic models themselves.

The CLI sets any of them with ``--set KEY=VALUE`` and lists them with ``clicooper fields``; both walk the
models here instead of naming fields by hand, so a new field of :class:`~clicooper.config.run.RunConfig`
(or of one of its tables) is settable from the command line, with its description, without a CLI edit.
The defences are the exception by design: ``defenses`` is a list of typed specs, set per kind with
``--with KIND:key=value`` (:func:`defense_keys`).
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from clicooper.config.defenses import defense_kinds, spec_type


@dataclass(frozen=True)
class ConfigKey:
    """One settable value: its dotted key, its type and default as text, and its field's description."""

    key: str
    type: str
    default: str
    description: str


def table_of(annotation: Any) -> type[BaseModel] | dict[str, Any] | None:
    """What a field's dotted keys continue into: its pydantic table, ``{}`` for a free-keyed dict, ``None``
    for a plain value (``X | None`` unwrapped)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return table_of(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            sub = table_of(arg)
            if sub is not None:
                return sub
        return None
    if origin is dict:
        return {}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _type_text(annotation: Any) -> str:
    """A short, readable type: ``int``, ``float | None``, ``'adam' | 'sgd'``, ``list[float] | None``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_text(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    if origin is list and table_of(typing.get_args(annotation)[0]) is not None:
        return "list of tables"  # `defenses`: specs told apart by kind
    if origin is typing.Annotated:
        return _type_text(typing.get_args(annotation)[0])
    if origin is not None:  # list[float], tuple[int, int], dict[str, …]: the annotation's own spelling
        return str(annotation).replace("typing.", "")
    return getattr(annotation, "__name__", str(annotation))


def _default_text(field: FieldInfo) -> str:
    if field.default is PydanticUndefined:
        return "{}" if field.default_factory is dict else "[]" if field.default_factory is list else "(required)"
    if isinstance(field.default, BaseModel):
        return "(table)"
    return repr(field.default)


def _describe(model: type[BaseModel], name: str, field: FieldInfo) -> str:
    """The field's description; a table's undescribed ``enabled`` switch borrows the table's own summary."""
    if field.description:
        return field.description
    if name == "enabled" and model.__doc__:
        return "switch: " + model.__doc__.strip().splitlines()[0]
    return ""


def config_keys(model: type[BaseModel] | None = None, prefix: str = "") -> list[ConfigKey]:
    """Every leaf key of ``model`` (default :class:`RunConfig`) in field order, tables walked into with
    dotted names (``data.workers``, ``detection.threshold``); a free-keyed dict such as ``party_devices``
    is one key (``--set party_devices.T1=cuda`` reaches its entries)."""
    if model is None:
        from clicooper.config.run import RunConfig  # here, not at the top: run.py is this module's user

        model = RunConfig
    keys: list[ConfigKey] = []
    for name, field in model.model_fields.items():
        key = prefix + name
        sub = table_of(field.annotation)
        if isinstance(sub, type):
            keys += config_keys(sub, key + ".")
        else:
            keys.append(ConfigKey(key, _type_text(field.annotation), _default_text(field), _describe(model, name, field)))
    return keys


def defense_keys() -> list[ConfigKey]:
    """Every setting of every registered defence (built-in or installed), keyed ``KIND:name`` as
    ``--with KIND:name=VALUE`` takes it."""
    keys: list[ConfigKey] = []
    for kind in defense_kinds():
        try:
            cls = spec_type(kind)
        except ValueError as e:  # a broken installed package: listed with why, the rest still shown
            keys.append(ConfigKey(f"{kind}:", "", "", str(e)))
            continue
        for name, field in cls.model_fields.items():
            if name != "kind":
                keys.append(ConfigKey(f"{kind}:{name}", _type_text(field.annotation), _default_text(field),
                                      field.description or ""))
    return keys
