"""Randomized response with a prior (Ghazi et al. 2021): probabilities, ε-DP, one reused draw per sample."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clicooper.errors import PrivacyError
from clicooper.privacy.accountant import COVERS_LABEL_DP
from clicooper.privacy.label_dp import RandomizedResponse

KEY = bytes(range(32))


def test_plain_rr_probabilities_without_prior() -> None:
    eps, c = 1.0, 10
    rr = RandomizedResponse(epsilon=eps, num_classes=c, key=KEY)

    probs = rr.probabilities(torch.tensor([3]))

    keep = math.exp(eps) / (math.exp(eps) + c - 1)
    assert probs[0, 3].item() == pytest.approx(keep)
    others = torch.cat([probs[0, :3], probs[0, 4:]])
    assert torch.allclose(others, torch.full((9,), (1 - keep) / 9, dtype=torch.float64))


def test_plain_rr_flips_with_the_right_frequency() -> None:
    eps, c, n = 1.0, 10, 20_000
    rr = RandomizedResponse(epsilon=eps, num_classes=c, key=KEY)
    y = torch.arange(n) % c

    noisy = rr.noisy_labels(y, sample_ids=torch.arange(n))

    keep = math.exp(eps) / (math.exp(eps) + c - 1)
    assert (noisy == y).float().mean().item() == pytest.approx(keep, abs=0.01)
    flipped = (noisy - y) % c
    counts = torch.bincount(flipped[flipped != 0], minlength=c)[1:].double()
    assert (counts / counts.sum() - 1 / 9).abs().max().item() < 0.01  # flips are uniform


def test_draw_is_stable_across_epochs_and_batchings() -> None:
    rr = RandomizedResponse(epsilon=0.5, num_classes=10, key=KEY)
    y = torch.arange(100) % 10
    ids = torch.arange(100)

    epoch_1 = rr.noisy_labels(y, sample_ids=ids)
    epoch_2 = rr.noisy_labels(y, sample_ids=ids)
    shuffled = torch.randperm(100, generator=torch.Generator().manual_seed(1))
    epoch_3 = rr.noisy_labels(y[shuffled], sample_ids=ids[shuffled])

    assert torch.equal(epoch_1, epoch_2)
    assert torch.equal(epoch_3, epoch_1[shuffled])
    assert not torch.equal(epoch_1, y)  # at ε = 0.5 some labels flipped


def test_draws_depend_on_the_key_not_on_torch_seed() -> None:
    y = torch.zeros(500, dtype=torch.long)
    ids = torch.arange(500)
    a = RandomizedResponse(epsilon=0.5, num_classes=10, key=KEY)
    b = RandomizedResponse(epsilon=0.5, num_classes=10, key=bytes(32))

    torch.manual_seed(0)
    first = a.noisy_labels(y, sample_ids=ids)
    torch.manual_seed(1)
    second = a.noisy_labels(y, sample_ids=ids)

    assert torch.equal(first, second)
    assert not torch.equal(first, b.noisy_labels(y, sample_ids=ids))


def test_prior_restricts_to_top_k() -> None:
    eps = 1.0
    rr = RandomizedResponse(epsilon=eps, num_classes=10, key=KEY)
    prior = torch.tensor([0.5, 0.5] + [0.0] * 8)

    probs = rr.probabilities(torch.tensor([0, 5]), prior=prior)

    e = math.exp(eps)
    assert probs[0, 0].item() == pytest.approx(e / (e + 1))  # k = 2 maximises p(Y_k)·e^ε/(e^ε+k−1)
    assert probs[0, 1].item() == pytest.approx(1 / (e + 1))
    assert probs[1, :2].tolist() == pytest.approx([0.5, 0.5])  # true label outside Y_k: uniform in Y_k
    assert probs[:, 2:].abs().sum().item() == 0.0
    noisy = rr.noisy_labels(torch.full((200,), 5), sample_ids=range(200), prior=prior)
    assert set(noisy.tolist()) <= {0, 1}


@settings(max_examples=50, deadline=None)
@given(
    eps=st.floats(0.05, 8.0),
    prior=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=8).filter(lambda p: sum(p) > 0.01),
    data=st.data(),
)
def test_rr_with_prior_is_epsilon_label_dp(eps: float, prior: list[float], data) -> None:
    c = len(prior)
    y, y2 = data.draw(st.integers(0, c - 1)), data.draw(st.integers(0, c - 1))
    rr = RandomizedResponse(epsilon=eps, num_classes=c, key=KEY)

    p = rr.probabilities(torch.tensor([y, y2]), prior=torch.tensor(prior))

    assert torch.allclose(p.sum(dim=1), torch.ones(2, dtype=torch.float64))
    support = (p[0] > 0) | (p[1] > 0)
    assert torch.equal(p[0] > 0, p[1] > 0)  # same support: no output rules a label out
    ratio = p[0][support] / p[1][support]
    assert ratio.max().item() <= math.exp(eps) * (1 + 1e-9)


@pytest.mark.parametrize("eps", [0.0, -1.0, math.inf, math.nan])
def test_non_positive_or_non_finite_epsilon_is_rejected(eps: float) -> None:
    with pytest.raises(PrivacyError, match="epsilon"):
        RandomizedResponse(epsilon=eps, num_classes=10, key=KEY)


def test_bad_inputs_are_rejected() -> None:
    rr = RandomizedResponse(epsilon=1.0, num_classes=10, key=KEY)

    with pytest.raises(PrivacyError):
        RandomizedResponse(epsilon=1.0, num_classes=10, key=b"k")
    with pytest.raises(PrivacyError, match="prior"):
        rr.noisy_labels(torch.tensor([1]), sample_ids=[0], prior=torch.ones(9))
    with pytest.raises(PrivacyError, match="non-negative"):
        rr.noisy_labels(torch.tensor([1]), sample_ids=[0], prior=-torch.ones(10))
    with pytest.raises(PrivacyError, match="one id per label"):
        rr.noisy_labels(torch.tensor([1, 2]), sample_ids=[0])


def test_report_is_pure_epsilon_labelled_label_dp() -> None:
    report = RandomizedResponse(epsilon=2.0, num_classes=10, key=KEY).report()

    assert report.covers == COVERS_LABEL_DP == "label-DP (RR)"
    assert report.epsilon == 2.0 and report.delta == 0.0
