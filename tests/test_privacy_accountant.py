"""Accounting (docs/design/mechanisms.md#accounting): reference values, labels, inverse, DP-SGD composition, query budget."""

from __future__ import annotations

import json
import math

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from hypothesis import given, settings
from hypothesis import strategies as st

from clicooper.errors import PrivacyError
from clicooper.privacy.accountant import (
    COVERS_DPSGD,
    COVERS_QUERIES,
    COVERS_RELEASES,
    QueryBudget,
    epsilon,
    epsilon_with_dpsgd_head,
    sigma_for_epsilon,
)

DELTA = 1e-5

# docs/design/mechanisms.md#accounting, δ = 1e-5, no subsampling; noise multiplier z = σ/2.
PLD_REFERENCE = [(1, 1, 4.38), (1, 10, 17.9), (5, 1, 0.73), (5, 10, 2.59), (10, 1, 0.34), (10, 10, 1.20)]
RDP_REFERENCE = [(1, 1, 4.73), (1, 10, 19.05)]


@pytest.mark.parametrize(("z", "epochs", "expected"), PLD_REFERENCE)
def test_pld_reproduces_design_reference_values(z: float, epochs: int, expected: float) -> None:
    report = epsilon(sigma=2 * z, epochs=epochs, delta=DELTA, accountant="pld")

    assert report.epsilon == pytest.approx(expected, rel=0.02)
    assert report.covers == COVERS_RELEASES == "per-release, head fixed"
    assert report.params["noise_multiplier"] == z


@pytest.mark.parametrize(("z", "epochs", "expected"), RDP_REFERENCE)
def test_rdp_reproduces_design_reference_values(z: float, epochs: int, expected: float) -> None:
    report = epsilon(sigma=2 * z, epochs=epochs, delta=DELTA, accountant="rdp")

    assert report.epsilon == pytest.approx(expected, rel=0.02)
    assert report.accountant == "rdp"


def test_sigma_over_two_add_remove_equals_sigma_replace_one() -> None:
    # The factor 2 is counted once: σ/2 under add/remove ≡ σ under replace-one (library doubles it).
    acc = PLDAccountant(dp_accounting.NeighboringRelation.REPLACE_ONE)
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(2.0), 3))

    assert epsilon(sigma=2.0, epochs=3, delta=DELTA).epsilon == pytest.approx(
        acc.get_epsilon(DELTA), rel=1e-3
    )


def test_low_noise_stays_cheap_and_pld_below_rdp() -> None:
    # z < 0.1 would need gigabytes at the default PLD grid; the scaled grid answers at once.
    pld = epsilon(sigma=0.02, epochs=100, delta=DELTA, accountant="pld").epsilon
    rdp = epsilon(sigma=0.02, epochs=100, delta=DELTA, accountant="rdp").epsilon

    assert math.isfinite(pld) and 0 < pld <= rdp


def test_sigma_zero_is_infinite_epsilon_and_serialises() -> None:
    report = epsilon(sigma=0.0, epochs=1, delta=DELTA)

    assert report.epsilon == math.inf
    assert json.loads(json.dumps(report.to_dict()))["epsilon"] == "inf"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sigma": -1.0, "epochs": 1, "delta": DELTA},
        {"sigma": math.nan, "epochs": 1, "delta": DELTA},
        {"sigma": 1.0, "epochs": 0, "delta": DELTA},
        {"sigma": 1.0, "epochs": 1.5, "delta": DELTA},
        {"sigma": 1.0, "epochs": 1, "delta": 0.0},
        {"sigma": 1.0, "epochs": 1, "delta": 1.0},
        {"sigma": 1.0, "epochs": 1, "delta": DELTA, "accountant": "moments"},
    ],
)
def test_invalid_arguments_raise_privacy_error(kwargs: dict) -> None:
    with pytest.raises(PrivacyError):
        epsilon(**kwargs)


def test_arguments_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        epsilon(2.0, 1, DELTA)  # type: ignore[misc]


def test_inverse_finds_the_reference_sigma() -> None:
    sigma = sigma_for_epsilon(epsilon=4.38, delta=DELTA, epochs=1)

    assert sigma == pytest.approx(2.0, rel=0.01)
    assert epsilon(sigma=sigma, epochs=1, delta=DELTA).epsilon <= 4.38


def test_inverse_refuses_beyond_max_sigma() -> None:
    with pytest.raises(PrivacyError, match="max_sigma"):
        sigma_for_epsilon(epsilon=0.01, delta=DELTA, epochs=10, max_sigma=5.0)


@settings(max_examples=15, deadline=None)
@given(
    sigma=st.floats(0.2, 50.0),
    factor=st.floats(1.05, 4.0),
    epochs=st.integers(1, 50),
    accountant=st.sampled_from(["pld", "rdp"]),
)
def test_epsilon_decreases_in_sigma(sigma: float, factor: float, epochs: int, accountant: str) -> None:
    low = epsilon(sigma=sigma, epochs=epochs, delta=DELTA, accountant=accountant).epsilon
    high = epsilon(sigma=sigma * factor, epochs=epochs, delta=DELTA, accountant=accountant).epsilon

    assert high < low


@settings(max_examples=15, deadline=None)
@given(
    sigma=st.floats(0.2, 50.0),
    epochs=st.integers(1, 50),
    extra=st.integers(1, 50),
    accountant=st.sampled_from(["pld", "rdp"]),
)
def test_epsilon_increases_in_epochs(sigma: float, epochs: int, extra: int, accountant: str) -> None:
    fewer = epsilon(sigma=sigma, epochs=epochs, delta=DELTA, accountant=accountant).epsilon
    more = epsilon(sigma=sigma, epochs=epochs + extra, delta=DELTA, accountant=accountant).epsilon

    assert more > fewer


@settings(max_examples=8, deadline=None)
@given(
    target=st.floats(0.2, 30.0),
    epochs=st.integers(1, 20),
    accountant=st.sampled_from(["pld", "rdp"]),
)
def test_inverse_round_trips(target: float, epochs: int, accountant: str) -> None:
    sigma = sigma_for_epsilon(epsilon=target, delta=DELTA, epochs=epochs, accountant=accountant, rtol=1e-3)

    achieved = epsilon(sigma=sigma, epochs=epochs, delta=DELTA, accountant=accountant).epsilon
    slightly_less = epsilon(sigma=sigma * 0.99, epochs=epochs, delta=DELTA, accountant=accountant).epsilon
    assert achieved <= target < slightly_less


def test_dpsgd_head_plus_releases_is_labelled_and_exceeds_each_part() -> None:
    dpsgd = dict(noise_multiplier=1.0, sample_rate=128 / 60_000, steps=1407)

    both = epsilon_with_dpsgd_head(sigma=4.0, epochs=3, delta=DELTA, **dpsgd)

    releases = epsilon(sigma=4.0, epochs=3, delta=DELTA).epsilon
    head_only = PLDAccountant(dp_accounting.NeighboringRelation.REPLACE_ONE)
    head_only.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(128 / 60_000, dp_accounting.GaussianDpEvent(1.0)), 1407
        )
    )
    assert both.covers == COVERS_DPSGD == "DP-SGD head + releases"
    assert both.epsilon > max(releases, head_only.get_epsilon(DELTA))
    assert both.epsilon < releases + head_only.get_epsilon(DELTA) + 0.05  # ≤ basic composition


def test_dpsgd_joint_poisson_sampling_is_tighter_than_per_epoch() -> None:
    common = dict(
        sigma=4.0, epochs=3, delta=DELTA, noise_multiplier=1.0, sample_rate=128 / 60_000, steps=1407
    )

    per_epoch = epsilon_with_dpsgd_head(**common, release_sampling="per-epoch")
    joint = epsilon_with_dpsgd_head(**common, release_sampling="poisson")

    assert joint.epsilon < per_epoch.epsilon
    assert joint.params["joint_noise_multiplier"] == pytest.approx(1 / math.sqrt(1 + 1 / 16))


def test_dpsgd_validation() -> None:
    with pytest.raises(PrivacyError, match="sample_rate"):
        epsilon_with_dpsgd_head(
            sigma=1.0, epochs=1, delta=DELTA, noise_multiplier=1.0, sample_rate=0.0, steps=1
        )
    with pytest.raises(PrivacyError, match="release_sampling"):
        epsilon_with_dpsgd_head(
            sigma=1.0,
            epochs=1,
            delta=DELTA,
            noise_multiplier=1.0,
            sample_rate=0.1,
            steps=1,
            release_sampling="shuffle",  # type: ignore[arg-type]
        )


def test_query_budget_charges_counters_and_refuses_when_spent() -> None:
    budget = QueryBudget(sigma=20.0, delta=DELTA, epsilon_budget=1.0)
    n = budget.max_queries

    ids = budget.charge(3)
    rest = budget.charge(n - 3)

    assert ids == [0, 1, 2] and rest[0] == 3 and budget.remaining == 0
    assert (
        epsilon(sigma=20.0, epochs=n, delta=DELTA).epsilon
        <= 1.0
        < epsilon(sigma=20.0, epochs=n + 1, delta=DELTA).epsilon
    )
    with pytest.raises(PrivacyError, match="budget exhausted"):
        budget.charge()
    report = budget.report()
    assert report.covers == COVERS_QUERIES and report.epsilon <= 1.0


def test_query_budget_round_trips_through_privacy_json() -> None:
    budget = QueryBudget(sigma=20.0, delta=DELTA, epsilon_budget=1.0)
    budget.charge(2)

    restored = QueryBudget.from_dict(json.loads(json.dumps(budget.to_dict())))

    assert restored.used == 2 and restored.max_queries == budget.max_queries
    assert restored.charge() == [2]


def test_query_budget_too_small_for_one_query() -> None:
    budget = QueryBudget(sigma=0.5, delta=DELTA, epsilon_budget=0.1)

    assert budget.max_queries == 0
    with pytest.raises(PrivacyError):
        budget.charge()
