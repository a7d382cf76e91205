"""The interface between the session core and malicious-trainer behaviours (``config.adversary``).

The core builds a run's parties, but it does not know the attack suite: a caller above it (the in-process
run, a trainer node) hands it a registry — a mapping ``behaviour → factory`` — and the core looks
``config.adversary.behaviour`` up there. The built-in registry is
:data:`clicooper.attacks.active.registry.ADVERSARIES`; the core only sees this module's types.

- :class:`AdversaryContext` — what the *simulation* lends a malicious trainer besides its protocol messages
  (public auxiliary data, the evaluator's ground truth, shapes; see :mod:`clicooper.attacks.active.base`);
- :class:`AdversaryFactory` — a behaviour's constructor: the adversary's config, the context, then the
  :class:`~clicooper.parties.trainer.Trainer`'s own arguments;
- :data:`Adversaries` — the registry's type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from clicooper.config.security import AdversaryConfig
from clicooper.parties.trainer import Trainer

#: truth(epoch, step, micro) → (x, y) of that micro-batch (the evaluator's ground truth)
Truth = Callable[[int, int, int], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class AdversaryContext:
    """What the simulation lends a malicious trainer (see :mod:`clicooper.attacks.active.base`)."""

    num_classes: int
    seed: int
    aux_x: torch.Tensor | None = None
    aux_y: torch.Tensor | None = None  # only for the evaluator's class floor, never for the attack itself
    truth: Truth | None = None  # None on a node: the ground truth is the DO's
    input_shape: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


class AdversaryFactory(Protocol):
    """Builds one behaviour's malicious trainer."""

    def __call__(self, *args: Any, adversary: AdversaryConfig, context: AdversaryContext, **kwargs: Any) -> Trainer:
        """The trainer, from the Trainer's own arguments plus ``adversary`` and ``context``."""
        ...


#: behaviour name → factory (the registry the core looks ``config.adversary.behaviour`` up in)
Adversaries = Mapping[str, AdversaryFactory]
