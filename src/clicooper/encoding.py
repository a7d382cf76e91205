"""The one length-prefixed encoding that every hashed, signed or PRF'd concatenation uses (docs/design/ledger.md#formats).

``lp(a, b) = len(a) ‖ a ‖ len(b) ‖ b`` with 8-byte big-endian lengths, so (1, 12) and (11, 2) never collide.
``int`` parts are decimal ASCII (``-3`` → ``b"-3"``), ``str`` is UTF-8, ``bytes`` as is. The ledger
(:mod:`clicooper.provenance.canonical`) and the DO's keyed PRFs (:mod:`clicooper.privacy._keyed`) both
use it; known-answer tests in each pin the bytes.
"""

from __future__ import annotations

Part = bytes | bytearray | str | int


def part_bytes(part: Part) -> bytes:
    """Bytes of one part; ``bool`` is refused (it is an ``int`` and would silently become ``b"1"``)."""
    if isinstance(part, bool):
        raise TypeError("lp(): bool parts are ambiguous; pass an int or a str")
    if isinstance(part, int):
        return str(part).encode("ascii")
    if isinstance(part, str):
        return part.encode("utf-8")
    if isinstance(part, bytes | bytearray):
        return bytes(part)
    raise TypeError(f"lp(): unsupported part type {type(part).__name__}; pass bytes, str or int")


def lp(*parts: Part) -> bytes:
    """Length-prefixed concatenation: for each part, 8-byte big-endian length then the bytes."""
    out = bytearray()
    for part in parts:
        b = part_bytes(part)
        out += len(b).to_bytes(8, "big")
        out += b
    return bytes(out)
