"""``norm-bins``: a trainer guesses labels from the norms of the activations it receives alone (rows
sorted by norm, cut into one bin per class; scored with the best matching of bins to classes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from clicooper.attacks import metrics
from clicooper.attacks.base import AttackResult, LevelResult


@dataclass(frozen=True)
class NormBinsConfig:
    """``max_rows``: rows scored (the first ones recorded)."""

    max_rows: int = 2000
    seed: int = 0


class NormBins:
    """Label inference from activation norms (zero knowledge)."""

    name: ClassVar[str] = "norm-bins"
    knowledge: ClassVar[tuple[str, ...]] = ("zero",)
    default_party: ClassVar[str] = "T1"
    budgets: ClassVar[dict[str, dict[str, Any]]] = {"demo": {"config": {"max_rows": 1000}}}

    def __init__(self, **config: Any) -> None:
        self.config = NormBinsConfig(**config)

    def run(self, views: Any) -> AttackResult:
        view = views.zero
        n = min(view.received.activations.shape[0], self.config.max_rows)
        c = view.public.num_classes
        norms = view.received.activations[:n].flatten(1).double().norm(dim=1).numpy()
        pred = np.searchsorted(np.quantile(norms, np.linspace(0, 1, c + 1)[1:-1]), norms)
        y = views.truth.y[:n].numpy()
        acc = metrics.hungarian_accuracy(y, pred)
        floor = metrics.hungarian_chance(y, pred, seed=self.config.seed)
        return AttackResult(attack=self.name, levels={
            "zero-knowledge": LevelResult(primary="oracle_accuracy", score=acc, floor=floor)},
            info={"rows": n, "num_classes": c})
