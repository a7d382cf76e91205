"""Clustering label inference (Liu et al. 2022) and gradient label leakage (Li et al. 2022)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clicooper.attacks import ClusteringAttack, GradientLeakAttack
from clicooper.attacks.views import build_view
from test_attacks_common import ARCH, digits, gaussian_clusters, synthetic_views, write_run

FAST = {"n_init": 2}


def test_separable_clusters_are_found() -> None:
    x, y = gaussian_clusters(n=400, c=4)
    views = synthetic_views(x, y, known_k=5)
    res = ClusteringAttack(sources=("activations", "output"), known_ks=(1, 5), **FAST).run(views)
    assert res.levels["zero-knowledge"].score > 0.98
    assert res.levels["zero-knowledge"].metrics["by_source"]["activations"]["kmeans"]["ari"] > 0.95
    assert res.levels["known-1"].score > 0.95 and res.levels["known-5"].score > 0.95
    assert res.levels["known-1"].metrics["scored_rows"] == 400 - 20  # known rows excluded


def test_noise_stays_at_chance() -> None:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(600, 30, generator=g), torch.arange(600) % 5
    res = ClusteringAttack(sources=("activations",), known_ks=(10,), **FAST).run(synthetic_views(x, y, known_k=10))
    zero = res.levels["zero-knowledge"]
    assert zero.score < zero.floor + 0.08  # oracle accuracy of noise ≈ its shuffled chance
    assert res.levels["known-10"].score < 0.35 and abs(zero.metrics["by_source"]["activations"]["kmeans"]["ari"]) < 0.03


def test_labels_source_in_open_tail() -> None:
    y = torch.arange(300) % 3
    views = synthetic_views(torch.randn(300, 4), y, known_k=10)
    views = views.__class__(**{**views.__dict__, "zero": views.zero.__class__(
        **{**views.zero.__dict__, "received": views.zero.received.__class__(
            party="T1", epoch=1, activations=torch.randn(300, 4), gradients=torch.randn(300, 4),
            labels=y * 2 + (torch.arange(300) % 2))})})  # obfuscated: 2 sub-classes per class
    res = ClusteringAttack(sources=("labels",), known_ks=(10,), **FAST).run(views)
    assert res.levels["known-10"].score == 1.0  # 10 per class name every sub-class (docs/design/mechanisms.md#label-obfuscation)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("run"), rows=800)


def test_on_a_trained_split_model_beats_chance(run_dir: Path) -> None:
    views = build_view(run_dir, "T2", ("zero", "known"), architecture=ARCH, dataset=digits(), known_k=10)
    res = ClusteringAttack(known_ks=(1, 10), **FAST).run(views)
    assert res.levels["zero-knowledge"].score > 0.8  # cosine k-means of gradients (Liu et al.)
    assert res.levels["known-10"].score > 0.8
    assert all(lv.score > lv.floor for lv in res.levels.values())


# ------------------------------------------------------------------------------------------ gradient leakage


def _ce_gradients(logit_bias: torch.Tensor, y: torch.Tensor, d: int = 16, seed: int = 0) -> torch.Tensor:
    """d loss / d h for a linear tail on cut features h, softmax-CE, as autograd computes it."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(y.numel(), d, generator=g).requires_grad_(True)
    w = torch.randn(d, logit_bias.numel(), generator=g) * 0.1
    F.cross_entropy(h @ w + logit_bias, y, reduction="sum").backward()
    return h.grad.detach()


def test_norm_attack_on_imbalanced_binary_softmax_ce() -> None:
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(1000, generator=g) < 0.1).long()  # 10 % positives (Li et al. setting)
    grads = _ce_gradients(torch.tensor([1.5, -1.5]), y)  # the model leans to the majority class
    res = GradientLeakAttack(known_ks=(1,), n_init=2).run(synthetic_views(grads, y, grads=grads, known_k=1))
    norm = res.levels["zero-knowledge"].metrics["norm"]
    assert norm["minority_class"] == 1 and norm["auc_minority"] > 0.95
    assert res.levels["zero-knowledge"].score > 0.95
    assert res.levels["known-1"].score > 0.95  # one known positive gives the direction (cosine attack)


def test_cosine_attack_multiclass_and_noise() -> None:
    y = torch.arange(1000) % 5
    grads = _ce_gradients(torch.zeros(5), y)
    res = GradientLeakAttack(known_ks=(1, 10), n_init=2).run(synthetic_views(grads, y, grads=grads, known_k=10))
    assert res.levels["zero-knowledge"].metrics["cosine_oracle_auc"] > 0.95
    assert res.levels["known-1"].score > 0.95 and res.levels["known-10"].metrics["accuracy"] > 0.9
    noise = torch.randn(1000, 16, generator=torch.Generator().manual_seed(1))
    res = GradientLeakAttack(known_ks=(10,), n_init=2).run(synthetic_views(noise, y, grads=noise, known_k=10))
    assert abs(res.levels["known-10"].score - 0.5) < 0.06
    assert res.levels["known-10"].metrics["accuracy"] < 0.3


def test_gradient_leak_on_trained_split_model(run_dir: Path) -> None:
    views = build_view(run_dir, "T2", ("zero", "known"), architecture=ARCH, dataset=digits(), known_k=10)
    res = GradientLeakAttack(known_ks=(1,), n_init=2).run(views)
    assert res.levels["zero-knowledge"].score > 0.9 and res.levels["known-1"].score > 0.9
