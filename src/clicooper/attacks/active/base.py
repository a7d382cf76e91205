"""What every malicious trainer shares: when it deviates, what the simulation lends it, what it reports.

A malicious trainer *is* a :class:`clicooper.parties.trainer.Trainer` (a subclass), so it speaks the same
protocol, signs its stage entries like an honest one and keeps the same transcripts: every deviation is in
the tensors it sends and in the work it does (or does not do). It is built by the session core
(:func:`clicooper.attacks.active.build_adversary`) only when ``config.adversary`` asks for one — a research
option recorded in ``config.json``, never a default.

:class:`AdversaryContext` is what the *simulation* hands it besides its protocol messages:

- ``aux_x``: public auxiliary inputs (the first half of the test split, as the passive attacks' ``aux``
  view; FSHA trains its pilot encoder on them);
- ``truth(epoch, step, micro)``: the true ``(x, y)`` of a micro-batch. It is the **evaluator's** ground
  truth, used to score reconstructions (FSHA) — and, for the backdoor only, an explicit label *oracle*
  (docs/malicious.md: the upper bound of any label-inference step the attacker would otherwise need).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from clicooper.config.security import AdversaryConfig
from clicooper.parties.trainer import Trainer
from clicooper.protocol.messages import Header

#: truth(epoch, step, micro) → (x, y) of that micro-batch (the evaluator's ground truth)
Truth = Callable[[int, int, int], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class AdversaryContext:
    """What the simulation lends a malicious trainer (see module docstring)."""

    num_classes: int
    seed: int
    aux_x: torch.Tensor | None = None
    aux_y: torch.Tensor | None = None  # only for the evaluator's class floor, never for the attack itself
    truth: Truth | None = None
    input_shape: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


class ActiveTrainer(Trainer):
    """A trainer that deviates from ``adversary.start_round``/``start_step`` on (see subclasses)."""

    behaviour = "honest"

    def __init__(self, *args: Any, adversary: AdversaryConfig, context: AdversaryContext, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.adversary, self.context = adversary, context
        self.report: dict[str, Any] = {"behaviour": adversary.behaviour, "party": self.name,
                                       "start": [adversary.start_round, adversary.start_step], "deviated_steps": 0}
        self._counted: set[tuple[int, int]] = set()

    def deviates(self, h: Header) -> bool:
        """Whether this trainer deviates on the step of header ``h`` (train mode)."""
        on = (h.epoch, h.step) >= (self.adversary.start_round, self.adversary.start_step)
        if on and (h.epoch, h.step) not in self._counted:
            self._counted.add((h.epoch, h.step))
            self.report["deviated_steps"] += 1
        return on

    def summary(self) -> dict[str, Any]:
        """The behaviour's record for ``RUN/attacks/active.json`` (JSON-able)."""
        return dict(self.report)
