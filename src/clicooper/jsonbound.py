"""JSON read from another party or from disk, parsed with a bound on its size and its nesting depth.

``json.loads`` recurses once per nesting level: 200,000 ``[`` make it raise ``RecursionError``, and a
value a few hundred levels deep passes it only to crash the recursive code that walks it next (schema
checks, canonical re-encoding). :func:`loads` refuses both before parsing, with a ``ValueError`` (the
caller turns it into its own error class, e.g. ``LedgerError``), in time linear in the text's size: the
strings are cut out with one regular expression, the brackets of what is left are counted.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

#: deep enough for every file CliCooper writes (a model spec nests residual blocks 8 deep: about 20)
MAX_DEPTH = 64
# a string runs to its closing quote or, unterminated, to the end (so no quote is scanned twice: linear)
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*(?:"|\\?\Z)', re.DOTALL)
_BRACKETS = bytes(range(256)).translate(None, b"[]{}")  # every byte but the four brackets
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class JSONBoundError(ValueError):
    """A JSON text is larger or nested deeper than allowed (a ``ValueError``, as ``json.JSONDecodeError``)."""


def depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text ``data`` (brackets inside strings not counted)."""
    brackets = _STRING.sub(b"", data).translate(None, _BRACKETS)
    if len(brackets) <= 1:
        return len(brackets)
    return max(accumulate(_STEP[b] for b in brackets))


def loads(data: bytes | str, *, max_bytes: int, max_depth: int = MAX_DEPTH, what: str = "the JSON text") -> Any:
    """``json.loads(data)`` if ``data`` has at most ``max_bytes`` bytes (UTF-8) and ``max_depth`` nested
    levels; else :class:`JSONBoundError` naming ``what`` and the bound. Invalid JSON raises
    ``json.JSONDecodeError`` and invalid UTF-8 ``UnicodeDecodeError`` (both ``ValueError``), never
    ``RecursionError``."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise JSONBoundError(f"{what} has {len(raw):,} bytes, more than the {max_bytes:,} allowed")
    d = depth(raw)
    if d > max_depth:
        raise JSONBoundError(f"{what} is nested {d} levels deep, more than the {max_depth} allowed")
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:  # unreachable under the depth bound; kept so no caller ever sees one
        raise JSONBoundError(f"{what} is nested too deep to parse") from None


#: a JSON file of a run directory (config, plan, metrics, reveal): far above what CliCooper writes
MAX_FILE_BYTES = 64 << 20


def read_bytes(path: Any, max_bytes: int) -> bytes:
    """At most ``max_bytes`` bytes of file ``path`` (``OSError`` as ``open`` raises it; :class:`JSONBoundError`
    when the file is longer: it is never read whole)."""
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise JSONBoundError(f"{path} is larger than the {max_bytes:,} bytes allowed")
    return data


def load_file(path: Any, *, max_bytes: int = MAX_FILE_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of file ``path``, bounded as :func:`loads` (``OSError`` when it cannot be read)."""
    return loads(read_bytes(path, max_bytes), max_bytes=max_bytes, max_depth=max_depth, what=str(path))
