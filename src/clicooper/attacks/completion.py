"""Model completion (Fu et al. 2022, "Label Inference Attacks Against Vertical Federated Learning",
USENIX Security, the passive label inference attack by "model completion": the attacker completes its
own bottom model into a classifier with a few labelled samples and reads the labels of every sample it
holds features for; the paper's section numbers were not checked).

Here a trainer completes **its own segment**: a fresh copy of everything after it (the other trainers'
segments and the DO tail, public architecture, C true-label outputs) is stacked on its recorded segment
and trained on the rows it received for k labelled samples per class (the known-sample level). It then
labels every other received row. Two ways, as in the paper: **passive** (its segment frozen, only the
completion trained) and **active** (the segment fine-tuned too). Fu et al. add MixMatch semi-supervised
training; this is the plain supervised completion.

The figure is reported as an **advantage**: the best completion's accuracy minus that of the *same
architecture trained on the same k samples alone* (the segment re-drawn, no trained weights), which is
the level's floor (or the majority rate, whichever is higher). k = 1, 10, 100 per class; scored on every
received row that is not a known sample, read at ¼, ½ and all of the steps.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from clicooper.attacks import metrics
from clicooper.attacks.base import AttackResult, LevelResult, budget_points, convergence, register, require
from clicooper.attacks.extraction import train_classifier
from clicooper.attacks.nets import batched, reinit
from clicooper.attacks.sdar import simulated_tail
from clicooper.attacks.views import Views

MODES = ("passive", "active")


@dataclass(frozen=True)
class CompletionConfig:
    """Settings of :class:`CompletionAttack` (``max_rows`` caps the received rows scored)."""

    ks: tuple[int, ...] = (1, 10, 100)
    modes: tuple[str, ...] = MODES
    steps: int = 600
    batch: int = 64
    lr: float = 1e-3
    max_rows: int = 5000
    seed: int = 0

    def __post_init__(self) -> None:
        bad = set(self.modes) - set(MODES)
        require(not bad and bool(self.modes), f"modes must be a non-empty subset of {MODES}")
        require(all(k >= 1 for k in self.ks), "ks must be ≥ 1 (labelled samples per class)")
        require(self.steps >= 1 and self.batch >= 1 and self.max_rows >= 10, "steps, batch ≥ 1, max_rows ≥ 10")
        require(self.lr > 0, "lr must be > 0")


@register("completion")
class CompletionAttack:
    """Fu et al. model completion by one trainer, on its own segment and k labelled samples per class."""

    name: ClassVar[str] = "completion"
    knowledge: ClassVar[tuple[str, ...]] = ("zero", "known")
    known_k: ClassVar[int] = 100

    def __init__(self, **config: Any) -> None:
        self.config = CompletionConfig(**config)

    def run(self, views: Views) -> AttackResult:
        """One level per k the known samples allow: completion accuracy vs the same architecture alone."""
        cfg, view = self.config, views.zero
        require(views.known is not None, "model completion needs labelled samples (the known level)")
        a = view.received.activations
        n = min(a.shape[0], cfg.max_rows)
        keep = torch.ones(n, dtype=torch.bool)
        keep[views.known.rows[views.known.rows < n]] = False  # every known row is left out of scoring
        a_eval, y_eval = a[:n][keep], views.truth.y[:n][keep].numpy()
        levels: dict[str, LevelResult] = {}
        skipped: dict[str, str] = {}
        for k in cfg.ks:
            if k > views.known.k:
                skipped[f"k{k}"] = f"the view holds {views.known.k} known samples per class"
                continue
            levels[f"k{k}"] = self._level(views, k, a_eval, y_eval)
        return AttackResult(attack=self.name, levels=levels,
                            info={"party": view.received.party, "epoch": view.received.epoch,
                                  "scored_rows": int(y_eval.size), "skipped": skipped, "config": cfg.__dict__})

    def _level(self, views: Views, k: int, a_eval: torch.Tensor, y_eval: np.ndarray) -> LevelResult:
        """Passive and active completion, and the same architecture from scratch, on k samples per class."""
        cfg, view = self.config, views.zero
        kn = views.known.per_class(k)  # type: ignore[union-attr]
        xk, yk = view.received.activations[kn.rows], kn.y.long()

        def acc(m: nn.Module) -> float:
            return metrics.accuracy(y_eval, batched(m, a_eval).argmax(1).numpy())

        def train(model: nn.Module, params: list[nn.Parameter] | None) -> list[float]:
            return train_classifier(model, xk, yk, soft=False, steps=cfg.steps, batch=cfg.batch, lr=cfg.lr,
                                    max_shift=0, seed=cfg.seed, params=params, score=acc)[1]

        by: dict[str, list[float]] = {}
        for mode in cfg.modes:
            seg, top = self._completed(views, copy.deepcopy(view.segment), cfg.seed)
            model = nn.Sequential(seg, top)
            if mode == "passive":
                for p in seg.parameters():
                    p.requires_grad_(False)
            by[mode] = train(model, [p for p in model.parameters() if p.requires_grad])
        seg0, top0 = self._completed(views, reinit(view.public.architecture.segments[view.position - 1](), cfg.seed + 7),
                                     cfg.seed + 1)
        scratch = train(nn.Sequential(seg0, top0), None)
        best = max(by, key=lambda m: by[m][-1])
        chance = metrics.majority_rate(y_eval)
        return LevelResult(
            primary="accuracy", score=by[best][-1], floor=max(chance, scratch[-1]),
            metrics={"accuracy": by[best][-1], "best_method": best, "by_method": {m: v[-1] for m, v in by.items()},
                     "scratch_accuracy": scratch[-1], "advantage": by[best][-1] - scratch[-1], "chance": chance,
                     "labelled_per_class": k, "scratch_convergence": convergence(scratch, budget_points(cfg.steps))},
            convergence=convergence(by[best], budget_points(cfg.steps)))

    def _completed(self, views: Views, seg: nn.Module, seed: int) -> tuple[nn.Module, nn.Module]:
        """The segment and a fresh completion after it (public architecture, C outputs)."""
        view = views.zero
        seg.train()
        out = batched(seg.eval(), view.received.activations[:2])
        top = simulated_tail(view.public.architecture, view.position, out, view.public.num_classes, seed)
        return seg.train(), top
