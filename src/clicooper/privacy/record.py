"""The content of ``RUN/privacy.json``: settings and every ε, each labelled with what it covers.

Bookkeeping only (the numbers come from :mod:`.accountant` and :mod:`.label_dp`). Never puts a secret,
the label permutation or anything derived from them into the record.
"""

from __future__ import annotations

from typing import Any

from clicooper.privacy.accountant import (
    Accountant,
    QueryBudget,
    epsilon,
    epsilon_with_dpsgd_head,
)
from clicooper.privacy.activation import ActivationProtector
from clicooper.privacy.label_dp import RandomizedResponse
from clicooper.privacy.labels import LabelCodec

RECORD_VERSION = 1
NOISE_FORMAT = "HMAC-SHA256 -> ChaCha20 -> Box-Muller (53-bit radius), v1"


def _protector_settings(
    p: ActivationProtector | None, stream: str, derivation: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    if p is None:
        return None
    out = {"sigma": p.sigma, "clip_norm": p.clip_norm, "stream": stream, "noise_format": NOISE_FORMAT}
    if derivation is not None:
        out["sigma_source"] = derivation.get("source")
        out["sigma_derivation"] = derivation
    if p.sigma == 0.0:
        out["note"] = "sigma = 0: clip only, no noise; epsilon = inf (no formal guarantee)"
    return out


def privacy_record(
    *,
    epochs: int,
    delta: float,
    activations: ActivationProtector | None,
    gradients: ActivationProtector | None = None,
    codec: LabelCodec | None = None,
    label_dp: RandomizedResponse | None = None,
    dpsgd: dict[str, Any] | None = None,
    query_budget: QueryBudget | None = None,
    accountant: Accountant = "pld",
    sigma_derivation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the JSON-ready ``privacy.json`` dict for a run of ``epochs`` completed rounds.

    ``dpsgd``, when the head is trained with Opacus, holds the keyword arguments of
    :func:`~clicooper.privacy.accountant.epsilon_with_dpsgd_head` other than ``sigma``, ``epochs`` and
    ``delta``: ``noise_multiplier``, ``sample_rate``, ``steps`` and optionally ``release_sampling``.
    ``sigma_derivation`` (from :func:`clicooper.privacy.defaults.sigma_derivation`) says how the activations'
    σ was chosen (explicit, target-epsilon, preset or noise-ratio) and is recorded with their settings.
    """
    reports: list[dict[str, Any]] = []
    if activations is not None:
        r = epsilon(sigma=activations.sigma, epochs=epochs, delta=delta, accountant=accountant).to_dict()
        r["released"] = "head activations (stream 'act')"
        reports.append(r)
        if dpsgd is not None:
            both = epsilon_with_dpsgd_head(sigma=activations.sigma, epochs=epochs, delta=delta, **dpsgd)
            reports.append(both.to_dict())
    if gradients is not None:
        r = epsilon(sigma=gradients.sigma, epochs=epochs, delta=delta, accountant=accountant).to_dict()
        r["released"] = "gradient g_K returned to the last trainer (stream 'grad'); model held fixed"
        reports.append(r)
    if label_dp is not None:
        reports.append(label_dp.report().to_dict())
    if query_budget is not None:
        reports.append(query_budget.report().to_dict())
    return {
        "version": RECORD_VERSION,
        "epochs_accounted": epochs,
        "delta": delta,
        "activation_noise": _protector_settings(activations, "act", sigma_derivation),
        "gradient_noise": _protector_settings(gradients, "grad"),
        "label_obfuscation": None
        if codec is None
        else {
            "num_classes": codec.num_classes,
            "expansion": codec.expansion,
            "num_outputs": codec.num_outputs,
            "key_file": "secrets/label_key (never copied here; back it up)",
        },
        "label_dp": None if label_dp is None else {"epsilon": label_dp.epsilon, "mechanism": "RR-with-prior"},
        "query_budget": None if query_budget is None else query_budget.to_dict(),
        "reports": reports,
        "note": (
            "Each epsilon is labelled by 'covers'. 'per-release, head fixed' bounds what the released "
            "tensors reveal with the head held fixed; only 'DP-SGD head + releases' covers the training data "
            "end to end. Empirical attack results are in attacks/."
        ),
    }
