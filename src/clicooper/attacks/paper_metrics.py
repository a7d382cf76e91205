"""The CliCooper paper's headline label metrics, computed in the paper's sense (issue 14, item 6), each
beside the strong attacker's figure on the same data.

The paper (arXiv 2603.08421, abstract; docs/design/metrics.md#reading-the-papers-numbers) reports clustering-attack success 0 % and extraction
surrogates at ≈ 1 %. Both read labels **in the obfuscated label space without any labelled sample**:

* ``cluster-naming`` — the last trainer clusters its own output (k-means, k = C) and names each cluster
  after the labels it received for the cluster's rows, read naively (received label ``o`` → class
  ``o // m``, m = the model's outputs per class). Success = the share of clusters named with their true
  majority class (floor: 1/C, a random naming). Labels reach a trainer only in the open tail; in the
  U-shape the level is skipped. Strong attacker beside it: the same clusters named by 10 labelled samples
  per class (known-sample level), and the label-name-free Hungarian oracle.
* ``surrogate-obfuscated`` — a query client gets the model's own outputs (the obfuscated label space, as a
  copy of the model without the DO's key answers; the runner's ``query_space = "raw"``) on auxiliary
  images, distils a surrogate (KL to the answers) and reads its argmax naively. Accuracy on held-out true
  labels (floor: majority rate). Strong attacker beside it: the same surrogate's outputs named by 10
  labelled samples per class.

Why they differ: the paper's metrics score *naming*, which a secret relabelling defeats by construction;
the strong figures score *grouping*, which obfuscation leaves intact, so a handful of labelled samples
restores the names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.cluster import KMeans

from clicooper.attacks import metrics
from clicooper.attacks.base import AttackResult, LevelResult, budget_points, convergence, register, require
from clicooper.attacks.clustering import embed
from clicooper.attacks.extraction import build_model, train_classifier
from clicooper.attacks.nets import batched
from clicooper.attacks.views import Views

WHY = ("the paper's metric needs the class *names*, which the secret label relabelling hides by construction; "
       "the strong attacker only needs the *grouping*, which obfuscation leaves intact, and names the groups "
       "with a handful of labelled samples")


@dataclass(frozen=True)
class PaperMetricsConfig:
    """Settings of :class:`PaperMetricsAttack`."""

    named_k: int = 10
    steps: int = 600
    batch: int = 64
    lr: float = 1e-3
    queries: int = 2000
    max_rows: int = 5000
    n_init: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.named_k >= 1, "named_k (labelled samples per class of the strong attacker) must be ≥ 1")
        require(min(self.steps, self.batch, self.queries, self.n_init) >= 1 and self.max_rows >= 10,
                "steps, batch, queries, n_init ≥ 1 and max_rows ≥ 10")
        require(self.lr > 0, "lr must be > 0")


def naive_class(o: np.ndarray, m: int) -> np.ndarray:
    """The keyless reading of an output index: sub-class ``o`` of ``C·m`` belongs to class ``o // m``."""
    return np.asarray(o) // max(1, m)


def name_by_majority(groups: np.ndarray, votes: np.ndarray, n_groups: int, fallback: np.ndarray) -> np.ndarray:
    """Name each group by the most frequent vote among its members (``fallback[g]`` when it has none)."""
    names = fallback.copy()
    for g in range(n_groups):
        v = votes[groups == g]
        if v.size:
            names[g] = np.bincount(v).argmax()
    return names


@register("paper-metrics")
class PaperMetricsAttack:
    """The paper's cluster-naming and obfuscated-space surrogate metrics, with the strong figures beside."""

    name: ClassVar[str] = "paper-metrics"
    knowledge: ClassVar[tuple[str, ...]] = ("zero", "known", "aux", "query")
    known_k: ClassVar[int] = 10
    query_space: ClassVar[str] = "raw"  # the model's own outputs, not the DO's decoded probabilities

    def __init__(self, **config: Any) -> None:
        self.config = PaperMetricsConfig(**config)

    def run(self, views: Views) -> AttackResult:
        """Both paper metrics where the views allow them; skipped levels say why."""
        levels: dict[str, LevelResult] = {}
        skipped: dict[str, str] = {}
        if views.zero.received.labels is None:
            skipped["cluster-naming"] = ("no label reaches a trainer in the U-shape: the paper's naming has "
                                         "nothing to read (see clustering's known-k levels)")
        else:
            levels["cluster-naming"] = self._cluster_naming(views)
        if views.predict is None or views.aux is None:
            skipped["surrogate-obfuscated"] = "needs the model's outputs for auxiliary query images"
        else:
            levels["surrogate-obfuscated"] = self._surrogate(views)
        return AttackResult(attack=self.name, levels=levels,
                            info={"party": views.zero.received.party, "epoch": views.zero.received.epoch,
                                  "skipped": skipped, "why_they_differ": WHY, "config": self.config.__dict__})

    def _cluster_naming(self, views: Views) -> LevelResult:
        """Clusters of the last trainer's own output, named by its received (obfuscated) labels."""
        cfg, view = self.config, views.zero
        c = view.public.num_classes
        out = view.own_output()
        n = min(out.shape[0], cfg.max_rows)
        y, received = views.truth.y[:n].numpy(), view.received.labels[:n].long().numpy()  # type: ignore[union-attr]
        m = max(1, out.flatten(1).shape[1] // c) if out.flatten(1).shape[1] % c == 0 else 1
        z = embed(out[:n].flatten(1).double().numpy(), "cosine", 64, cfg.seed)
        groups = KMeans(c, n_init=cfg.n_init, random_state=cfg.seed).fit_predict(z)
        true_major = name_by_majority(groups, y, c, np.zeros(c, dtype=np.int64))
        named = name_by_majority(groups, naive_class(received, m), c, np.zeros(c, dtype=np.int64))
        success = float(np.mean(named == true_major))
        strong: dict[str, Any] = {"oracle_accuracy": metrics.hungarian_accuracy(y, groups)}
        if views.known is not None and (split := views.known.within(n, min(cfg.named_k, views.known.k), c)):
            rows, ky, keep = split
            by_known = name_by_majority(groups[rows], ky, c, true_major * 0)
            strong.update({"name": f"clusters named by {len(ky) // c} labelled samples per class",
                           "score": metrics.accuracy(y[keep], by_known[groups][keep])})
        return LevelResult(primary="naming_success", score=success, floor=1.0 / c,
                           metrics={"naming_success": success, "row_accuracy": metrics.accuracy(y, named[groups]),
                                    "outputs_per_class": m, "rows": int(n), "strong": strong, "why": WHY})

    def _surrogate(self, views: Views) -> LevelResult:
        """A surrogate distilled from the model's own outputs, read without the key, and named by k samples."""
        cfg, truth = self.config, views.truth
        c = views.zero.public.num_classes
        xq = views.aux.x[: cfg.queries].float()  # type: ignore[union-attr]
        probs = batched(views.predict, xq).float()  # type: ignore[arg-type]
        outputs = probs.shape[1]
        m = outputs // c if outputs % c == 0 else 1
        x_test, y_test = truth.x_test.float(), truth.y_test.numpy()  # type: ignore[union-attr]
        model = build_model(views.zero.public.architecture, x_test.shape[1:], outputs, seed=cfg.seed)

        def naive_acc(mod: torch.nn.Module) -> float:
            return metrics.accuracy(y_test, naive_class(batched(mod, x_test).argmax(1).numpy(), m))

        _, accs = train_classifier(model, xq, probs, soft=True, steps=cfg.steps, batch=cfg.batch, lr=cfg.lr,
                                   max_shift=0, seed=cfg.seed, score=naive_acc)
        pred = batched(model, x_test).argmax(1).numpy()
        strong: dict[str, Any] = {}
        if views.known is not None:
            kn = views.known.per_class(min(cfg.named_k, views.known.k))
            votes = batched(model, kn.x.float()).argmax(1).numpy()
            names = name_by_majority(votes, kn.y.numpy(), outputs, naive_class(np.arange(outputs), m))
            strong = {"name": f"surrogate outputs named by {kn.y.numel() // c} labelled samples per class",
                      "score": metrics.accuracy(y_test, names[pred])}
        return LevelResult(primary="accuracy", score=accs[-1], floor=metrics.majority_rate(y_test),
                           metrics={"accuracy": accs[-1], "queries": int(xq.shape[0]), "outputs": outputs,
                                    "outputs_per_class": m, "strong": strong, "why": WHY},
                           convergence=convergence(accs, budget_points(cfg.steps)))
