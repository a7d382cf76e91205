"""Keyed randomness shared by the privacy mechanisms (bookkeeping-free primitives).

Every random choice the data owner (DO) makes from a secret goes through this module, so there is one
place that fixes the byte formats (docs/design/ledger.md#formats):

* every concatenation that is hashed is **length-prefixed**: ``lp(a, b) = len(a)‖a‖len(b)‖b`` with each
  length an 8-byte big-endian unsigned integer, and integers encoded as decimal ASCII, so ``(1, 12)`` and
  ``(11, 2)`` never collide;
* a keyed PRF is ``HMAC-SHA256(key, lp(tag, field_1, …))``; the tag is a fixed ``"clicooper/…"`` string, so
  the same key can serve several purposes without one output being another's (domain separation);
* an arbitrarily long keyed byte stream is ``SHAKE-256(HKDF-SHA256(ikm=key, salt=None, info, L=32))`` —
  never torch's or NumPy's generator, so any machine reproduces it;
* bulk keystreams (the activation noise) are ChaCha20 (RFC 7539, via ``cryptography``) under a per-item
  256-bit key from the PRF, nonce and counter zero.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from clicooper.encoding import lp
from clicooper.errors import PrivacyError

KEY_BYTES = 32
_ZERO_NONCE = bytes(16)  # cryptography's ChaCha20 nonce = 4-byte LE counter ‖ 12-byte nonce

Field = int | str | bytes


def prf(key: bytes, tag: str, *fields: Field) -> bytes:
    """``HMAC-SHA256(key, lp(tag, *fields))`` — 32 bytes."""
    return hmac.new(key, lp(tag, *fields), hashlib.sha256).digest()


def prf_many(key: bytes, tag: str, *fields: Field, last: Iterable[Field]) -> list[bytes]:
    """``[prf(key, tag, *fields, x) for x in last]``, absorbing the common prefix into HMAC once.

    ``lp`` is a plain concatenation of length-prefixed parts, so ``lp(tag, *fields, x) = lp(tag, *fields)
    ‖ lp(x)`` and a copy of the HMAC state after the prefix gives the same digest as :func:`prf`.
    """
    base = hmac.new(key, lp(tag, *fields), hashlib.sha256)
    out = []
    for x in last:
        h = base.copy()
        h.update(lp(x))
        out.append(h.digest())
    return out


def prf_u64(key: bytes, tag: str, *fields: Field) -> int:
    """The first 8 bytes of :func:`prf` as a big-endian unsigned integer."""
    return int.from_bytes(prf(key, tag, *fields)[:8], "big")


def hkdf32(key: bytes, info: bytes) -> bytes:
    """``HKDF-SHA256(ikm=key, salt=None, info=info, L=32)`` (RFC 5869)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


class KeyedStream:
    """Unbounded byte stream ``SHAKE-256(HKDF-SHA256(key, info))`` read front to back.

    SHAKE-256's output for a longer length extends the shorter one, so the stream can grow on demand
    (rejection sampling does not know in advance how many bytes it needs).
    """

    def __init__(self, key: bytes, info: bytes) -> None:
        self._xof = hashlib.shake_256(hkdf32(key, info))
        self._buf = b""
        self._pos = 0

    def read(self, n: int) -> bytes:
        """The next ``n`` bytes of the stream."""
        need = self._pos + n
        if need > len(self._buf):
            self._buf = self._xof.digest(max(need, 2 * len(self._buf), 1024))
        out = self._buf[self._pos : need]
        self._pos = need
        return out

    def uniform_below(self, bound: int) -> int:
        """A uniform integer in ``[0, bound)`` from 4-byte big-endian words, by rejection sampling."""
        if not 0 < bound <= 2**32:
            raise ValueError("bound must be in (0, 2**32]")
        limit = 2**32 - (2**32 % bound)  # largest multiple of bound ≤ 2**32: no modulo bias
        while True:
            w = int.from_bytes(self.read(4), "big")
            if w < limit:
                return w % bound


def chacha20_keystreams(
    keys: Sequence[bytes], nbytes: int, *, out: bytearray | memoryview | None = None
) -> bytearray | memoryview:
    """Concatenated ChaCha20 keystreams, ``nbytes`` per key (nonce and counter zero).

    ``out``, if given, is a writable buffer of at least ``len(keys) * nbytes`` bytes that receives the
    keystreams (its first ``len(keys) * nbytes`` bytes) and is returned; otherwise a new ``bytearray``.
    """
    total = len(keys) * nbytes
    if out is None:
        out = bytearray(total)
    view = memoryview(out).cast("B")
    if len(view) < total:
        raise ValueError(f"out holds {len(view)} bytes; {total} needed")
    zeros = bytes(nbytes)
    for i, k in enumerate(keys):
        enc = Cipher(algorithms.ChaCha20(k, _ZERO_NONCE), mode=None).encryptor()
        enc.update_into(zeros, view[i * nbytes : (i + 1) * nbytes])  # no per-key copy or join
    return out


def check_key(key: object, what: str) -> bytes:
    """Return ``key`` as bytes if it is exactly :data:`KEY_BYTES` long, else raise ``PrivacyError``."""
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        got = f"{len(key)} bytes" if isinstance(key, bytes | bytearray) else type(key).__name__
        raise PrivacyError(
            f"{what} must be {KEY_BYTES} bytes, got {got}; load it with "
            "clicooper.privacy.load_secret(run_dir, name) (tests: pass a fixed 32-byte value)"
        )
    return bytes(key)


def as_int_list(values: Iterable[int]) -> list[int]:
    """Plain Python ints (from a tensor, array or sequence)."""
    return [int(v) for v in values]
