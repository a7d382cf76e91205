"""SSIM cross-checked against scikit-image; PSNR/MSE, floors, clustering scores, AUC, intervals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.metrics import structural_similarity

from clicooper.attacks import metrics
from clicooper.errors import AttackError


def _sk(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)


@pytest.mark.parametrize("shape", [(28, 28), (16, 16), (11, 11), (20, 33)])
def test_ssim_matches_skimage_on_random_images(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    a = rng.random((6, *shape))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)  # correlated pairs
    c = rng.random((6, *shape))  # unrelated pairs
    ours_b = metrics.ssim(torch.tensor(a), torch.tensor(b))
    ours_c = metrics.ssim(torch.tensor(a), torch.tensor(c))
    for i in range(6):
        assert abs(float(ours_b[i]) - _sk(a[i], b[i])) < 1e-3
        assert abs(float(ours_c[i]) - _sk(a[i], c[i])) < 1e-3


def test_ssim_matches_skimage_multichannel() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.random((3, 24, 24)), rng.random((3, 24, 24))
    ref = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                data_range=1, channel_axis=0)
    assert abs(float(metrics.ssim(torch.tensor(a)[None], torch.tensor(b)[None])[0]) - ref) < 1e-3


def test_ssim_identity_broadcast_and_small_image_error() -> None:
    x = torch.rand(4, 1, 16, 16)
    assert torch.allclose(metrics.ssim(x, x), torch.ones(4, dtype=torch.float64))
    assert metrics.ssim(x, x[:1]).shape == (4,)
    with pytest.raises(AttackError, match="at least 11"):
        metrics.ssim(torch.rand(2, 8, 8), torch.rand(2, 8, 8))


def test_psnr_mse() -> None:
    x = torch.zeros(2, 1, 4, 4)
    y = torch.full((2, 1, 4, 4), 0.1)
    assert torch.allclose(metrics.mse(x, y), torch.full((2,), 0.01, dtype=torch.float64))
    assert torch.allclose(metrics.psnr(x, y), torch.full((2,), 20.0, dtype=torch.float64))
    assert float(metrics.psnr(x, x)[0]) == 100.0


def test_floors_class_floor_above_global_on_structured_classes() -> None:
    g = torch.Generator().manual_seed(0)
    protos = (torch.rand(3, 1, 16, 16, generator=g) > 0.5).float()
    y = torch.arange(300) % 3
    x = (protos[y] + 0.1 * torch.randn(300, 1, 16, 16, generator=g)).clamp(0, 1)
    f = metrics.inversion_floors(x[:100], y[:100], x[100:], y[100:])
    assert f["class_floor"] > f["global_floor"]
    assert f["class_floor"] > 0.5


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=5, max_size=60), st.permutations(range(5)))
def test_hungarian_accuracy_is_invariant_to_renaming(y: list[int], perm: list[int]) -> None:
    y_arr = np.array(y)
    assert metrics.hungarian_accuracy(y_arr, np.array(perm)[y_arr]) == 1.0
    assert metrics.ari(y_arr, np.array(perm)[y_arr]) == pytest.approx(1.0)


def test_hungarian_chance_near_one_over_c() -> None:
    y = np.arange(2000) % 10
    assert 0.1 <= metrics.hungarian_chance(y, y) < 0.16


def test_ovr_auc() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    s = np.eye(3)[y] + 0.01
    assert metrics.ovr_auc(y, s)["auc"] == 1.0
    assert metrics.ovr_auc(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.8]))["per_class"]["1"] == 1.0


def test_confidence_intervals() -> None:
    v = [0.5, 0.52, 0.49, 0.51, 0.5]
    t = metrics.confidence_interval(v)
    b = metrics.confidence_interval(v, method="bootstrap")
    for ci in (t, b):
        assert ci["low"] <= ci["mean"] <= ci["high"] and ci["n"] == 5
    assert t["high"] - t["low"] > 0
    assert metrics.confidence_interval([0.3])["low"] == 0.3
    with pytest.raises(AttackError):
        metrics.confidence_interval([])
    with pytest.raises(AttackError):
        metrics.confidence_interval(v, method="magic")  # type: ignore[arg-type]
