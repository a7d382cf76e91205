"""Gradient scaling and sign flipping by any trainer: the gradient it sends left is ``s · g`` or ``−g``.

Both are sabotage by a participant that otherwise runs the protocol: its own segment trains on the true
gradient, its forward outputs are honest, and only the backward message to its left neighbour (the DO's
head for T1) is altered. Scaling is the model-poisoning primitive of Bhagoji et al. (ICML 2019,
"Analyzing federated learning through an adversarial lens", §3 explicit boosting); sign flipping the
"reversed gradient" Byzantine behaviour of Blanchard et al. (NeurIPS 2017, §2) and Xie et al. (UAI 2019,
"Fall of empires", inner-product manipulation). A trainer further down the chain (T2 …) scales the gradient
its left neighbour then propagates honestly.
"""

from __future__ import annotations

import dataclasses

from clicooper.attacks.active.base import ActiveTrainer
from clicooper.protocol.messages import Gradients, Message


class TamperTrainer(ActiveTrainer):
    """``scale``: multiply the gradient sent left by ``adversary.scale``; ``sign-flip``: negate it."""

    behaviour = "scale"

    def _factor(self) -> float:
        return -1.0 if self.adversary.behaviour == "sign-flip" else float(self.adversary.scale)

    def _handle(self, msg: Message) -> list[Message]:
        out = super()._handle(msg)
        return [self._tamper(m) for m in out]

    def _tamper(self, m: Message) -> Message:
        if not isinstance(m, Gradients) or m.header.receiver != self.left or not self.deviates(m.header):
            return m
        return dataclasses.replace(m, tensor=m.tensor * self._factor())
