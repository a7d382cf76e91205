"""Gradient label leakage (Li et al. 2022, "Label Leakage and Protection in Two-party Split Learning",
ICLR 2022, §3): the last trainer reads labels off the gradient ``g_K`` the DO sends back.

* **Norm attack** (§3.1): with softmax-CE, ``g = Wᵀ(p − onehot(y))``; a rare positive class gets large
  ``|1 − p|`` and so large gradient norms. Scored by ROC AUC of ``‖g‖`` for the minority class (binary
  tasks; for C > 2 the per-class AUCs of the one norm score are reported, not used as headline).
* **Cosine (direction) attack** (§3.2): gradients of one class point the same way. Zero knowledge:
  spherical k-means (k = C) of ``g/‖g‖``, clusters named by Hungarian matching (oracle); known-sample k:
  class references = mean direction of the known samples' gradients, refined by seeded spherical
  k-means. Score of class c = cos(g, ref_c): one-vs-rest AUC averaged over classes, and label accuracy
  (argmax), known rows excluded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import roc_auc_score

from clicooper.attacks import metrics
from clicooper.attacks.base import AttackResult, LevelResult, register, require
from clicooper.attacks.views import Views


@dataclass(frozen=True)
class GradientLeakConfig:
    """Settings of :class:`GradientLeakAttack`."""

    known_ks: tuple[int, ...] = (1, 10)
    max_rows: int = 5000
    n_init: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        require(all(k >= 1 for k in self.known_ks), "known_ks must be ≥ 1 (k = 0 is the zero-knowledge level)")
        require(self.max_rows >= 10, "max_rows must be ≥ 10")
        require(self.n_init >= 1, "n_init must be ≥ 1")


def _unit(g: np.ndarray) -> np.ndarray:
    return g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)


def norm_scores(g: np.ndarray, y: np.ndarray, c: int) -> dict[str, Any]:
    """Norm attack: AUC of ‖g‖ for the minority class and for each class."""
    norms = np.linalg.norm(g, axis=1)
    per = {str(k): float(roc_auc_score(y == k, norms)) for k in range(c) if 0 < (y == k).sum() < y.size}
    counts = np.bincount(y, minlength=c)
    minority = int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))
    return {"minority_class": minority, "auc_minority": per.get(str(minority), float("nan")), "per_class": per}


def cosine_scores(u: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """(N, C) cosine of each unit gradient with each class reference direction."""
    return u @ _unit(refs).T


@register("gradient-leak")
class GradientLeakAttack:
    """Li et al. 2022 norm and cosine label-leakage attacks on the gradients the party receives."""

    name: ClassVar[str] = "gradient-leak"
    knowledge: ClassVar[tuple[str, ...]] = ("zero", "known")
    known_k: ClassVar[int] = 10

    def __init__(self, **config: Any) -> None:
        self.config = GradientLeakConfig(**config)

    def run(self, views: Views) -> AttackResult:
        """Zero-knowledge (norm + oracle cosine clustering) and known-sample k cosine attacks."""
        cfg, view = self.config, views.zero
        c = view.public.num_classes
        require(view.received.gradients is not None,
                f"{view.received.party} receives no gradient (the open tail's last trainer computes the loss "
                "itself and receives the labels); attack T1…T(K-1) with --party, or use clustering on the labels")
        n = min(view.received.gradients.shape[0], cfg.max_rows)  # type: ignore[union-attr]
        g = view.received.gradients[:n].flatten(1).double().numpy()
        y = views.truth.y[:n].numpy()
        u = _unit(g)

        norm = norm_scores(g, y, c)
        km = KMeans(c, n_init=cfg.n_init, random_state=cfg.seed).fit(u)
        pred = km.labels_
        cont = np.zeros((c, c), dtype=np.int64)
        np.add.at(cont, (pred, y), 1)
        r, col = linear_sum_assignment(cont, maximize=True)
        refs = np.zeros((c, u.shape[1]))
        refs[col] = km.cluster_centers_[r]  # class col[i] ← cluster r[i] (oracle naming)
        cos_auc = metrics.ovr_auc(y, cosine_scores(u, refs))
        zero_metrics = {
            "norm": norm,
            "cosine_oracle_auc": cos_auc["auc"],
            "cosine_oracle_auc_per_class": cos_auc["per_class"],
            "oracle_accuracy": metrics.hungarian_accuracy(y, pred),
            "accuracy_chance": metrics.hungarian_chance(y, pred, seed=cfg.seed),
        }
        score = cos_auc["auc"]
        if c == 2:
            score = max(score, norm["auc_minority"])
        levels = {"zero-knowledge": LevelResult(primary="auc", score=score, floor=0.5, metrics=zero_metrics)}

        if views.known is not None:
            for k in cfg.known_ks:
                split = views.known.within(n, k, c)
                if split is None:
                    continue
                rows, ky, keep = split
                refs0 = np.stack([u[rows[ky == j]].mean(0) for j in range(c)])
                refined = KMeans(c, init=_unit(refs0), n_init=1).fit(u).cluster_centers_
                out: dict[str, Any] = {}
                for tag, ref in (("reference", refs0), ("seeded-kmeans", refined)):
                    s = cosine_scores(u, ref)
                    auc = metrics.ovr_auc(y[keep], s[keep])
                    out[tag] = {"auc": auc["auc"], "accuracy": metrics.accuracy(y[keep], s[keep].argmax(1))}
                best = max(out.values(), key=lambda d: d["auc"])
                levels[f"known-{k}"] = LevelResult(
                    primary="auc", score=best["auc"], floor=0.5,
                    metrics={**out, "accuracy": max(d["accuracy"] for d in out.values()),
                             "accuracy_chance": metrics.majority_rate(y[keep]), "scored_rows": int(keep.sum())})
        return AttackResult(attack=self.name, levels=levels,
                            info={"party": view.received.party, "epoch": view.received.epoch, "rows": n,
                                  "num_classes": c, "config": cfg.__dict__})
