"""What every malicious trainer shares: when it deviates, what the simulation lends it, what it reports.

A malicious trainer *is* a :class:`clicooper.parties.trainer.Trainer` (a subclass), so it speaks the same
protocol, signs its stage entries like an honest one and keeps the same transcripts: every deviation is in
the tensors it sends and in the work it does (or does not do). It is built by the session core
through the registry (:data:`clicooper.attacks.active.registry.ADVERSARIES`) only when ``config.adversary``
asks for one — a research option recorded in ``config.json``, never a default.

:class:`~clicooper.parties.adversary.AdversaryContext` is what the *simulation* hands it besides its protocol
messages:

- ``aux_x``: public auxiliary inputs (the first half of the test split, as the passive attacks' ``aux``
  view; FSHA trains its pilot encoder on them);
- ``truth(epoch, step, micro)``: the true ``(x, y)`` of a micro-batch. It is the **evaluator's** ground
  truth, used to score reconstructions (FSHA) — and, for the backdoor only, an explicit label *oracle*
  (docs/malicious.md: the upper bound of any label-inference step the attacker would otherwise need).
"""

from __future__ import annotations

from typing import Any

from clicooper.config.security import AdversaryConfig
from clicooper.parties.adversary import AdversaryContext, Truth
from clicooper.parties.trainer import Trainer
from clicooper.protocol.messages import Header

__all__ = ["ActiveTrainer", "AdversaryContext", "Truth"]


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
