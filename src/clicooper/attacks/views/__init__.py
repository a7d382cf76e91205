"""Explicit views: what an attacker may read, per knowledge level (docs/design/metrics.md#views).

=================  ===========================================================================
level              the attacker reads
=================  ===========================================================================
zero-knowledge     its received observations (activations, gradients, open-tail labels) and its
                   own segment weights — never sample ids (they never go on the wire, §2)
known-sample k     + k labelled samples per class (x, y) and *which received rows* they are
auxiliary data     + samples (x, and y when labelled) from a range disjoint from the DO's training data
white-box          + the leaked DO head (``model/head.safetensors``)
query              + a ``predict`` callable (probabilities) — a query client, not a trainer
=================  ===========================================================================

Every view also holds :class:`PublicInfo` (dataset shape, class count, the public architecture as
*fresh* module factories, the public noise distribution). Ground truth for scoring lives apart in
:class:`Truth`; attacks hand it to metric functions only.

:func:`build_view` reads a run directory through :class:`~clicooper.attacks.reader.RunReader`: only
``observations/``, ``config.json``, the party's own segment, the dataset through the public loader, and
(white-box only) ``model/head.safetensors``. Never ``secrets/`` or ``keys/``.

Modules: :mod:`.content` (the view dataclasses), :mod:`.source` (reading the run directory),
:mod:`.build` (:func:`build_view`, one function per knowledge level).
"""

from clicooper.attacks.views.build import build_view
from clicooper.attacks.views.content import (
    KNOWLEDGE_LEVELS,
    Architecture,
    AuxiliaryView,
    Knowledge,
    KnownSampleView,
    ModuleFactory,
    NoiseSpec,
    PublicInfo,
    Received,
    Truth,
    Views,
    WhiteBoxView,
    ZeroKnowledgeView,
)
from clicooper.attacks.views.source import noise_from_config, recorded_epochs

__all__ = [
    "KNOWLEDGE_LEVELS", "Architecture", "AuxiliaryView", "Knowledge", "KnownSampleView", "ModuleFactory",
    "NoiseSpec", "PublicInfo", "Received", "Truth", "Views", "WhiteBoxView", "ZeroKnowledgeView",
    "build_view", "noise_from_config", "recorded_epochs",
]
