"""Clustering label inference (Liu et al. 2022, "Clustering Label Inference Attack against Practical Split
Learning", arXiv:2203.05222, §4): a trainer clusters what it holds — the activations it receives, the
gradients it receives, and its own output — and reads the clusters as labels.

Zero knowledge: k-means (k = C) and stronger clusterers; scored label-name-free by Hungarian-matched
accuracy and ARI (an oracle upper bound: the attacker does not know which cluster is which class).
Known-sample k: k labelled samples per class name the clusters — seeded k-means (centroids at the known
samples' class means) and a logistic-regression probe; scored on true labels, known rows excluded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler

from clicooper.attacks import metrics
from clicooper.attacks.base import AttackResult, LevelResult, register, require
from clicooper.attacks.views import Views, ZeroKnowledgeView

SOURCES = ("activations", "gradients", "output", "labels")
CLUSTERERS = ("kmeans", "cosine-kmeans", "gmm")


@dataclass(frozen=True)
class ClusteringConfig:
    """Settings of :class:`ClusteringAttack`.

    ``pca_dims``: features wider than this are PCA-projected first (k-means distances are nearly
    preserved; it keeps 6,272-wide conv activations tractable). ``euclid_dims``: the width of k-means'
    euclidean space (at least ``pca_dims``). ``exact_svd_max``: the projection is an exact SVD when the
    feature matrix's smaller side is at most this, a seeded randomized one above (0: always randomized, the
    smoke budget's choice: an exact SVD of 300 × 6,272 activations took seconds). ``max_rows`` caps the rows
    clustered.
    """

    sources: tuple[str, ...] = ("activations", "gradients", "output", "labels")
    clusterers: tuple[str, ...] = CLUSTERERS
    known_ks: tuple[int, ...] = (1, 10)
    pca_dims: int = 64
    euclid_dims: int = 128
    exact_svd_max: int = 512
    max_rows: int = 5000
    n_init: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        bad = set(self.sources) - set(SOURCES)
        require(not bad, f"unknown sources {sorted(bad)}; choose from {SOURCES}")
        bad = set(self.clusterers) - set(CLUSTERERS)
        require(not bad, f"unknown clusterers {sorted(bad)}; choose from {CLUSTERERS}")
        require(len(self.clusterers) > 0 and len(self.sources) > 0, "give at least one source and one clusterer")
        require(all(k >= 1 for k in self.known_ks), "known_ks must be ≥ 1 (k = 0 is the zero-knowledge level)")
        require(self.pca_dims >= 2, "pca_dims must be ≥ 2")
        require(self.euclid_dims >= 2, "euclid_dims must be ≥ 2")
        require(self.exact_svd_max >= 0, "exact_svd_max must be ≥ 0")
        require(self.max_rows >= 10, "max_rows must be ≥ 10")
        require(self.n_init >= 1, "n_init must be ≥ 1")


def source_features(view: ZeroKnowledgeView, source: str) -> np.ndarray | None:
    """The (N, D) feature matrix of one source (None when the party did not receive it)."""
    rec = view.received
    if source == "activations":
        t = rec.activations
    elif source == "gradients":
        if rec.gradients is None:
            return None
        t = rec.gradients
    elif source == "output":
        t = view.own_output()
    else:
        if rec.labels is None:
            return None
        t = torch.nn.functional.one_hot(rec.labels.long()).float()
    return t.flatten(1).double().numpy()


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def pca_project(z: np.ndarray, d: int, *, whiten: bool = False, seed: int = 0,
                exact_max: int = 512) -> np.ndarray:
    """Project rows onto the top ``d`` principal components (torch SVD: exact when the matrix's smaller side
    is at most ``exact_max``, randomized above)."""
    t = torch.as_tensor(z, dtype=torch.float32)
    t = t - t.mean(0, keepdim=True)
    if min(t.shape) <= exact_max:
        _, s, v = torch.linalg.svd(t, full_matrices=False)
        s, v = s[:d], v[:d].T
    else:  # randomized (Halko et al. 2011) with oversampling: exact enough for clustering, far faster
        torch.manual_seed(seed)
        _, s, v = torch.pca_lowrank(t, q=min(d + 16, *t.shape), center=False, niter=3)
        s, v = s[:d], v[:, :d]
    out = t @ v
    if whiten:
        out = out / (s / max(t.shape[0] - 1, 1) ** 0.5).clamp_min(1e-8)
    return out.double().numpy()


def embed(x: np.ndarray, space: str, dims: int, seed: int, *, euclid_dims: int = 128,
          exact_max: int = 512) -> np.ndarray:
    """Feature space of a clusterer: ``euclid`` (PCA to ``max(dims, euclid_dims)`` if wider), ``cosine``
    (L2 → PCA → L2, the direction of the vector, as Liu et al. normalise gradients), ``white`` (standardise
    → whitened PCA). ``exact_max``: see :func:`pca_project`."""
    def pca(z: np.ndarray, d: int, whiten: bool = False) -> np.ndarray:
        d = min(d, z.shape[0] - 1, z.shape[1])
        if z.shape[1] <= d and not whiten:
            return z
        return pca_project(z, d, whiten=whiten, seed=seed, exact_max=exact_max)
    if space == "euclid":
        return pca(x, max(dims, euclid_dims))
    if space == "cosine":
        return _l2(pca(_l2(x), dims))
    return pca(StandardScaler().fit_transform(x), min(dims, 32), whiten=True)


def _proj(cfg: ClusteringConfig) -> dict[str, int]:
    """The projection settings of ``cfg`` that :func:`embed` takes."""
    return {"euclid_dims": cfg.euclid_dims, "exact_max": cfg.exact_svd_max}


_SPACE = {"kmeans": "euclid", "cosine-kmeans": "cosine", "gmm": "white"}


def cluster(z: np.ndarray, c: int, clusterer: str, *, n_init: int, seed: int) -> np.ndarray:
    """Cluster ids (N,) of the embedded features ``z`` into ``c`` clusters."""
    if clusterer == "gmm":
        gm = GaussianMixture(c, covariance_type="diag", n_init=2, max_iter=300, random_state=seed, reg_covar=1e-4)
        return gm.fit_predict(z)
    return KMeans(c, n_init=n_init, random_state=seed).fit_predict(z)


def seeded_kmeans(z: np.ndarray, rows: np.ndarray, y: np.ndarray, c: int) -> np.ndarray:
    """k-means started at the known samples' class means; cluster i is named class i."""
    cent = np.stack([z[rows[y == k]].mean(0) for k in range(c)])
    return KMeans(c, init=cent, n_init=1).fit_predict(z)


def probe(x: np.ndarray, rows: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Logistic-regression probe trained on the known rows only."""
    clf = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    clf.fit(x[rows], y)
    return clf.predict(x)


@register("clustering")
class ClusteringAttack:
    """Liu et al. 2022 clustering label inference on one trainer's view."""

    name: ClassVar[str] = "clustering"
    knowledge: ClassVar[tuple[str, ...]] = ("zero", "known")
    known_k: ClassVar[int] = 10

    def __init__(self, **config: Any) -> None:
        self.config = ClusteringConfig(**config)

    def run(self, views: Views) -> AttackResult:
        """Zero-knowledge oracle per source and clusterer; known-sample accuracy for each k in known_ks."""
        cfg, view = self.config, views.zero
        c = view.public.num_classes
        n = min(view.received.activations.shape[0], cfg.max_rows)
        y = views.truth.y[:n].numpy()
        feats = {s: f[:n] for s in cfg.sources if (f := source_features(view, s)) is not None}
        require(bool(feats), "none of the requested sources was received by this party")
        spaces = {s: {sp: embed(f, sp, cfg.pca_dims, cfg.seed, **_proj(cfg))
                      for sp in {_SPACE[k] for k in cfg.clusterers}}
                  for s, f in feats.items()}

        zero: dict[str, Any] = {}
        best = (-1.0, 0.0)
        for s in feats:
            zero[s] = {}
            for k in cfg.clusterers:
                pred = cluster(spaces[s][_SPACE[k]], c, k, n_init=cfg.n_init, seed=cfg.seed)
                acc = metrics.hungarian_accuracy(y, pred)
                chance = metrics.hungarian_chance(y, pred, seed=cfg.seed)
                zero[s][k] = {"oracle_accuracy": acc, "ari": metrics.ari(y, pred), "chance": chance}
                if acc > best[0]:
                    best = (acc, chance)
        levels = {"zero-knowledge": LevelResult(primary="oracle_accuracy", score=best[0], floor=best[1],
                                                metrics={"by_source": zero})}

        if views.known is not None:
            for k in cfg.known_ks:
                split = views.known.within(n, k, c)  # known rows beyond max_rows are not clustered
                if split is None:
                    continue
                rows, ky, keep = split  # scored on the unknown rows
                res: dict[str, Any] = {}
                top = -1.0
                for s, f in feats.items():
                    r = {}
                    for sp in ("euclid", "cosine"):
                        z = spaces[s].get(sp)
                        if z is None:
                            z = embed(f, sp, cfg.pca_dims, cfg.seed, **_proj(cfg))
                        r[f"seeded-kmeans-{sp}"] = metrics.accuracy(y[keep], seeded_kmeans(z, rows, ky, c)[keep])
                    zp = spaces[s].get("white")
                    if zp is None:
                        zp = embed(f, "white", cfg.pca_dims, cfg.seed, **_proj(cfg))
                    r["probe"] = metrics.accuracy(y[keep], probe(zp, rows, ky, cfg.seed)[keep])
                    r["best"] = max(r.values())
                    res[s] = r
                    top = max(top, r["best"])
                levels[f"known-{k}"] = LevelResult(primary="accuracy", score=top,
                                                   floor=metrics.majority_rate(y[keep]),
                                                   metrics={"by_source": res, "scored_rows": int(keep.sum())})
        return AttackResult(attack=self.name, levels=levels,
                            info={"party": view.received.party, "epoch": view.received.epoch, "rows": n,
                                  "num_classes": c, "config": cfg.__dict__})
