"""Privacy mechanisms of the data owner (DESIGN §3–4).

* :mod:`.secrets` — the DO's secrets in ``RUN/secrets/`` (noise secret, label key).
* :mod:`.activation` — per-sample clip + keyed Gaussian noise on activations, gradients and queries.
* :mod:`.accountant` — ε of the releases (PLD / RDP via ``dp-accounting``), DP-SGD composition, query budget.
* :mod:`.labels` — secret label obfuscation (keyed permutation + rotating sub-classes).
* :mod:`.label_dp` — label DP by randomized response with a prior, one draw per sample.

See ``docs/privacy.md`` for what each hides and does not hide, and for the data owner's integration calls.
"""

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
