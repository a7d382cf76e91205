"""Malicious trainers (docs/design/parties.md#malicious-trainers): behaviours a trainer may adopt instead of the
protocol, each a subclass of :class:`clicooper.parties.trainer.Trainer` (docs/malicious.md).

=============  =====================================================================  ==================
behaviour      what it does                                                           module
=============  =====================================================================  ==================
``fsha``       T1 hijacks the DO's head into its own invertible feature space         :mod:`.fsha`
``scale``      the gradient sent left is multiplied by ``adversary.scale``            :mod:`.tamper`
``sign-flip``  the gradient sent left is negated                                      :mod:`.tamper`
``backdoor``   T_K plants a feature-space trigger that maps to ``target_class``       :mod:`.backdoor`
``lazy``       stale outputs and gradients, no update of its segment                  :mod:`.lazy`
=============  =====================================================================  ==================

The session core builds one when ``config.adversary`` names it, looking the behaviour up in the registry
its caller hands it (:data:`.registry.ADVERSARIES`; the core itself never imports this package): a research
option, recorded in ``config.json``, never a default. This subpackage alone of :mod:`clicooper.attacks` may
import :mod:`clicooper.parties` (an ``ignore_imports`` entry of the ``attacks-read-views`` contract).
"""

from __future__ import annotations

from typing import Any

from clicooper.attacks.active.backdoor import BackdoorTrainer, backdoor_success
from clicooper.attacks.active.base import ActiveTrainer, AdversaryContext, Truth
from clicooper.attacks.active.fsha import FSHATrainer
from clicooper.attacks.active.lazy import LazyTrainer
from clicooper.attacks.active.registry import ADVERSARIES, register_adversary
from clicooper.attacks.active.tamper import TamperTrainer
from clicooper.config.security import AdversaryConfig

BEHAVIOURS = ADVERSARIES  # the registry's former name


def build_adversary(adversary: AdversaryConfig, context: AdversaryContext, *args: Any, **kwargs: Any,
                    ) -> ActiveTrainer:
    """The malicious trainer of ``adversary.behaviour``, with the Trainer's own arguments."""
    return ADVERSARIES[adversary.behaviour](*args, adversary=adversary, context=context, **kwargs)


__all__ = ["ADVERSARIES", "BEHAVIOURS", "ActiveTrainer", "AdversaryContext", "BackdoorTrainer", "FSHATrainer", "LazyTrainer",
           "TamperTrainer", "Truth", "backdoor_success", "build_adversary", "register_adversary"]
