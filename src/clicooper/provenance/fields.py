"""Shape checks of the JSON fields of ledger entries and watermark inputs: each returns the value when it
is well formed and raises :class:`~clicooper.errors.LedgerError`, naming the entry and the field, when not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from clicooper.errors import LedgerError

_HEX = re.compile(r"^[0-9a-f]*$")


def get_field(obj: Mapping[str, Any], key: str, what: str) -> Any:
    """``obj[key]``; a missing field raises."""
    if key not in obj:
        raise LedgerError(f"{what}: missing field {key!r}")
    return obj[key]


def int_field(obj: Mapping[str, Any], key: str, what: str, *, minimum: int = 0) -> int:
    """An integer field (not a bool) ≥ ``minimum``."""
    v = get_field(obj, key, what)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise LedgerError(f"{what}: field {key!r} must be an integer ≥ {minimum}, got {v!r}")
    return v


def str_field(obj: Mapping[str, Any], key: str, what: str) -> str:
    """A non-empty string field."""
    v = get_field(obj, key, what)
    if not isinstance(v, str) or not v:
        raise LedgerError(f"{what}: field {key!r} must be a non-empty string, got {v!r}")
    return v


def check_hex(value: Any, nbytes: int, what: str) -> str:
    """Return ``value`` if it is lower-case hex of exactly ``nbytes`` bytes, else raise LedgerError."""
    if not isinstance(value, str) or len(value) != 2 * nbytes or not _HEX.match(value):
        raise LedgerError(f"{what}: expected {nbytes} bytes of lower-case hex, got {value!r}")
    return value


def hex_field(obj: Mapping[str, Any], key: str, what: str, nbytes: int) -> str:
    """A field of exactly ``nbytes`` bytes of lower-case hex."""
    return check_hex(get_field(obj, key, what), nbytes, f"{what}: field {key!r}")


def only_keys(obj: Mapping[str, Any], keys: set[str], what: str) -> None:
    """Raise if ``obj`` has a field outside ``keys``."""
    extra = set(obj) - keys
    if extra:
        raise LedgerError(f"{what}: unknown field(s) {sorted(extra)}")
