"""Metrics of docs/design/metrics.md#attacks-and-metrics: SSIM / PSNR / MSE with the two inversion floors, clustering accuracy (Hungarian
matched) and ARI, one-vs-rest AUC, and confidence intervals for multi-seed figures.

SSIM follows Wang et al. 2004 ("Image quality assessment: from error visibility to structural
similarity", IEEE TIP) with the settings docs/design/metrics.md#attacks-and-metrics fixes: 11×11 Gaussian window, σ = 1.5, data range 1,
K1 = 0.01, K2 = 0.03, population covariance, averaged over the "valid" region (the window inside the
image) and over channels — identical to ``skimage.metrics.structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1)``, which crops the filter radius the same way.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, roc_auc_score

from clicooper.errors import AttackError

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def _gauss_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def _as_images(x: torch.Tensor, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() == 3:  # (N, H, W) → (N, 1, H, W)
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise AttackError(f"{name} must be images shaped (N, C, H, W) or (N, H, W), got {tuple(x.shape)}")
    if x.shape[-1] < SSIM_WINDOW or x.shape[-2] < SSIM_WINDOW:
        raise AttackError(
            f"SSIM needs images of at least {SSIM_WINDOW}×{SSIM_WINDOW} pixels, got {tuple(x.shape[-2:])}; "
            "upsample small images before measuring"
        )
    return x.to(torch.float64)


def ssim(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM of ``x`` against ``y`` (both (N, C, H, W) or (N, H, W); ``y`` may be one image that
    broadcasts). Returns a float64 tensor of shape (N,).
    """
    x = _as_images(x, "x")
    y = _as_images(y, "y")
    if y.shape[0] == 1 and x.shape[0] != 1:
        y = y.expand_as(x)
    if x.shape != y.shape:
        raise AttackError(f"SSIM needs images of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    n, c, h, w = x.shape
    g = _gauss_1d()
    kh = g.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    kw = g.view(1, 1, 1, -1).expand(c, 1, 1, -1)

    def filt(t: torch.Tensor) -> torch.Tensor:  # separable Gaussian, valid region only
        return F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)

    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    ux, uy = filt(x), filt(y)
    vx = filt(x * x) - ux * ux
    vy = filt(y * y) - uy * uy
    vxy = filt(x * y) - ux * uy
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error, shape (N,)."""
    d = (torch.as_tensor(x, dtype=torch.float64) - torch.as_tensor(y, dtype=torch.float64)) ** 2
    return d.flatten(1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0, cap: float = 100.0) -> torch.Tensor:
    """Per-image PSNR in dB (identical images are capped at ``cap``), shape (N,)."""
    m = mse(x, y)
    return torch.where(m > 0, 10 * torch.log10(data_range**2 / m.clamp_min(1e-300)), torch.full_like(m, cap))


def image_scores(recon: torch.Tensor, victims: torch.Tensor) -> dict[str, float]:
    """Mean SSIM, PSNR and MSE of reconstructions against the victims' true images."""
    return {
        "ssim": float(ssim(recon, victims).mean()),
        "psnr": float(psnr(recon, victims).mean()),
        "mse": float(mse(recon, victims).mean()),
    }


def inversion_floors(
    victims: torch.Tensor, victim_y: torch.Tensor, aux_x: torch.Tensor, aux_y: torch.Tensor
) -> dict[str, float]:
    """docs/design/metrics.md#floors on the same victims: SSIM against the auxiliary mean image (``global_floor``) and
    against the auxiliary mean image of the victim's own class (``class_floor``: what the label alone
    gives). Classes absent from the auxiliary data fall back to the global mean image.
    """
    mean_img = aux_x.to(torch.float64).mean(0, keepdim=True)
    g = ssim(victims, mean_img)
    class_means = torch.cat(
        [aux_x[aux_y == int(c)].to(torch.float64).mean(0, keepdim=True) if bool((aux_y == int(c)).any())
         else mean_img for c in victim_y.tolist()]
    )
    return {"global_floor": float(g.mean()), "class_floor": float(ssim(victims, class_means).mean())}


def hungarian_accuracy(y_true: np.ndarray | torch.Tensor, y_pred: np.ndarray | torch.Tensor) -> float:
    """Accuracy after the best one-to-one mapping of predicted cluster ids to labels (the label-name-free
    oracle of clustering attacks, Liu et al. 2022). Clusters left unmatched count as wrong."""
    t = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(y_pred).astype(np.int64).ravel()
    if t.size == 0:
        raise AttackError("no samples to score; increase the number of recorded rows or victims")
    _, ti = np.unique(t, return_inverse=True)
    _, pi = np.unique(p, return_inverse=True)
    cont = np.zeros((pi.max() + 1, ti.max() + 1), dtype=np.int64)
    np.add.at(cont, (pi, ti), 1)
    r, c = linear_sum_assignment(cont, maximize=True)
    return float(cont[r, c].sum() / t.size)


def hungarian_chance(y_true: np.ndarray | torch.Tensor, y_pred: np.ndarray | torch.Tensor, *,
                     repeats: int = 5, seed: int = 0) -> float:
    """Chance level of :func:`hungarian_accuracy`: the same cluster sizes assigned at random."""
    rng = np.random.default_rng(seed)
    p = np.asarray(y_pred).ravel()
    return float(np.mean([hungarian_accuracy(y_true, rng.permutation(p)) for _ in range(repeats)]))


def ari(y_true: np.ndarray | torch.Tensor, y_pred: np.ndarray | torch.Tensor) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985); 0 = chance, 1 = identical partitions."""
    return float(adjusted_rand_score(np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()))


def accuracy(y_true: np.ndarray | torch.Tensor, y_pred: np.ndarray | torch.Tensor) -> float:
    """Plain accuracy on true label names."""
    t, p = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    return float((t == p).mean())


def majority_rate(y_true: np.ndarray | torch.Tensor) -> float:
    """Accuracy of always guessing the most frequent class (the chance level of a labeller)."""
    _, counts = np.unique(np.asarray(y_true).ravel(), return_counts=True)
    return float(counts.max() / counts.sum())


def ovr_auc(y_true: np.ndarray | torch.Tensor, scores: np.ndarray | torch.Tensor) -> dict[str, float]:
    """One-vs-rest ROC AUC: ``scores[:, c]`` ranks "is class c". Returns the mean over classes present
    with both outcomes, and the per-class values. A 1-D ``scores`` is one score for the positive class 1."""
    t = np.asarray(y_true).ravel()
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = np.stack([-s, s], 1)
    per: dict[str, float] = {}
    for c in range(s.shape[1]):
        pos = t == c
        if pos.all() or not pos.any():
            continue
        per[str(c)] = float(roc_auc_score(pos, s[:, c]))
    mean = float(np.mean(list(per.values()))) if per else float("nan")
    return {"auc": mean, "per_class": per}  # type: ignore[dict-item]


def confidence_interval(values: list[float] | np.ndarray, *, level: float = 0.95,
                        method: Literal["t", "bootstrap"] = "t", resamples: int = 10_000,
                        seed: int = 0) -> dict[str, float]:
    """Mean and two-sided confidence interval of a multi-seed figure.

    ``method="t"``: Student-t interval (few seeds, roughly normal figures); ``"bootstrap"``: percentile
    bootstrap of the mean. One value gives an interval of zero width (n is reported, so read it).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise AttackError("confidence_interval needs at least one value; run the attack with ≥ 1 seed")
    if not 0 < level < 1:
        raise AttackError(f"level must be in (0, 1), got {level}")
    m = float(v.mean())
    if v.size == 1:
        return {"mean": m, "low": m, "high": m, "n": 1, "level": level}
    if method == "t":
        half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
        lo, hi = m - half, m + half
    elif method == "bootstrap":
        rng = np.random.default_rng(seed)
        means = rng.choice(v, size=(resamples, v.size), replace=True).mean(1)
        lo, hi = (float(q) for q in np.quantile(means, [0.5 - level / 2, 0.5 + level / 2]))
    else:
        raise AttackError(f"method must be 't' or 'bootstrap', got {method!r}")
    return {"mean": m, "low": lo, "high": hi, "n": int(v.size), "level": level}
