"""The records a genesis is made of: each party (name, Ed25519 public key, chain positions, TLS pin) and
each party's signature on a multi-signed entry (genesis, closing), with their JSON forms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clicooper.errors import LedgerError
from clicooper.provenance.fields import get_field, hex_field, only_keys, str_field
from clicooper.provenance.identity import party_id


@dataclass(frozen=True)
class SignatureRecord:
    """One party's signature in a multi-signed entry (genesis, closing)."""

    party_id: str
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        """JSON form ``{"party_id", "signature"}``."""
        return {"party_id": self.party_id, "signature": self.signature.hex()}

    @classmethod
    def from_json(cls, obj: Any, what: str) -> SignatureRecord:
        """Parse and shape-check; raises :class:`LedgerError`."""
        if not isinstance(obj, dict):
            raise LedgerError(f"{what}: a signature record must be an object")
        only_keys(obj, {"party_id", "signature"}, what)
        return cls(hex_field(obj, "party_id", what, 16), bytes.fromhex(hex_field(obj, "signature", what, 64)))


@dataclass(frozen=True)
class PartyRecord:
    """A party as fixed by the genesis: name, Ed25519 public key, chain positions, TLS pin."""

    name: str
    public_key: bytes
    positions: tuple[int, ...]
    tls_fingerprint: str | None = None

    @property
    def party_id(self) -> str:
        """Party id derived from the public key."""
        return party_id(self.public_key)

    def to_json(self) -> dict[str, Any]:
        """JSON form (the party id is included so readers need not recompute it)."""
        return {
            "name": self.name,
            "party_id": self.party_id,
            "public_key": self.public_key.hex(),
            "positions": list(self.positions),
            "tls_fingerprint": self.tls_fingerprint,
        }

    @classmethod
    def from_json(cls, obj: Any, what: str) -> PartyRecord:
        """Parse and check that ``party_id`` matches ``public_key``."""
        if not isinstance(obj, dict):
            raise LedgerError(f"{what}: a party record must be an object")
        only_keys(obj, {"name", "party_id", "public_key", "positions", "tls_fingerprint"}, what)
        pk = bytes.fromhex(hex_field(obj, "public_key", what, 32))
        pos = get_field(obj, "positions", what)
        if not isinstance(pos, list) or not pos or any(isinstance(p, bool) or not isinstance(p, int)
                                                       or p < 0 for p in pos):
            raise LedgerError(f"{what}: 'positions' must be a non-empty list of integers ≥ 0")
        tls = obj.get("tls_fingerprint")
        if tls is not None and not isinstance(tls, str):
            raise LedgerError(f"{what}: 'tls_fingerprint' must be a string or null")
        rec = cls(str_field(obj, "name", what), pk, tuple(pos), tls)
        if hex_field(obj, "party_id", what, 16) != rec.party_id:
            raise LedgerError(f"{what}: party_id does not match the SHA-256 of its public key")
        return rec
