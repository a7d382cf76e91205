"""Model extraction (docs/design/metrics.md).

* **Pooled trainers** — the trainers keep copies of their segments (§2 "deliver") and collude: they
  rebuild a surrogate by training a new head and tail around the frozen pooled segments. With k labelled
  samples per class that are also rows they received, the head is fitted by regression onto the
  activations T1 received for those rows plus cross-entropy on the labels; the tail is pre-trained on the
  last trainer's own outputs for every received row, pseudo-labelled by k-means seeded at the known class
  means. With k = 0 (observations only) the tail learns k-means cluster ids and the head is aligned to the
  received activation distribution (sliced Wasserstein) on unlabelled auxiliary images with an
  information-maximisation term (Liang et al. 2020, "SHOT", ICML, §3.2); it is scored Hungarian-matched
  since class names are unknown. The gain is reported against the same architecture trained from
  scratch on the same k samples; both stop early on a held-out tenth of the known samples.
* **Query client** — CopycatCNN (Correia-Silva et al. 2018, IJCNN) / KnockoffNets (Orekondy et al. 2019,
  CVPR): query ``predict`` on auxiliary images and train a surrogate on the answers, with soft labels
  (KL to the probabilities) and hard labels (CE on the argmax).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from torch import nn

from clicooper.attacks import metrics
from clicooper.attacks.base import AttackResult, LevelResult, budget_points, convergence, register, require
from clicooper.attacks.clustering import embed, seeded_kmeans
from clicooper.attacks.inversion import sliced_wasserstein
from clicooper.attacks.nets import batched, fit, random_shift, reinit
from clicooper.attacks.views import Architecture, Views

MODES = ("pooled", "query")


@dataclass(frozen=True)
class ExtractionConfig:
    """Settings of :class:`ExtractionAttack`."""

    modes: tuple[str, ...] = MODES
    ks: tuple[int, ...] = (0, 1, 10, 100)
    steps: int = 1500
    batch: int = 64
    lr: float = 1e-3
    queries: int = 5000
    max_shift: int = 2
    holdout: float = 0.1
    n_init: int = 10  # k-means restarts of the k = 0 pseudo-labels
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.n_init >= 1, "n_init must be ≥ 1")
        bad = set(self.modes) - set(MODES)
        require(not bad, f"unknown extraction modes {sorted(bad)}; choose from {MODES}")
        require(0 <= self.holdout < 0.5, "holdout (the share of the known samples kept for early stopping) must be "
                "in [0, 0.5)")
        require(all(k >= 0 for k in self.ks), "ks must be ≥ 0")
        require(self.steps >= 1 and self.batch >= 1 and self.queries >= 1, "steps, batch, queries must be ≥ 1")
        require(self.lr > 0, "lr must be > 0")


def _fresh_tail(arch: Architecture, width: int, c: int, seed: int) -> nn.Module:
    """The public tail if it maps ``width`` → C, else a linear layer (open tail or obfuscated outputs)."""
    if arch.tail is not None:
        t = reinit(arch.tail(), seed)
        try:
            if batched(t, torch.zeros(2, width)).shape[1] == c:
                return t
        except RuntimeError:
            pass
    torch.manual_seed(seed)
    return nn.Linear(width, c)


def _frozen(mods: list[nn.Module]) -> nn.Sequential:
    body = nn.Sequential(*mods).eval()
    for p in body.parameters():
        p.requires_grad_(False)
    return body


def _predict_labels(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    model.eval()
    return batched(model, x).argmax(1).numpy()


def train_classifier(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, *, soft: bool, steps: int,
                     batch: int, lr: float, max_shift: int, seed: int,
                     params: list[nn.Parameter] | None = None,
                     extra: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
                     score: Callable[[nn.Module], float] | None = None,
                     holdout: float = 0.0) -> tuple[nn.Module, list[float]]:
    """Train ``model`` on (x, targets): CE on hard labels or KL to soft probabilities, shift augmentation.

    ``holdout``: that share of the rows (when it is at least 10 rows) is kept out of training, and the state
    with the lowest loss on them (read 20 times along the run) is the one returned and scored: early
    stopping on data the attacker holds. ``extra(model, rows)`` is added to the loss on training and
    held-out rows alike.

    Returns the model and ``score(model)`` read at ¼, ½ and all of ``steps`` (empty without ``score``)."""
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    rows, held = torch.arange(n), None
    if holdout > 0 and round(n * holdout) >= 10:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
        held, rows = perm[: round(n * holdout)], perm[round(n * holdout):]

    def objective(out: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if soft:
            return F.kl_div(F.log_softmax(out, 1), targets[idx], reduction="batchmean")
        return F.cross_entropy(out, targets[idx])

    def loss(m: nn.Module, i: torch.Tensor) -> torch.Tensor:
        idx = rows[i]
        ls = objective(m(random_shift(x[idx], max_shift, gen)), idx)
        return ls + (extra(m, idx) if extra is not None else 0)

    def val(m: nn.Module) -> float:
        with torch.no_grad():
            v = objective(batched(m, x[held]), held)  # type: ignore[index]
            return float(v + (extra(m, held) if extra is not None else 0))  # type: ignore[arg-type]

    return fit_scored(model, loss, rows.numel(), score, steps=steps, batch=batch, lr=lr, seed=seed, params=params,
                      val=None if held is None else val, val_every=max(1, steps // 20))


def fit_scored(model: nn.Module, loss: Callable[[nn.Module, torch.Tensor], torch.Tensor], n: int,
               score: Callable[[nn.Module], float] | None, *, steps: int, **kw: Any) -> tuple[nn.Module, list[float]]:
    """:func:`~clicooper.attacks.nets.fit`, with ``score(model)`` read at ¼, ½ and all of ``steps`` along the
    run (issue 14: an attack shows it has converged). Without ``score`` the list is empty."""
    got: dict[int, float] = {}
    on = None if score is None else (lambda s, m: got.__setitem__(s, score(m)))
    model = fit(model, loss, n, steps=steps, checkpoints=budget_points(steps)[:-1], on_checkpoint=on, **kw)
    if score is None:
        return model, []
    final = score(model)
    return model, [got.get(p, final) for p in budget_points(steps)[:-1]] + [final]


@register("extraction")
class ExtractionAttack:
    """Surrogate models from pooled trainer segments and from a query interface."""

    name: ClassVar[str] = "extraction"
    knowledge: ClassVar[tuple[str, ...]] = ("zero", "known", "aux", "query")
    known_k: ClassVar[int] = 100

    def __init__(self, **config: Any) -> None:
        self.config = ExtractionConfig(**config)

    def run(self, views: Views) -> AttackResult:
        """Pooled-segment surrogates for each k, then query surrogates (soft, hard)."""
        cfg, truth = self.config, views.truth
        require(truth.x_test is not None and truth.y_test is not None, "extraction needs held-out test data")
        x_test, y_test = truth.x_test.float(), truth.y_test.numpy()  # type: ignore[union-attr]
        c = views.zero.public.num_classes
        chance = metrics.majority_rate(y_test)
        levels: dict[str, LevelResult] = {}
        skipped: dict[str, str] = {}
        if "pooled" in cfg.modes:
            for k in cfg.ks:
                why = self._pooled_ok(views, k)
                if why:
                    skipped[f"pooled-k{k}"] = why
                    continue
                levels[f"pooled-k{k}"] = self._pooled(views, k, x_test, y_test, chance)
        if "query" in cfg.modes:
            if views.predict is None or views.aux is None:
                skipped["query"] = "needs a predict interface and auxiliary (query) data"
            else:
                levels.update(self._query(views, x_test, y_test, chance))
        return AttackResult(attack=self.name, levels=levels,
                            info={"parties": [v.received.party for v in views.pooled],
                                  "epoch": views.zero.received.epoch, "test_rows": int(y_test.size),
                                  "num_classes": c, "skipped": skipped, "config": cfg.__dict__})

    # -- pooled trainers ---------------------------------------------------------------------------------

    def _pooled_ok(self, views: Views, k: int) -> str:
        pool = views.pooled
        if not pool or pool[0].position != 1 or [v.position for v in pool] != list(range(1, len(pool) + 1)):
            return "needs every trainer's view (build the view with party='pool')"
        if k == 0 and views.aux is None:
            return "k = 0 needs unlabelled auxiliary images to fit the head"
        if k > 0 and (views.known is None or views.known.k < k):
            return f"needs {k} known samples per class"
        return ""

    def _pooled(self, views: Views, k: int, x_test: torch.Tensor, y_test: np.ndarray, chance: float) -> LevelResult:
        """A surrogate around the frozen pooled segments: its tail pre-trained on pseudo-labelled outputs of
        the last trainer, then its head fitted without (k = 0) or with k known samples per class."""
        cfg, pool, arch = self.config, views.pooled, views.zero.public.architecture
        c = views.zero.public.num_classes
        body = _frozen([v.segment for v in pool])
        feats = pool[-1].own_output()  # the last trainer's outputs, every row
        width = feats.flatten(1).shape[1]
        pseudo = self._pseudo_labels(views, k, feats)
        head = reinit(arch.head(), cfg.seed)
        tail = nn.Sequential(nn.Flatten(), _fresh_tail(arch, width, c, cfg.seed))
        # 1) tail on the last trainer's own outputs, pseudo-labelled
        train_classifier(tail, feats.flatten(1), torch.as_tensor(pseudo, dtype=torch.long), soft=False,
                         steps=max(1, cfg.steps // 2), batch=128, lr=cfg.lr, max_shift=0, seed=cfg.seed)
        model = nn.Sequential(head, body, tail)
        if k == 0:
            return self._fit_unlabelled(views, model, x_test, y_test)
        return self._fit_known(views, k, model, width, x_test, y_test, chance)

    def _pseudo_labels(self, views: Views, k: int, feats: torch.Tensor) -> np.ndarray:
        """A label for every received row from the last trainer's outputs: k-means cluster ids (k = 0), or
        k-means seeded at the known samples' class means with the known rows' own labels (k > 0)."""
        cfg, c = self.config, views.zero.public.num_classes
        z = embed(feats.flatten(1).double().numpy(), "cosine", 64, cfg.seed)
        if k == 0:
            return KMeans(c, n_init=cfg.n_init, random_state=cfg.seed).fit_predict(z)
        kn = views.known.per_class(k)  # type: ignore[union-attr]
        rows, ky = kn.rows.numpy(), kn.y.numpy()
        pseudo = seeded_kmeans(z, rows, ky, c)
        pseudo[rows] = ky
        return pseudo

    def _fit_unlabelled(self, views: Views, model: nn.Sequential, x_test: torch.Tensor,
                        y_test: np.ndarray) -> LevelResult:
        """k = 0: the head aligned to what T1 received (sliced Wasserstein) on unlabelled auxiliary images,
        with an information-maximisation term; scored Hungarian-matched."""
        cfg, head = self.config, model[0]
        a0 = views.pooled[0].received.activations  # what T1 received, every row
        xa = views.aux.x.float()  # type: ignore[union-attr]
        gen = torch.Generator().manual_seed(cfg.seed)

        def loss0(m: nn.Module, idx: torch.Tensor) -> torch.Tensor:
            xb = random_shift(xa[idx], cfg.max_shift, gen)
            h = m[0](xb)
            ridx = torch.randint(0, a0.shape[0], (idx.numel(),), generator=gen)
            p = F.softmax(m[2](m[1](h)), 1)
            ent = -(p * p.clamp_min(1e-8).log()).sum(1).mean()
            pm = p.mean(0)
            div = (pm * pm.clamp_min(1e-8).log()).sum()  # −H(mean p): keep classes balanced
            return sliced_wasserstein(h, a0[ridx], generator=gen) + 0.1 * (ent + div)

        _, accs = fit_scored(model, loss0, xa.shape[0],
                             lambda m: metrics.hungarian_accuracy(y_test, _predict_labels(m, x_test)),
                             steps=cfg.steps, batch=cfg.batch, lr=cfg.lr, seed=cfg.seed, params=list(head.parameters()))
        pred = _predict_labels(model, x_test)
        acc = metrics.hungarian_accuracy(y_test, pred)
        return LevelResult(primary="accuracy", score=acc, floor=metrics.hungarian_chance(y_test, pred),
                           metrics={"oracle_accuracy": acc, "labelled_per_class": 0,
                                    "note": "class names unknown at k = 0: Hungarian-matched"},
                           convergence=convergence(accs, budget_points(cfg.steps),
                                                   what="head steps (tail pre-training at its full budget)"))

    def _fit_known(self, views: Views, k: int, model: nn.Sequential, width: int, x_test: torch.Tensor,
                   y_test: np.ndarray, chance: float) -> LevelResult:
        """k > 0: head and tail fitted on the known samples, against the same architecture from scratch. Both keep
        ``holdout`` of the known samples out of training and stop early on them (at k = 10 the fit on 100 samples
        otherwise swings by up to 0.07 between readings; docs/research/attack-budgets.md)."""
        cfg, arch, c = self.config, views.zero.public.architecture, views.zero.public.num_classes
        head, tail = model[0], model[2]
        a0 = views.pooled[0].received.activations  # what T1 received, every row
        kn = views.known.per_class(k)  # type: ignore[union-attr]
        xk, yk, a0k = kn.x.float(), kn.y.long(), a0[kn.rows]

        # 2) head by regression onto T1's received activations for the known rows, + CE through the body
        def reg(m: nn.Module, idx: torch.Tensor) -> torch.Tensor:
            return F.mse_loss(m[0](xk[idx]), a0k[idx]) / a0k.pow(2).mean().clamp_min(1e-12)

        def test_acc(m: nn.Module) -> float:
            return metrics.accuracy(y_test, _predict_labels(m, x_test))

        _, accs = train_classifier(model, xk, yk, soft=False, steps=cfg.steps, batch=cfg.batch, lr=cfg.lr,
                                   max_shift=0, seed=cfg.seed, params=list(head.parameters()) + list(tail.parameters()),
                                   extra=reg, score=test_acc, holdout=cfg.holdout)
        acc = accs[-1]
        # 3) the same architecture from scratch on the same k samples: the head and the segments the pool holds
        # (one attacker's view holds only the first of them), then the same fresh tail
        segments = arch.segments[:len(views.pooled)]
        scratch = nn.Sequential(reinit(arch.head(), cfg.seed + 1),
                                *[reinit(f(), cfg.seed + 2 + i) for i, f in enumerate(segments)],
                                nn.Flatten(), _fresh_tail(arch, width, c, cfg.seed + 9))
        _, base_accs = train_classifier(scratch, xk, yk, soft=False, steps=cfg.steps, batch=cfg.batch, lr=cfg.lr,
                                        max_shift=cfg.max_shift, seed=cfg.seed, score=test_acc, holdout=cfg.holdout)
        base = base_accs[-1]
        return LevelResult(primary="accuracy", score=acc, floor=max(chance, base),
                           metrics={"accuracy": acc, "scratch_accuracy": base, "advantage": acc - base,
                                    "chance": chance, "labelled_per_class": k,
                                    "scratch_convergence": convergence(base_accs, budget_points(cfg.steps))},
                           convergence=convergence(accs, budget_points(cfg.steps),
                                                   what="steps (tail pre-training at its full budget)"))

    # -- query client ------------------------------------------------------------------------------------

    def _query(self, views: Views, x_test: torch.Tensor, y_test: np.ndarray, chance: float) -> dict[str, LevelResult]:
        cfg, arch = self.config, views.zero.public.architecture
        c = views.zero.public.num_classes
        xq = views.aux.x[: cfg.queries].float()  # type: ignore[union-attr]
        probs = batched(views.predict, xq).float()  # type: ignore[arg-type]
        require(probs.shape == (xq.shape[0], c), f"predict must return (N, {c}) probabilities, got {tuple(probs.shape)}")
        victim_test = batched(views.predict, x_test).argmax(1).numpy()  # type: ignore[arg-type]
        out: dict[str, LevelResult] = {}
        for soft in (True, False):
            model = build_model(arch, x_test.shape[1:], c, seed=cfg.seed)
            targets = probs if soft else probs.argmax(1)
            _, accs = train_classifier(model, xq, targets, soft=soft, steps=cfg.steps, batch=cfg.batch, lr=cfg.lr,
                                       max_shift=0, seed=cfg.seed,
                                       score=lambda m: metrics.accuracy(y_test, _predict_labels(m, x_test)))
            pred = _predict_labels(model, x_test)
            acc = metrics.accuracy(y_test, pred)
            out["query-soft" if soft else "query-hard"] = LevelResult(
                primary="accuracy", score=acc, floor=chance,
                metrics={"accuracy": acc, "fidelity": metrics.accuracy(victim_test, pred),
                         "victim_accuracy": metrics.accuracy(y_test, victim_test),
                         "queries": int(xq.shape[0]), "relative": acc / max(metrics.accuracy(y_test, victim_test), 1e-12)},
                convergence=convergence(accs, budget_points(cfg.steps)))
        return out


def build_model(arch: Architecture, input_shape: Any, c: int, *, seed: int) -> nn.Sequential:
    """The public architecture, freshly initialised, with a C-way output."""
    head = reinit(arch.head(), seed)
    segs = [reinit(f(), seed + 1 + i) for i, f in enumerate(arch.segments)]
    width = int(math.prod(batched(nn.Sequential(head, *segs), torch.zeros(2, *input_shape)).shape[1:]))
    return nn.Sequential(head, *segs, nn.Flatten(), _fresh_tail(arch, width, c, seed + 99))
