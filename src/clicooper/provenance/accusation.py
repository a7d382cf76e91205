"""The accusation entry (docs/ledger-format.md §5.5): a party's signed claim that others deviated.

When the DO's live detection fires (docs/malicious.md) the DO appends, after the last committed entry,

``{"type":"accusation","run_id","prev","round","step","party_id","suspects":[{"name","party_id"}…],
"detector","evidence":{…},"signature"}``

signed by the accuser (``party_id``, any genesis party; CliCooper's DO) over
``lp("clicooper/ledger/accusation", JCS(body))`` like every entry. It records a claim, not a fact: ``verify``
checks that it is well formed, chained and signed by a party of the run and that its suspects are parties
of the run, shows it, and leaves the stages' credit alone; the evidence (numbers of the check that fired)
is for people and for an audit (``clicooper audit``) to settle. It changes no stage order: the next stage
entry chains to it through ``prev``, and watermark anchors (§9.1) read stage entries only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from clicooper.errors import LedgerError
from clicooper.provenance.canonical import canonical_json, lp
from clicooper.provenance.fields import check_hex, get_field, hex_field, int_field, only_keys, str_field
from clicooper.provenance.identity import Identity
from clicooper.provenance.identity import verify as verify_signature

_KEYS = {"type", "run_id", "prev", "round", "step", "party_id", "suspects", "detector", "evidence", "signature"}


@dataclass(frozen=True)
class Accusation:
    """A signed accusation (module docstring)."""

    run_id: str
    prev: str
    round: int
    step: int
    party_id: str
    suspects: tuple[tuple[str, str], ...]  # (name, party_id)
    detector: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    signature: bytes = b""

    def __post_init__(self) -> None:
        what = "accusation"
        for name, n in (("run_id", 32), ("prev", 32), ("party_id", 16)):
            check_hex(getattr(self, name), n, f"{what}: {name}")
        if self.round < 0 or self.step < 0:
            raise LedgerError(f"{what}: round and step must be ≥ 0")
        if not self.suspects or not self.detector:
            raise LedgerError(f"{what}: needs at least one suspect and the detector's name")
        for _, pid in self.suspects:
            check_hex(pid, 16, f"{what}: suspect party_id")

    def body(self) -> dict[str, Any]:
        """JSON object without the signature."""
        return {"type": "accusation", "run_id": self.run_id, "prev": self.prev, "round": self.round,
                "step": self.step, "party_id": self.party_id,
                "suspects": [{"name": n, "party_id": p} for n, p in self.suspects],
                "detector": self.detector, "evidence": dict(self.evidence)}

    def to_json(self) -> dict[str, Any]:
        """Full JSON object."""
        return {**self.body(), "signature": self.signature.hex()}

    def signing_bytes(self) -> bytes:
        """Bytes the accuser signs."""
        return lp("clicooper/ledger/accusation", canonical_json(self.body()))

    def signed(self, identity: Identity) -> Accusation:
        """Copy signed by ``identity`` (whose id must equal ``party_id``)."""
        if identity.party_id != self.party_id:
            raise LedgerError(f"the accusation names accuser {self.party_id}, not {identity.party_id}")
        return replace(self, signature=identity.sign(self.signing_bytes()))

    def describe(self, names: Mapping[str, str]) -> str:
        """One line for ``verify``: who accuses whom, when, with which check."""
        who = names.get(self.party_id, self.party_id[:16])
        summary = self.evidence.get("summary", "")
        return (f"accusation by {who} against {', '.join(n for n, _ in self.suspects)} at round {self.round} "
                f"step {self.step} ({self.detector}){': ' + summary if summary else ''}")

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Accusation:
        """Parse an accusation object; raises :class:`LedgerError` on any malformed field."""
        what = "accusation"
        only_keys(obj, _KEYS, what)
        sus = get_field(obj, "suspects", what)
        ev = get_field(obj, "evidence", what)
        if not isinstance(sus, list) or not isinstance(ev, dict):
            raise LedgerError(f"{what}: 'suspects' must be a list and 'evidence' an object")
        suspects = []
        for s in sus:
            if not isinstance(s, dict):
                raise LedgerError(f"{what}: a suspect must be an object")
            only_keys(s, {"name", "party_id"}, f"{what} suspect")
            suspects.append((str_field(s, "name", what), hex_field(s, "party_id", what, 16)))
        return cls(run_id=str_field(obj, "run_id", what), prev=str_field(obj, "prev", what),
                   round=int_field(obj, "round", what), step=int_field(obj, "step", what),
                   party_id=str_field(obj, "party_id", what), suspects=tuple(suspects),
                   detector=str_field(obj, "detector", what), evidence=ev,
                   signature=bytes.fromhex(hex_field(obj, "signature", what, 64)))


def accusation_problems(a: Accusation, genesis: Any) -> list[tuple[str, str]]:
    """``(check, message)`` of each problem of ``a`` against the run's genesis (signer, signature, suspects)."""
    out: list[tuple[str, str]] = []
    accuser = genesis.party(a.party_id)
    if accuser is None:
        return [("entry-signature", f"accusation by {a.party_id}, who is not a party of this run")]
    try:
        verify_signature(accuser.public_key, a.signature, a.signing_bytes())
    except LedgerError:
        out.append(("entry-signature", f"signature on the accusation is not {accuser.name}'s"))
    for name, pid in a.suspects:
        p = genesis.party(pid)
        if p is None or p.name != name:
            out.append(("accusation", f"suspect {name} ({pid}) is not a party of this run"))
    return out


def draft_accusation(ledger: Any, accuser: Identity, *, round: int, step: int, suspects: list[str],
                     detector: str, evidence: Mapping[str, Any]) -> Accusation:
    """The signed accusation of ``accuser`` chained to ``ledger``'s head (append it with ``ledger.append``)."""
    ids = {p.name: p.party_id for p in ledger.genesis.parties}
    unknown = [s for s in suspects if s not in ids]
    if unknown:
        raise LedgerError(f"suspects {unknown} are not parties of this run")
    a = Accusation(run_id=ledger.run_id, prev=ledger.head, round=round, step=step, party_id=accuser.party_id,
                   suspects=tuple((s, ids[s]) for s in suspects), detector=detector,
                   evidence=clean_evidence(dict(evidence)))
    return a.signed(accuser)


def clean_evidence(x: Any) -> Any:
    """Evidence as canonical-JSON-safe values: floats to 6 significant digits, non-finite ones ``None``."""
    if isinstance(x, dict):
        return {str(k): clean_evidence(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [clean_evidence(v) for v in x]
    if isinstance(x, float):
        return float(f"{x:.6g}") if math.isfinite(x) else None
    return x
