"""JSON Schemas of the ledger entries and of reveal files (docs/ledger-format.md), and the format version.

One schema file per entry type in ``provenance/schemas/`` (``genesis``, ``stage``, ``closing``) plus
``reveal``; JSON Schema draft 2020-12, every object closed except a stage's ``metrics``. They are the
normative shape of each line: :func:`check_entry` runs before an entry is parsed, so a malformed line is
reported with the JSON path of the offending value, the same way for every field. What a schema cannot say
(a party id is the hash of its key, positions are 0 … N−1, a signature verifies) is checked by the entries
and the chain.

The format version lives in the genesis (``"version": 1``, :data:`FORMAT_VERSION`): every later entry of a
ledger has the format of its genesis. A genesis of another version is refused *before* its schema, with
:class:`FormatVersionError`, so a verifier meeting a future format says so instead of reporting corruption.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator

from clicooper.errors import LedgerError

#: The ledger format this build reads and writes (the genesis' ``version``).
FORMAT_VERSION = 1
ENTRY_TYPES = ("genesis", "stage", "closing", "accusation")
SCHEMA_NAMES = (*ENTRY_TYPES, "reveal")


class FormatVersionError(LedgerError):
    """A ledger of a format version this build does not know (a future format, not corruption)."""


def schema_text(name: str) -> str:
    """The text of schema ``name`` (``genesis``, ``stage``, ``closing`` or ``reveal``)."""
    if name not in SCHEMA_NAMES:
        raise ValueError(f"no schema {name!r}; one of {SCHEMA_NAMES}")
    return resources.files("clicooper.provenance").joinpath("schemas", f"{name}.schema.json").read_text("utf-8")


@cache
def _validator(name: str) -> Draft202012Validator:
    schema = json.loads(schema_text(name))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def schema_problem(name: str, obj: Any) -> str | None:
    """The first violation of schema ``name`` by ``obj`` ("at /path: reason"), or ``None``.

    "First" is the violation at the shortest, then lexicographically smallest, JSON path, so the message
    does not depend on the validator's traversal order.
    """
    errors = list(_validator(name).iter_errors(obj))
    if not errors:
        return None
    e = min(errors, key=lambda x: (len(x.absolute_path), [str(p) for p in x.absolute_path], x.message))
    path = "/" + "/".join(str(p) for p in e.absolute_path)
    return f"at {path}: {e.message}"


def check_entry(obj: Any) -> None:
    """Raise :class:`LedgerError` unless ``obj`` is a ledger entry of this format version.

    Order: a JSON object, a known ``type``; for a genesis its ``version`` (:class:`FormatVersionError` if
    it is not :data:`FORMAT_VERSION`); then the type's schema.
    """
    if not isinstance(obj, dict):
        raise LedgerError("a ledger entry must be a JSON object")
    kind = obj.get("type")
    if kind not in ENTRY_TYPES:
        raise LedgerError(f"unknown entry type {kind!r}; expected genesis, stage, closing or accusation")
    if kind == "genesis" and obj.get("version") != FORMAT_VERSION:
        raise FormatVersionError(
            f"ledger format version {obj.get('version')!r}; this build reads version {FORMAT_VERSION} "
            "(docs/ledger-format.md §12): use a clicooper that knows that version")
    problem = schema_problem(kind, obj)
    if problem is not None:
        raise LedgerError(f"{kind} entry does not match {kind}.schema.json {problem}")


def check_reveal_shape(obj: Any) -> None:
    """Raise :class:`LedgerError` unless ``obj`` matches ``reveal.schema.json``."""
    problem = schema_problem("reveal", obj)
    if problem is not None:
        raise LedgerError(f"not a valid reveal file (reveal.schema.json {problem})")
