"""Provenance: identities, the signed ledger, dynamic chained watermarks, verification (docs/design/ledger.md, docs/design/mechanisms.md#watermarks).

Modules, low to high (imports point down):

- :mod:`~clicooper.provenance.canonical` — byte formats: RFC 8785 JSON, length-prefixing, HKDF/SHAKE streams
- :mod:`~clicooper.provenance.identity` — Ed25519 identities, key files, party ids
- :mod:`~clicooper.provenance.commitments` — segment / dataset / config / architecture commitments
- :mod:`~clicooper.provenance.transcript` — per-link running transcript hashes
- :mod:`~clicooper.provenance.entries` — typed ledger entries (genesis, stage, closing)
- :mod:`~clicooper.provenance.ledger` — the append-only JSON-lines file and the chain checks
- :mod:`~clicooper.provenance.watermark` — keys, marks, regularizer, capacity plan, threshold τ
- :mod:`~clicooper.provenance.align` — undo unit permutation and rescaling before extraction
- :mod:`~clicooper.provenance.verify` — ``verify_run`` and the credit table
- :mod:`~clicooper.provenance.reveal` — reveal files and the pooled ownership test ``prove``

``docs/provenance.md`` says which function the training loop and the CLI call, and when.
"""

from clicooper.provenance.commitments import (
    architecture_hash,
    config_hash,
    dataset_commitment,
    module_commitment,
    segment_commitment,
)
from clicooper.provenance.entries import (
    Closing,
    Genesis,
    PartyRecord,
    SignatureRecord,
    StageEntry,
    entry_hash,
    sign_multi,
)
from clicooper.provenance.identity import Identity, load_identity, party_id, verify
from clicooper.provenance.ledger import Issue, Ledger, ledger_anchor, read_ledger
from clicooper.provenance.reveal import ProveReport, StageCheck, check_reveal, make_reveal, prove
from clicooper.provenance.transcript import TranscriptHasher
from clicooper.provenance.verify import Credit, VerifyReport, verify_run
from clicooper.provenance.watermark import (
    CapacityPlan,
    Mark,
    MarkParams,
    StageKey,
    WatermarkTerm,
    derive_stage_key,
    embed_until_zero,
    marks_for_round,
    module_errors,
    module_layout,
    ownership_threshold,
    plan_capacity,
    watermark_loss,
)

__all__ = [
    "CapacityPlan", "Closing", "Credit", "Genesis", "Identity", "Issue", "Ledger", "Mark", "MarkParams",
    "PartyRecord", "ProveReport", "SignatureRecord", "StageCheck", "StageEntry", "StageKey",
    "TranscriptHasher", "VerifyReport", "WatermarkTerm", "architecture_hash", "check_reveal", "config_hash",
    "dataset_commitment", "derive_stage_key", "embed_until_zero", "entry_hash", "ledger_anchor",
    "load_identity", "make_reveal", "marks_for_round", "module_commitment", "module_errors",
    "module_layout", "ownership_threshold", "party_id", "plan_capacity", "prove", "read_ledger",
    "segment_commitment", "sign_multi", "verify", "verify_run", "watermark_loss",
]
