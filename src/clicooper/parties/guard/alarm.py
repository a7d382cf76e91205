"""An alarm of the DO's live detection: which check fired, against whom, when, and the evidence."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Alarm:
    """One detection. ``suspects`` are the parties whose messages failed the check: T1 for the gradient
    tests (docs/malicious.md says why a deviating trainer further down the chain makes T1's gradients fail
    too), every trainer for the validation check."""

    detector: str
    suspects: tuple[str, ...]
    round: int
    step: int
    evidence: dict[str, Any] = field(default_factory=dict)

    def message(self) -> str:
        """One line for a human."""
        return (f"{self.detector} flagged {', '.join(self.suspects)} at round {self.round} step {self.step}: "
                f"{self.evidence.get('summary', '')}").rstrip(": ")

    def to_json(self) -> dict[str, Any]:
        """JSON form (``metrics.json``'s stop record, the ledger's accusation)."""
        return {"detector": self.detector, "suspects": list(self.suspects), "round": self.round, "step": self.step,
                "evidence": dict(self.evidence)}
