"""A second implementation of the ledger format, written from docs/ledger-format.md alone.

It imports nothing from clicooper: only the standard library, ``cryptography`` (Ed25519), ``rfc8785`` (RFC 8785
JSON) and ``blake3``. ``make_vectors.py`` builds the test vectors with it, and ``tests/test_ledger_vectors.py``
checks that clicooper's own functions give the same bytes and that ``clicooper verify`` gives the verdicts
the spec predicts. Section numbers (§) refer to docs/ledger-format.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# ------------------------------------------------------------------------------------ §2 primitives


def lp(*parts: int | str | bytes) -> bytes:
    """§2.2: per part an 8-byte big-endian length, then the bytes (int: decimal ASCII, str: UTF-8)."""
    out = b""
    for x in parts:
        if isinstance(x, bool):
            raise TypeError("bool is not a part")
        b = str(x).encode("ascii") if isinstance(x, int) else x.encode("utf-8") if isinstance(x, str) else bytes(x)
        out += struct.pack(">Q", len(b)) + b
    return out


def jcs(value: Any) -> bytes:
    """§2.1: RFC 8785."""
    return rfc8785.dumps(value)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def hkdf_sha256(ikm: bytes, info: bytes, length: int = 32) -> bytes:
    """§2.4: RFC 5869 with no salt (HashLen zero bytes)."""
    prk = hmac.new(b"\0" * 32, ikm, hashlib.sha256).digest()
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


class Stream:
    """§2.5: SHAKE-256 over lp("clicooper/xof", domain, key), read in order."""

    def __init__(self, key: bytes, domain: str) -> None:
        self.seed = lp("clicooper/xof", domain, key)
        self.pos = 0
        self.rejected = 0

    def read(self, n: int) -> bytes:
        out = hashlib.shake_256(self.seed).digest(self.pos + n)[self.pos:]
        self.pos += n
        return out

    def uniform(self, count: int, bound: int) -> list[int]:
        limit = (2**64 // bound) * bound
        out = []
        while len(out) < count:
            w = int.from_bytes(self.read(8), "big")
            if w >= limit:
                self.rejected += 1
                continue
            out.append(w % bound)
        return out

    def bits(self, count: int) -> list[int]:
        raw = self.read(math.ceil(count / 8))
        return [(raw[i // 8] >> (7 - i % 8)) & 1 for i in range(count)]

    def signs(self, count: int) -> list[int]:
        return [2 * b - 1 for b in self.bits(count)]


# ------------------------------------------------------------------------------------- §3 identities


class Key:
    """An Ed25519 key from a 32-byte seed (§3)."""

    def __init__(self, seed: bytes) -> None:
        self.sk = Ed25519PrivateKey.from_private_bytes(seed)
        self.pk = self.sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def party_id(self) -> str:
        return sha256(self.pk)[:16].hex()

    def sign(self, data: bytes) -> bytes:
        return self.sk.sign(data)


def vector_key(label: str) -> Key:
    """The fixed keys of the vectors: seed = SHA-256(lp("clicooper/test-vector/key", label))."""
    return Key(sha256(lp("clicooper/test-vector/key", label)))


# ---------------------------------------------------------------------------------------- §5 entries


def body_of(entry: dict[str, Any]) -> dict[str, Any]:
    """§5: the entry without "signature" / "signatures"."""
    return {k: v for k, v in entry.items() if k not in ("signature", "signatures")}


def signing_bytes(entry: dict[str, Any]) -> bytes:
    """§5.4: lp("clicooper/ledger/<type>", JCS(body))."""
    return lp(f"clicooper/ledger/{entry['type']}", jcs(body_of(entry)))


def run_id(genesis: dict[str, Any]) -> str:
    return sha256(jcs(body_of(genesis))).hex()


def entry_hash(entry: dict[str, Any]) -> str:
    return sha256(jcs(entry)).hex()


def multi_sign(entry: dict[str, Any], keys: Sequence[Key]) -> dict[str, Any]:
    msg = signing_bytes(entry)
    return {**body_of(entry), "signatures": [{"party_id": k.party_id, "signature": k.sign(msg).hex()}
                                             for k in keys]}


def sign_stage(entry: dict[str, Any], key: Key) -> dict[str, Any]:
    return {**body_of(entry), "signature": key.sign(signing_bytes(entry)).hex()}


# ------------------------------------------------------------------------------------ §6 safetensors

DTYPES = {"F64": ("d", 8), "F32": ("f", 4), "I64": ("q", 8), "I32": ("i", 4), "U8": ("B", 1)}
#: §6.2: rank of each dtype in the tensor order (higher first).
DTYPE_RANK = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64",
              "I64", "U64"]


@dataclass
class Tensor:
    dtype: str
    shape: list[int]
    values: list[float] | list[int]

    def data(self) -> bytes:
        fmt, _ = DTYPES[self.dtype]
        return struct.pack(f"<{len(self.values)}{fmt}", *self.values)


def safetensors_bytes(tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """§6.2: header (JSON, tensors by descending dtype rank then name, offsets into the data), padded with
    spaces to a multiple of 8, after its 8-byte little-endian length; then the data, in header order."""
    order = sorted(tensors, key=lambda n: (-DTYPE_RANK.index(tensors[n].dtype), n))
    header: dict[str, Any] = {} if metadata is None else {"__metadata__": metadata}
    data, offset = b"", 0
    for name in order:
        t = tensors[name]
        raw = t.data()
        header[name] = {"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def segment_commitment(tensors: dict[str, Tensor]) -> str:
    """§6.3: SHA-256 of the canonical form (no metadata)."""
    return sha256(safetensors_bytes(tensors)).hex()


def f32(x: float) -> float:
    """``x`` rounded to IEEE float32."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


# ---------------------------------------------------------------------------- §7, §8, §9 the rest


def dataset_commitment(secret: bytes, tensors: dict[str, tuple[str, Tensor]], ids: Tensor) -> str:
    """§8.2: HMAC-SHA256(secret, lp("clicooper/dataset") ‖ per name: lp(name) lp(dtype) lp(shape) lp(raw) ‖
    lp("ids") ‖ the ids likewise); dtype written as PyTorch names it ("torch.float32")."""
    def parts(torch_dtype: str, t: Tensor) -> bytes:
        return lp(torch_dtype) + lp(",".join(str(s) for s in t.shape)) + lp(t.data())
    mac = hmac.new(secret, lp("clicooper/dataset"), hashlib.sha256)
    for name in sorted(tensors):
        mac.update(lp(name) + parts(*tensors[name]))
    mac.update(lp("ids") + parts("torch.int64", ids))
    return mac.hexdigest()


def transcript_by_position(messages: Sequence[bytes]) -> str:
    """§7.3 (position form, as the simulator keeps it): BLAKE3(lp("clicooper/transcript") ‖ lp(m) …)."""
    import blake3

    h = blake3.blake3(lp("clicooper/transcript"))
    for m in messages:
        h.update(lp(m))
    return h.hexdigest()


def transcript_by_name(messages: Sequence[bytes]) -> str:
    """§7.3 (name form, as the parties keep it): BLAKE3 over the messages' canonical bytes."""
    import blake3

    h = blake3.blake3()
    for m in messages:
        h.update(m)
    return h.hexdigest()


def wm_signature(key: Key, rid: str, r: int, p: int, anchor: str) -> bytes:
    """§9.1: sig = Sign(lp("clicooper-wm", run_id (32 raw bytes), r, p, anchor (32 raw bytes)))."""
    return key.sign(lp("clicooper-wm", bytes.fromhex(rid), r, p, bytes.fromhex(anchor)))


def wm_key(sig: bytes) -> bytes:
    return hkdf_sha256(sig, b"clicooper/wm-key")


def wm_commitment(sig: bytes) -> str:
    return sha256(lp("clicooper/wm-commit", sig)).hex()


@dataclass
class Mark:
    bits: list[int]
    indices: list[list[int]]
    signs: list[list[int]]


def derive_mark(key: bytes, n: int, m: int, num_weights: int) -> Mark:
    """§9.2: bits, then n·m indices and n·m signs, each from its own stream, row-major (bit i, then j)."""
    bits = Stream(key, "clicooper/wm-bits").bits(n)
    idx = Stream(key, "clicooper/wm-indices").uniform(n * m, num_weights)
    sg = Stream(key, "clicooper/wm-signs").signs(n * m)
    return Mark(bits, [idx[i * m:(i + 1) * m] for i in range(n)], [sg[i * m:(i + 1) * m] for i in range(n)])


def projections(mark: Mark, w: Sequence[float]) -> list[float]:
    """§9.3: y_i = Σ_j s_ij · w[idx_ij]."""
    return [sum(s * w[k] for s, k in zip(sg, ix, strict=True)) for sg, ix in zip(mark.signs, mark.indices, strict=True)]


def wrong_bits(mark: Mark, w: Sequence[float]) -> int:
    return sum(int((y > 0) != bool(b)) for y, b in zip(projections(mark, w), mark.bits, strict=True))


def tau(n: int) -> int:
    """§9.4: the largest t with P[Binom(n, 1/2) ≤ t] < 2^-64 (−1 if none)."""
    acc, best = 0, -1
    for t in range(n + 1):
        acc += math.comb(n, t)
        if acc * 2**64 >= 2**n:
            return best
        best = t
    return best
