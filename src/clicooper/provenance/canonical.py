"""Byte formats shared by the ledger and the watermark (docs/design/ledger.md#formats).

Everything that is hashed or signed in CliCooper goes through this module, so one file pins every byte:

- :func:`canonical_json` — RFC 8785 (JSON Canonicalization Scheme) bytes of a JSON value, via the
  ``rfc8785`` package. Non-finite floats, integers outside ±(2**53 − 1) and non-string keys are rejected.
- :func:`lp` — length-prefixed concatenation: each part is an 8-byte big-endian length followed by the
  part's bytes. ``str`` parts are UTF-8; ``int`` parts are their decimal ASCII form (so ``lp(1, 12)`` and
  ``lp(11, 2)`` differ, unlike the bare string ``"112"``).
- :func:`hkdf_sha256` — HKDF-SHA256 (RFC 5869) for keys and short streams (≤ 8160 bytes).
- :class:`KeyedStream` — an unbounded SHAKE-256 byte stream keyed by ``lp(domain, key)``, with unbiased
  integer, bit and sign sampling. Key-derived randomness (watermark bits, projections) comes from here,
  never from torch's or NumPy's generators, so any verifier on any device reproduces it.
- :func:`sha256_hex` — hex SHA-256.

Known-answer vectors for every function live in ``tests/test_provenance_formats.py``.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import rfc8785
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from clicooper.encoding import lp
from clicooper.errors import LedgerError

#: HKDF-SHA256 can produce at most 255 hash blocks.
HKDF_MAX_LENGTH = 255 * 32


def canonical_json(value: Any) -> bytes:
    """RFC 8785 canonical bytes of a JSON value (dicts with str keys, lists, str, int, float, bool, None).

    Raises :class:`LedgerError` when the value cannot be canonicalized (NaN/Inf, an integer outside the
    IEEE-754 safe range, a non-string key, an unsupported type).
    """
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as e:
        raise LedgerError(
            f"value cannot be written as canonical JSON (RFC 8785): {e}; use finite floats, integers "
            "below 2**53 and string keys"
        ) from e


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def hkdf_sha256(ikm: bytes, *, info: str | bytes, length: int = 32, salt: bytes | None = None) -> bytes:
    """HKDF-SHA256 (RFC 5869) of ``ikm`` with ``info`` (UTF-8 if str) and optional ``salt``.

    ``length`` must be in 1..8160. For longer streams use :class:`KeyedStream`.
    """
    if not 1 <= length <= HKDF_MAX_LENGTH:
        raise ValueError(f"HKDF-SHA256 length must be in 1..{HKDF_MAX_LENGTH}, got {length}")
    info_b = info.encode("utf-8") if isinstance(info, str) else bytes(info)
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info_b).derive(ikm)


class KeyedStream:
    """Deterministic unbounded byte stream: SHAKE-256 over ``lp("clicooper/xof", domain, key)``.

    Reads consume the stream in order, so the same sequence of calls on the same ``(key, domain)``
    gives the same values everywhere. Different domains give independent streams.
    """

    def __init__(self, key: bytes, domain: str) -> None:
        self._shake = hashlib.shake_256(lp("clicooper/xof", domain, key))
        self._pos = 0
        self._buf = b""

    def read(self, n: int) -> bytes:
        """Next ``n`` bytes of the stream."""
        if n < 0:
            raise ValueError("n must be non-negative")
        end = self._pos + n
        if end > len(self._buf):
            # SHAKE output is prefix-stable: digest(m) starts with digest(k) for k < m.
            self._buf = self._shake.digest(max(end, 2 * len(self._buf), 64))
        out = self._buf[self._pos : end]
        self._pos = end
        return out

    def uniform_ints(self, count: int, bound: int) -> np.ndarray:
        """``count`` independent uniform integers in ``[0, bound)`` (int64), by rejection sampling.

        Each candidate is a big-endian 64-bit word; words ≥ the largest multiple of ``bound`` below 2**64
        are rejected, so the result is exactly uniform.
        """
        if not 1 <= bound <= 2**62:
            raise ValueError(f"bound must be in 1..2**62, got {bound}")
        limit = (2**64 // bound) * bound
        out = np.empty(count, dtype=np.int64)
        filled = 0
        while filled < count:
            need = count - filled
            words = np.frombuffer(self.read(8 * need), dtype=">u8")
            if limit < 2**64:
                words = words[words < np.uint64(limit)]
            take = words[:need]
            out[filled : filled + len(take)] = (take % np.uint64(bound)).astype(np.int64)
            filled += len(take)
        return out

    def bits(self, count: int) -> np.ndarray:
        """``count`` independent fair bits as uint8 0/1 (big-endian bit order within each byte)."""
        raw = np.frombuffer(self.read(math.ceil(count / 8)), dtype=np.uint8)
        return np.unpackbits(raw)[:count]

    def signs(self, count: int) -> np.ndarray:
        """``count`` independent fair ±1 values as int8 (bit 1 → +1, bit 0 → −1)."""
        return (self.bits(count).astype(np.int8) * 2 - 1).astype(np.int8)
