"""The smoke budget's costs: its caps reach clustering's projection, and a report loads a dataset once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clicooper.attacks import clustering
from clicooper.attacks.budgets import settings_for


def _project(budget: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, list[str]]:
    """Width of k-means' euclidean space under ``budget`` on 300 rows × 600 features, and the SVDs used."""
    used: list[str] = []
    svd, lowrank = torch.linalg.svd, torch.pca_lowrank
    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: (used.append("exact"), svd(*a, **k))[1])
    monkeypatch.setattr(torch, "pca_lowrank", lambda *a, **k: (used.append("randomized"), lowrank(*a, **k))[1])
    cfg = clustering.ClusteringConfig(**settings_for(budget, "clustering").get("config", {}))
    x = np.random.default_rng(0).normal(size=(300, 600))
    z = clustering.embed(x, "euclid", cfg.pca_dims, cfg.seed, **clustering._proj(cfg))
    return z.shape[1], used


def test_smoke_caps_reach_clusterings_projection(monkeypatch: pytest.MonkeyPatch) -> None:
    width, used = _project("smoke", monkeypatch)
    assert width == settings_for("smoke", "clustering")["config"]["pca_dims"] == 16
    # an exact SVD of 300 rows × thousands of features took seconds (the randomized one ends in a small SVD)
    assert used[0] == "randomized"


@pytest.mark.parametrize("budget", ["demo", "sweep", "full"])
def test_other_budgets_keep_their_projection(budget: str, monkeypatch: pytest.MonkeyPatch) -> None:
    width, used = _project(budget, monkeypatch)
    assert (width, used) == (128, ["exact"])  # the research results were measured with these


def test_fashion_mnist_is_parsed_once_and_never_shared() -> None:
    from clicooper.data import loaders

    try:
        loaders._find(loaders.Path(loaders.os.environ.get(loaders.FMNIST_DIR_ENV, loaders.FMNIST_DEFAULT_DIR)),
                      "t10k-labels-idx1-ubyte")
    except loaders.DataError:
        pytest.skip("Fashion-MNIST is not installed")
    loaders._read_idx_at.cache_clear()
    a = loaders.load_dataset("fashion-mnist")
    b = loaders.load_dataset("fashion-mnist")
    info = loaders._read_idx_at.cache_info()
    assert (info.misses, info.hits) == (4, 4)
    for f in ("x_train", "y_train", "x_test", "y_test"):
        ta, tb = getattr(a, f), getattr(b, f)
        assert torch.equal(ta, tb)
        assert ta.data_ptr() != tb.data_ptr()  # a caller that changes its copy changes no other load's
    a.x_train[0].fill_(7.0)
    assert not torch.equal(a.x_train[0], loaders.load_dataset("fashion-mnist").x_train[0])
