"""Privacy mechanisms of the data owner (docs/design/mechanisms.md).

* :mod:`.secrets` — the DO's secrets in ``RUN/secrets/`` (noise secret, label key).
* :mod:`.activation` — per-sample clip + keyed Gaussian noise on activations, gradients and queries.
* :mod:`.accountant` — ε of the releases (PLD / RDP via ``dp-accounting``), DP-SGD composition, query budget.
* :mod:`.labels` — secret label obfuscation (keyed permutation + rotating sub-classes).
* :mod:`.label_dp` — label DP by randomized response with a prior, one draw per sample.
* :mod:`.dpsgd` — DP-SGD on the DO's head (Opacus), composed with the releases' ε.
* :mod:`.decorrelation`, :mod:`.adversarial`, :mod:`.random_head` — the empirical defences at the cut (NoPeek,
  an adversarial decoder, a secret random head): no ε.
* :mod:`.runtime` — all of the above for one run, from its config; :mod:`.record` — ``RUN/privacy.json``.
* :mod:`.defaults` — how an unset σ is chosen (the named presets of ``--preset`` are
  :mod:`clicooper.config.presets`).
* :mod:`.prefetch` — the next batch's noise, drawn on a background thread.

See ``docs/privacy.md`` for what each hides and does not hide, and for the data owner's integration calls.
"""

# The names below load lazily (PEP 562), so that light modules of this package (``defaults``, ``prefetch``)
# can be imported, e.g. by the CLI and the config validation, without loading
# ``dp-accounting`` and torch.
import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "COVERS_DPSGD": "accountant",
    "COVERS_LABEL_DP": "accountant",
    "COVERS_QUERIES": "accountant",
    "COVERS_RELEASES": "accountant",
    "PrivacyReport": "accountant",
    "QueryBudget": "accountant",
    "epsilon": "accountant",
    "epsilon_with_dpsgd_head": "accountant",
    "sigma_for_epsilon": "accountant",
    "ActivationProtector": "activation",
    "RandomizedResponse": "label_dp",
    "LabelCodec": "labels",
    "LABEL_KEY": "secrets",
    "LABEL_KEY_BACKUP_REMINDER": "secrets",
    "NOISE_SECRET": "secrets",
    "backup_reminder": "secrets",
    "create_secrets": "secrets",
    "load_secret": "secrets",
}

__all__ = [
    "COVERS_DPSGD",
    "COVERS_LABEL_DP",
    "COVERS_QUERIES",
    "COVERS_RELEASES",
    "LABEL_KEY",
    "LABEL_KEY_BACKUP_REMINDER",
    "NOISE_SECRET",
    "ActivationProtector",
    "LabelCodec",
    "PrivacyReport",
    "QueryBudget",
    "RandomizedResponse",
    "backup_reminder",
    "create_secrets",
    "epsilon",
    "epsilon_with_dpsgd_head",
    "load_secret",
    "sigma_for_epsilon",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from clicooper.privacy.accountant import (
        COVERS_DPSGD,
        COVERS_LABEL_DP,
        COVERS_QUERIES,
        COVERS_RELEASES,
        PrivacyReport,
        QueryBudget,
        epsilon,
        epsilon_with_dpsgd_head,
        sigma_for_epsilon,
    )
    from clicooper.privacy.activation import ActivationProtector
    from clicooper.privacy.label_dp import RandomizedResponse
    from clicooper.privacy.labels import LabelCodec
    from clicooper.privacy.secrets import (
        LABEL_KEY,
        LABEL_KEY_BACKUP_REMINDER,
        NOISE_SECRET,
        backup_reminder,
        create_secrets,
        load_secret,
    )
