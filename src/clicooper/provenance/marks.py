"""Stage keys and marks (docs/design/mechanisms.md#dynamic-chained-keys): everything derived from a stage's signature.

``sig_{r,p}`` = the party's Ed25519 signature of ``lp("clicooper-wm", run_id, r, p, anchor_r)``; the secret
key ``k_{r,p}`` = HKDF-SHA256(sig, "clicooper/wm-key") and the public commitment ``c_{r,p}`` =
SHA-256(lp("clicooper/wm-commit", sig)) come from it. From ``k`` and the public :class:`MarkParams`, a
:class:`Mark`: target bits and a sparse ±1 projection over the segment's flattened weights (its *layout*),
drawn from SHAKE-256 streams so any verifier on any device reproduces it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from clicooper.errors import LedgerError
from clicooper.provenance.canonical import KeyedStream, hkdf_sha256, lp, sha256_hex
from clicooper.provenance.fields import check_hex
from clicooper.provenance.identity import Identity
from clicooper.provenance.identity import verify as verify_signature

SCHEME = "clicooper-sparse-pm1/v1"
Layout = tuple[tuple[str, int], ...]

# ------------------------------------------------------------------------------------------------ keys


def wm_message(run_id: str, round: int, position: int, anchor: str) -> bytes:
    """The bytes a party signs to get ``sig_{r,p}``: ``lp("clicooper-wm", run_id, r, p, anchor_r)``."""
    check_hex(run_id, 32, "run id")
    check_hex(anchor, 32, "anchor")
    if round < 0 or position < 0:
        raise LedgerError("round and position must be ≥ 0")
    return lp("clicooper-wm", bytes.fromhex(run_id), round, position, bytes.fromhex(anchor))


def key_from_signature(signature: bytes) -> bytes:
    """``k = HKDF-SHA256(sig, info="clicooper/wm-key")`` (32 bytes)."""
    return hkdf_sha256(signature, info="clicooper/wm-key", length=32)


def commitment_from_signature(signature: bytes) -> str:
    """``c = SHA-256(lp("clicooper/wm-commit", sig))``, hex — published in the stage entry."""
    return sha256_hex(lp("clicooper/wm-commit", signature))


@dataclass(frozen=True)
class StageKey:
    """The watermark secret of one stage: its signature, and the key and commitment derived from it."""

    round: int
    position: int
    signature: bytes

    @property
    def key(self) -> bytes:
        """Secret watermark key ``k_{r,p}``."""
        return key_from_signature(self.signature)

    @property
    def commitment(self) -> str:
        """Public key commitment ``c_{r,p}``."""
        return commitment_from_signature(self.signature)


def derive_stage_key(identity: Identity, run_id: str, round: int, position: int, anchor: str) -> StageKey:
    """The stage key of ``identity`` for stage (round, position) with the round's anchor."""
    sig = identity.sign(wm_message(run_id, round, position, anchor))
    return StageKey(round, position, sig)


def stage_key_from_reveal(public_key: bytes, signature: bytes, run_id: str, round: int, position: int,
                          anchor: str) -> StageKey:
    """Check a revealed ``sig_{r,p}`` against the party's public key; raises :class:`LedgerError`."""
    verify_signature(public_key, signature, wm_message(run_id, round, position, anchor))
    return StageKey(round, position, signature)


# ------------------------------------------------------------------------------------- layout and marks


def layout_of(params: Mapping[str, torch.Tensor]) -> Layout:
    """``((name, numel), …)`` in sorted-name order: the coordinates of the flattened weight vector."""
    return tuple((name, int(params[name].numel())) for name in sorted(params))


def module_layout(module: nn.Module) -> Layout:
    """Layout of a module's parameters (buffers excluded)."""
    return layout_of(dict(module.named_parameters()))


def flatten_params(params: Mapping[str, torch.Tensor], layout: Layout) -> torch.Tensor:
    """Concatenate the tensors named in ``layout``, flattened, in layout order (keeps autograd)."""
    parts = []
    for name, numel in layout:
        t = params.get(name)
        if t is None:
            raise LedgerError(f"parameter {name!r} of the watermark layout is missing from the model")
        if t.numel() != numel:
            raise LedgerError(f"parameter {name!r} has {t.numel()} values, the watermark layout says {numel}")
        parts.append(t.reshape(-1))
    return torch.cat(parts)


@dataclass(frozen=True)
class MarkParams:
    """Public watermark parameters of a stage, written in its ledger entry (``watermark`` field)."""

    n_bits: int
    subset_size: int
    lam: float
    layout: Layout
    retained_rounds: tuple[int, ...] = ()
    extra_steps: int = 0
    scheme: str = SCHEME

    @property
    def num_weights(self) -> int:
        """|w|: length of the flattened weight vector."""
        return sum(n for _, n in self.layout)

    def to_json(self) -> dict[str, Any]:
        """JSON form for the ledger entry."""
        return {
            "scheme": self.scheme,
            "n_bits": self.n_bits,
            "subset_size": self.subset_size,
            "lambda": self.lam,
            "layout": [[name, n] for name, n in self.layout],
            "retained_rounds": list(self.retained_rounds),
            "extra_steps": self.extra_steps,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> MarkParams:
        """Parse the ``watermark`` field of a stage entry; raises :class:`LedgerError`."""
        try:
            if obj["scheme"] != SCHEME:
                raise LedgerError(f"unknown watermark scheme {obj['scheme']!r}; this build knows {SCHEME}")
            p = cls(
                n_bits=int(obj["n_bits"]), subset_size=int(obj["subset_size"]), lam=float(obj["lambda"]),
                layout=tuple((str(a), int(b)) for a, b in obj["layout"]),
                retained_rounds=tuple(int(r) for r in obj["retained_rounds"]),
                extra_steps=int(obj["extra_steps"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, LedgerError):
                raise
            raise LedgerError(f"malformed watermark parameters: {e!r}") from e
        if p.n_bits < 1 or p.subset_size < 1 or p.num_weights < 1:
            raise LedgerError("watermark parameters must have n_bits, subset_size and layout size ≥ 1")
        return p


@dataclass(frozen=True)
class Mark:
    """One stage's mark: target bits and its sparse ±1 projection."""

    round: int
    position: int
    bits: torch.Tensor  # (n,) float32 in {0, 1}
    indices: torch.Tensor  # (n, m) int64 into the flattened weights
    signs: torch.Tensor  # (n, m) float32 in {-1, +1}
    layout: Layout

    @classmethod
    def derive(cls, stage_key: StageKey, params: MarkParams) -> Mark:
        """Derive the mark of a stage from its key and public parameters (device-independent)."""
        key = stage_key.key
        n, m, w = params.n_bits, params.subset_size, params.num_weights
        bits = KeyedStream(key, "clicooper/wm-bits").bits(n)
        idx = KeyedStream(key, "clicooper/wm-indices").uniform_ints(n * m, w).reshape(n, m)
        signs = KeyedStream(key, "clicooper/wm-signs").signs(n * m).reshape(n, m)
        return cls(
            round=stage_key.round, position=stage_key.position,
            bits=torch.from_numpy(bits.astype("float32")),
            indices=torch.from_numpy(idx.copy()),
            signs=torch.from_numpy(signs.astype("float32")),
            layout=params.layout,
        )

    @property
    def n_bits(self) -> int:
        """Number of bits."""
        return int(self.bits.numel())

    def project(self, flat: torch.Tensor) -> torch.Tensor:
        """``y = X·w`` for a flattened weight vector ``flat`` (differentiable). Shape (n,)."""
        idx = self.indices.to(flat.device)
        return (flat[idx] * self.signs.to(flat.device, flat.dtype)).sum(dim=1)

    def extract(self, flat: torch.Tensor) -> torch.Tensor:
        """``b̂ = 1[X·w > 0]`` as float 0/1, shape (n,)."""
        return (self.project(flat.detach()) > 0).float().cpu()

    def errors(self, flat: torch.Tensor) -> int:
        """Number of wrong bits in ``flat``."""
        return int((self.extract(flat) != self.bits).sum())

    def ber(self, flat: torch.Tensor) -> float:
        """Bit error rate in ``flat``."""
        return self.errors(flat) / self.n_bits

    def errors_in(self, params: Mapping[str, torch.Tensor]) -> int:
        """Wrong bits in a state dict or named-parameter mapping (uses this mark's layout)."""
        return self.errors(flatten_params(params, self.layout))
