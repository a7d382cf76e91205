"""Typed ledger entries and their canonical bytes (docs/design/ledger.md#the-ledger, docs/design/ledger.md#formats).

Three entry types, each one JSON object per line of ``ledger.jsonl``, written as RFC 8785 canonical JSON:

``genesis``  ``{"type":"genesis","version":1,"config_hash","dataset_commitment","architecture_hash",
             "planned_rounds","topology","nonce","parties":[{"name","party_id","public_key","positions",
             "tls_fingerprint"}…],"signatures":[{"party_id","signature"}…]}`` — signed by **every** party.
``stage``    ``{"type":"stage","run_id","round","position","party_id","prev","start","end","transcripts",
             "watermark","key_commitment","metrics","signature"}`` — signed by the party holding
             ``position``.
``closing``  ``{"type":"closing","run_id","prev","rounds_completed","final_commitments","signatures"}`` —
             signed by every party.

Hashes and signatures:

- the **body** of an entry is its JSON object without ``signature`` / ``signatures``;
- a party signs ``lp("clicooper/ledger/<type>", canonical_json(body))`` (domain separated, so a ledger
  signature can never double as a watermark signature or another entry type's signature);
- ``run_id`` = SHA-256 of ``canonical_json(genesis body)`` — known before anyone signs;
- :func:`entry_hash` (used for ``prev`` and for watermark anchors) = SHA-256 of
  ``canonical_json(full entry)``, signatures included.

Binary values are lower-case hex; ``transcripts`` maps ``"<peer>:sent"`` / ``"<peer>:recv"`` to a 32-byte
hex digest, the peer named either by its position (``"2:sent"``, per-position links, see
:mod:`clicooper.provenance.transcript`) or by its party name (``"T2:sent"``, per-party links, as
:class:`clicooper.parties.base.PartyBase` keeps them).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from clicooper.errors import LedgerError
from clicooper.provenance.accusation import Accusation
from clicooper.provenance.canonical import canonical_json, lp, sha256_hex
from clicooper.provenance.fields import check_hex, get_field, hex_field, int_field, only_keys, str_field
from clicooper.provenance.identity import Identity
from clicooper.provenance.records import PartyRecord, SignatureRecord

__all__ = ["TOPOLOGIES", "VERSION", "Closing", "Entry", "Genesis", "PartyRecord", "SignatureRecord", "StageEntry",
           "check_hex", "entry_bytes", "entry_from_json", "entry_hash", "sign_multi"]

VERSION = 1
TOPOLOGIES = ("u-shape", "open-tail")
_TRANSCRIPT_KEY = re.compile(r"^(0|[1-9][0-9]*|[A-Za-z][A-Za-z0-9_.-]*):(sent|recv)$")


def _signing_bytes(body: Mapping[str, Any]) -> bytes:
    """``lp("clicooper/ledger/<type>", canonical_json(body))``: what an entry's signer(s) sign."""
    return lp(f"clicooper/ledger/{body['type']}", canonical_json(body))


@dataclass(frozen=True)
class Genesis:
    """First ledger entry: fixes the run and its parties; its body's hash is the run id."""

    config_hash: str
    dataset_commitment: str
    architecture_hash: str
    planned_rounds: int
    parties: tuple[PartyRecord, ...]
    topology: str = "u-shape"
    nonce: str = field(default_factory=lambda: os.urandom(16).hex())
    signatures: tuple[SignatureRecord, ...] = ()

    def __post_init__(self) -> None:
        what = "genesis"
        for name in ("config_hash", "dataset_commitment", "architecture_hash"):
            check_hex(getattr(self, name), 32, f"{what}: {name}")
        check_hex(self.nonce, 16, f"{what}: nonce")
        if self.planned_rounds < 1:
            raise LedgerError(f"{what}: planned_rounds must be ≥ 1")
        if self.topology not in TOPOLOGIES:
            raise LedgerError(f"{what}: topology must be one of {TOPOLOGIES}, got {self.topology!r}")
        if not self.parties:
            raise LedgerError(f"{what}: no parties")
        names = [p.name for p in self.parties]
        ids = [p.party_id for p in self.parties]
        if len(set(names)) != len(names) or len(set(ids)) != len(ids):
            raise LedgerError(f"{what}: party names and public keys must be unique")
        positions = sorted(q for p in self.parties for q in p.positions)
        if positions != list(range(len(positions))):
            raise LedgerError(
                f"{what}: positions {positions} must be 0..N-1, each held by exactly one party"
            )

    # ---- derived
    def body(self) -> dict[str, Any]:
        """JSON object without signatures (what the parties sign and the run id hashes)."""
        return {
            "type": "genesis",
            "version": VERSION,
            "config_hash": self.config_hash,
            "dataset_commitment": self.dataset_commitment,
            "architecture_hash": self.architecture_hash,
            "planned_rounds": self.planned_rounds,
            "topology": self.topology,
            "nonce": self.nonce,
            "parties": [p.to_json() for p in self.parties],
        }

    def to_json(self) -> dict[str, Any]:
        """Full JSON object (body + signatures)."""
        return {**self.body(), "signatures": [s.to_json() for s in self.signatures]}

    @property
    def run_id(self) -> str:
        """SHA-256 hex of the canonical body."""
        return sha256_hex(canonical_json(self.body()))

    def signing_bytes(self) -> bytes:
        """Bytes each party signs."""
        return _signing_bytes(self.body())

    @property
    def positions(self) -> list[int]:
        """All chain positions, sorted (0 … N-1)."""
        return sorted(q for p in self.parties for q in p.positions)

    def owner(self, position: int) -> PartyRecord:
        """The party holding ``position``; raises :class:`LedgerError` if none does."""
        for p in self.parties:
            if position in p.positions:
                return p
        raise LedgerError(f"position {position} is not in the genesis (positions {self.positions})")

    def party(self, pid: str) -> PartyRecord | None:
        """The party with id ``pid``, or ``None``."""
        for p in self.parties:
            if p.party_id == pid:
                return p
        return None

    def with_signatures(self, signatures: Sequence[SignatureRecord]) -> Genesis:
        """Copy with signatures, ordered as the parties are listed."""
        order = {p.party_id: i for i, p in enumerate(self.parties)}
        sigs = sorted(signatures, key=lambda s: order.get(s.party_id, len(order)))
        return replace(self, signatures=tuple(sigs))

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Genesis:
        """Parse a genesis object; raises :class:`LedgerError` on any malformed field."""
        what = "genesis"
        only_keys(obj, {"type", "version", "config_hash", "dataset_commitment", "architecture_hash",
                        "planned_rounds", "topology", "nonce", "parties", "signatures"}, what)
        if int_field(obj, "version", what) != VERSION:
            raise LedgerError(f"{what}: unsupported version {obj['version']}; this build reads {VERSION}")
        parties = get_field(obj, "parties", what)
        sigs = get_field(obj, "signatures", what)
        if not isinstance(parties, list) or not isinstance(sigs, list):
            raise LedgerError(f"{what}: 'parties' and 'signatures' must be lists")
        return cls(
            config_hash=hex_field(obj, "config_hash", what, 32),
            dataset_commitment=hex_field(obj, "dataset_commitment", what, 32),
            architecture_hash=hex_field(obj, "architecture_hash", what, 32),
            planned_rounds=int_field(obj, "planned_rounds", what, minimum=1),
            parties=tuple(PartyRecord.from_json(p, f"{what} party {i}") for i, p in enumerate(parties)),
            topology=str_field(obj, "topology", what),
            nonce=hex_field(obj, "nonce", what, 16),
            signatures=tuple(SignatureRecord.from_json(s, f"{what} signature {i}")
                             for i, s in enumerate(sigs)),
        )


@dataclass(frozen=True)
class StageEntry:
    """Ledger entry for stage (round, position), signed by the party holding the position."""

    run_id: str
    round: int
    position: int
    party_id: str
    prev: str
    start: str
    end: str
    transcripts: Mapping[str, str] = field(default_factory=dict)
    watermark: Mapping[str, Any] | None = None
    key_commitment: str | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    signature: bytes = b""

    def __post_init__(self) -> None:
        what = f"stage ({self.round}, {self.position})"
        for name, n in (("run_id", 32), ("party_id", 16), ("prev", 32), ("start", 32), ("end", 32)):
            check_hex(getattr(self, name), n, f"{what}: {name}")
        if self.round < 0 or self.position < 0:
            raise LedgerError(f"{what}: round and position must be ≥ 0")
        for k, v in self.transcripts.items():
            if not _TRANSCRIPT_KEY.match(k):
                raise LedgerError(
                    f"{what}: transcript key {k!r} must look like '<peer position or party name>:sent|recv'")
            check_hex(v, 32, f"{what}: transcript {k}")
        if (self.watermark is None) != (self.key_commitment is None):
            raise LedgerError(f"{what}: watermark parameters and key commitment go together")
        if self.key_commitment is not None:
            check_hex(self.key_commitment, 32, f"{what}: key_commitment")

    def body(self) -> dict[str, Any]:
        """JSON object without the signature."""
        return {
            "type": "stage",
            "run_id": self.run_id,
            "round": self.round,
            "position": self.position,
            "party_id": self.party_id,
            "prev": self.prev,
            "start": self.start,
            "end": self.end,
            "transcripts": dict(self.transcripts),
            "watermark": None if self.watermark is None else dict(self.watermark),
            "key_commitment": self.key_commitment,
            "metrics": dict(self.metrics),
        }

    def to_json(self) -> dict[str, Any]:
        """Full JSON object."""
        return {**self.body(), "signature": self.signature.hex()}

    def signing_bytes(self) -> bytes:
        """Bytes the position's party signs."""
        return _signing_bytes(self.body())

    def signed(self, identity: Identity) -> StageEntry:
        """Copy signed by ``identity`` (whose id must equal ``party_id``)."""
        if identity.party_id != self.party_id:
            raise LedgerError(
                f"stage ({self.round}, {self.position}) names party {self.party_id}, cannot be signed by "
                f"{identity.party_id}"
            )
        return replace(self, signature=identity.sign(self.signing_bytes()))

    @property
    def stage(self) -> tuple[int, int]:
        """``(round, position)``."""
        return (self.round, self.position)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> StageEntry:
        """Parse a stage object; raises :class:`LedgerError` on any malformed field."""
        what = "stage"
        only_keys(obj, {"type", "run_id", "round", "position", "party_id", "prev", "start", "end",
                        "transcripts", "watermark", "key_commitment", "metrics", "signature"}, what)
        tr = get_field(obj, "transcripts", what)
        wm = get_field(obj, "watermark", what)
        metrics = get_field(obj, "metrics", what)
        if not isinstance(tr, dict) or not isinstance(metrics, dict):
            raise LedgerError(f"{what}: 'transcripts' and 'metrics' must be objects")
        if wm is not None and not isinstance(wm, dict):
            raise LedgerError(f"{what}: 'watermark' must be an object or null")
        kc = get_field(obj, "key_commitment", what)
        return cls(
            run_id=str_field(obj, "run_id", what),
            round=int_field(obj, "round", what),
            position=int_field(obj, "position", what),
            party_id=str_field(obj, "party_id", what),
            prev=str_field(obj, "prev", what),
            start=str_field(obj, "start", what),
            end=str_field(obj, "end", what),
            transcripts=tr,
            watermark=wm,
            key_commitment=kc,
            metrics=metrics,
            signature=bytes.fromhex(hex_field(obj, "signature", what, 64)),
        )


@dataclass(frozen=True)
class Closing:
    """Last ledger entry, signed by every party: makes truncation detectable."""

    run_id: str
    prev: str
    rounds_completed: int
    final_commitments: Mapping[str, str]
    signatures: tuple[SignatureRecord, ...] = ()

    def __post_init__(self) -> None:
        check_hex(self.run_id, 32, "closing: run_id")
        check_hex(self.prev, 32, "closing: prev")
        for k, v in self.final_commitments.items():
            if not k.isdigit():
                raise LedgerError(f"closing: final_commitments keys are positions, got {k!r}")
            check_hex(v, 32, f"closing: final commitment {k}")

    def body(self) -> dict[str, Any]:
        """JSON object without signatures."""
        return {
            "type": "closing",
            "run_id": self.run_id,
            "prev": self.prev,
            "rounds_completed": self.rounds_completed,
            "final_commitments": dict(self.final_commitments),
        }

    def to_json(self) -> dict[str, Any]:
        """Full JSON object."""
        return {**self.body(), "signatures": [s.to_json() for s in self.signatures]}

    def signing_bytes(self) -> bytes:
        """Bytes each party signs."""
        return _signing_bytes(self.body())

    def with_signatures(self, signatures: Sequence[SignatureRecord]) -> Closing:
        """Copy with the given signatures (kept in the given order)."""
        return replace(self, signatures=tuple(signatures))

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Closing:
        """Parse a closing object; raises :class:`LedgerError` on any malformed field."""
        what = "closing"
        only_keys(obj, {"type", "run_id", "prev", "rounds_completed", "final_commitments",
                        "signatures"}, what)
        fc = get_field(obj, "final_commitments", what)
        sigs = get_field(obj, "signatures", what)
        if not isinstance(fc, dict) or not isinstance(sigs, list):
            raise LedgerError(f"{what}: 'final_commitments' must be an object and 'signatures' a list")
        return cls(
            run_id=str_field(obj, "run_id", what),
            prev=str_field(obj, "prev", what),
            rounds_completed=int_field(obj, "rounds_completed", what),
            final_commitments=fc,
            signatures=tuple(SignatureRecord.from_json(s, f"{what} signature {i}")
                             for i, s in enumerate(sigs)),
        )


Entry = Genesis | StageEntry | Closing | Accusation  # accusation: provenance/accusation.py (§5.5)


def entry_from_json(obj: Any) -> Entry:
    """Dispatch on ``obj["type"]``; raises :class:`LedgerError` for anything that is not an entry."""
    if not isinstance(obj, dict):
        raise LedgerError("a ledger entry must be a JSON object")
    kind = obj.get("type")
    if kind == "genesis":
        return Genesis.from_json(obj)
    if kind == "stage":
        return StageEntry.from_json(obj)
    if kind == "closing":
        return Closing.from_json(obj)
    if kind == "accusation":
        return Accusation.from_json(obj)
    raise LedgerError(f"unknown entry type {kind!r}; expected genesis, stage, closing or accusation")


def entry_bytes(entry: Entry) -> bytes:
    """Canonical JSON bytes of the full entry (signatures included): exactly one ledger line."""
    return canonical_json(entry.to_json())


def entry_hash(entry: Entry) -> str:
    """SHA-256 hex of :func:`entry_bytes` — the ``prev`` of the next entry and a watermark anchor."""
    return sha256_hex(entry_bytes(entry))


def sign_multi(identity: Identity, entry: Genesis | Closing) -> SignatureRecord:
    """One party's signature over a genesis or closing body."""
    return SignatureRecord(identity.party_id, identity.sign(entry.signing_bytes()))
