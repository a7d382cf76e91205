"""A figure that stopped moving only because the attack never started training is not converged.

Reproduces the case results/attacks-reference/reference-seeds12 recorded: FORA at the reference size, 16 steps
at lr 1e-4, seed 1 read 0.081 / 0.079 / 0.074 (last doubling 0.005 < 0.01, so "converged") while its inverse
network's MSE on its own auxiliary images (0.1136) was still worse than the mean image's (0.0865)."""

from __future__ import annotations

from typing import Any

from clicooper.attacks.adversarial import training_record
from clicooper.attacks.base import TRAINING_TOL, attack_trained, convergence
from clicooper.report.rows import level_rows
from clicooper.report.summary import classify

UNSTARTED = training_record([0.1210, 0.1170, 0.1136], 0.0865)  # FORA, reference size, 16 steps, seed 1
FITTED = training_record([0.010, 0.004, 0.003], 0.0865)
STUCK = training_record([0.070, 0.069, 0.069], 0.0865)  # learned the mean image, no further, no noise in the way


def test_an_attack_that_has_not_started_is_not_converged() -> None:
    values = [0.081, 0.079, 0.074]
    assert convergence(values, [4, 8, 16])["converged"]  # the old test alone calls it converged
    c = convergence(values, [4, 8, 16], training=UNSTARTED)
    assert c["figure_stable"] and not c["trained"] and not c["converged"]
    assert "not learned even the mean image" in c["not_trained_why"] and "0.1136" in c["not_trained_why"]


def test_a_fitted_attack_with_a_settled_figure_is_converged() -> None:
    c = convergence([0.80, 0.86, 0.865], [600, 1200, 2400], training=FITTED)
    assert c["converged"] and c["trained"] and "not_trained_why" not in c
    assert not convergence([0.70, 0.80, 0.86], [600, 1200, 2400], training=FITTED)["converged"]  # still rising


def test_without_noise_an_attack_that_did_not_fit_its_own_data_did_not_train() -> None:
    ok, why = attack_trained(STUCK)
    assert not ok and "did not fit its own auxiliary data" in why


def test_through_the_simulated_noise_learning_the_mean_and_settling_is_enough() -> None:
    settled = training_record([0.090, 0.084, 0.0838], 0.0865, noise=True)
    assert attack_trained(settled) == (True, "")  # the noise may leave nothing to decode: a finished attack
    falling = training_record([0.090, 0.084, 0.070], 0.0865, noise=True)
    ok, why = attack_trained(falling)
    assert not ok and "still falling" in why and abs(0.084 - 0.070) / 0.070 >= TRAINING_TOL
    above = training_record([0.16, 0.15, 0.15], 0.0865, noise=True)
    assert not attack_trained(above)[0]


def _level(score: float, training: dict[str, Any]) -> dict[str, Any]:
    return {"primary": "ssim", "score": score, "floor": 0.13, "higher_is_better": True, "beats_floor": score > 0.13,
            "metrics": {"class_floor": 0.35, "global_floor": 0.13, "training": training},
            "convergence": convergence([score, score, score], [600, 1200, 2400], training=training)}


def test_the_report_does_not_judge_an_attack_that_did_not_train() -> None:
    base = {"headline": {"T1": {"fora": _level(0.90, FITTED)}}}
    (row,) = level_rows("fora", {"headline": {"T1": {"fora": _level(0.074, UNSTARTED)}}}, base)
    assert row["converged"] is False and not row["judged"] and classify(row) == "undecided"
    assert row["verdict"].startswith("no better than the mean image, and not judged")
    assert "did not finish training" in row["verdict"] and "protected" not in row["verdict"]
    (mid,) = level_rows("fora", {"headline": {"T1": {"fora": _level(0.30, UNSTARTED)}}}, base)
    assert mid["verdict"].startswith("not judged: the attack did not finish training") and classify(mid) == "undecided"
    (done,) = level_rows("fora", {"headline": {"T1": {"fora": _level(0.30, FITTED)}}}, base)
    assert done["judged"] and done["verdict"].startswith("protected at this budget")
