"""Progress of loss and accuracy on the DO's own held-out rows (the third check of docs/malicious.md).

Every ``every`` steps the DO sends a fixed set of its held-out rows through the chain as queries
(``mode="infer"``, noised like served queries when the run protects activations) and scores the answers
with its tail. Training that serves the DO's task makes the accuracy rise above chance within a few
validations; a trainer that sabotages (sign flipping), does no work (stale outputs) or hijacks the head
leaves it at chance or makes it collapse. Alarm (ours; the rule of early stopping, turned around):

- after ``warmup`` validations, the mean accuracy of the last ``warmup`` ones is below ``chance + min_gain``
  (no better than chance); or
- the accuracy falls more than ``max_drop`` below its best (an attack that starts late).

(A first version compared the *best* accuracy with chance: a sign-flipping run on digits that peaked at
0.30 and then fell to 0.08 stayed under both rules. The false alarms of the rule as it is now are
measured on honest runs, docs/malicious.md.)

It cannot tell which trainer is at fault (every answer passes through all of them): the alarm names the
chain, ``T1…TK``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clicooper.config.security import ValidationConfig


@dataclass
class Progress:
    """Validation history and the decision (module docstring)."""

    config: ValidationConfig
    num_classes: int
    history: list[dict[str, float]] = field(default_factory=list)

    def add(self, round: int, step: int, accuracy: float, loss: float) -> None:
        """Record one validation."""
        self.history.append({"round": round, "step": step, "accuracy": accuracy, "loss": loss})

    def verdict(self) -> dict[str, object] | None:
        """Evidence of an alarm, or ``None``."""
        c, h = self.config, self.history
        if len(h) < c.warmup:
            return None
        accs = [x["accuracy"] for x in h]
        best, now = max(accs), accs[-1]
        recent = sum(accs[-c.warmup:]) / c.warmup
        chance = 1.0 / self.num_classes
        if recent < chance + c.min_gain:
            why = (f"mean validation accuracy of the last {c.warmup} checks {recent:.3f} < chance {chance:.3f} + "
                   f"{c.min_gain}")
        elif now < best - c.max_drop:
            why = f"validation accuracy fell to {now:.3f} from its best {best:.3f} (> {c.max_drop})"
        else:
            return None
        return {"summary": why, "history": [{k: round(v, 4) for k, v in x.items()} for x in h[-10:]],
                "chance": chance}
