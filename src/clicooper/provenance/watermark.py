"""Dynamic chained watermarks (docs/design/mechanisms.md#dynamic-chained-keys, docs/design/mechanisms.md#embedding).

Keys. For stage (r, p) with ``anchor_r`` = hash of the last ledger entry of round r-1 (the genesis for
r = 0)::

    sig_{r,p} = Sign_{sk_p}( lp("clicooper-wm", run_id, r, p, anchor_r) )      # run_id, anchor: raw 32 bytes
    k_{r,p}   = HKDF-SHA256(sig_{r,p}, info = "clicooper/wm-key")               # secret watermark key
    c_{r,p}   = SHA-256( lp("clicooper/wm-commit", sig_{r,p}) )                 # public, in the ledger entry

Ed25519 is deterministic, so the party can recompute ``sig`` at any time, nobody else can compute it, and
anyone can check it against the public key once it is revealed. ``k`` and ``c`` are domain separated: the
public commitment reveals nothing about the key.

Mark. From ``k`` (SHAKE-256 streams, :class:`~clicooper.provenance.canonical.KeyedStream`, one domain each)
come ``n`` target bits ``b``, and for each bit ``m`` weight indices (uniform, with replacement, over the
flattened concatenation of the segment's parameters in sorted-name order, the *layout*) and ``m`` signs ±1.
That is a sparse ±1 projection ``X`` stored as ``(n, m)`` indices + signs — never an ``n × |w|`` matrix.
Projection ``y = X·w``; extraction ``b̂ = 1[y > 0]``; ``BER = mean(b̂ ≠ b)``.

Embedding (Uchida et al., "Embedding Watermarks into Deep Neural Networks", ICMR 2017, with a keyed sparse
projection instead of a dense one): the party adds ``λ · BCE(sigmoid(X·w), b)`` (:func:`watermark_loss`,
over all retained marks at once) to its loss each step; :func:`embed_until_zero` runs the bounded extra
watermark-only steps at round end until BER = 0.

Capacity: :func:`plan_capacity` sizes ``n``, ``m`` and the number of retained rounds from the segment's
parameter count (all retained marks ≤ |w|/8 bits); tiny segments get a smaller ``n`` or no mark.

This module is the scheme's one import point; the code lives in :mod:`.marks` (keys and marks),
:mod:`.embedding` (the loss term, the extra steps, the marks of a round) and :mod:`.capacity` (sizing and
the threshold τ).
"""

from clicooper.provenance.capacity import (
    FALSE_CLAIM_BOUND,
    CapacityPlan,
    binomial_cdf_half,
    ownership_threshold,
    plan_capacity,
)
from clicooper.provenance.embedding import (
    WatermarkTerm,
    embed_until_zero,
    marks_for_round,
    module_errors,
    watermark_loss,
)
from clicooper.provenance.marks import (
    SCHEME,
    Layout,
    Mark,
    MarkParams,
    StageKey,
    commitment_from_signature,
    derive_stage_key,
    flatten_params,
    key_from_signature,
    layout_of,
    module_layout,
    stage_key_from_reveal,
    wm_message,
)

__all__ = [
    "FALSE_CLAIM_BOUND", "SCHEME", "CapacityPlan", "Layout", "Mark", "MarkParams", "StageKey", "WatermarkTerm",
    "binomial_cdf_half", "commitment_from_signature", "derive_stage_key", "embed_until_zero", "flatten_params",
    "key_from_signature", "layout_of", "marks_for_round", "module_errors", "module_layout", "ownership_threshold",
    "plan_capacity", "stage_key_from_reveal", "watermark_loss", "wm_message",
]
