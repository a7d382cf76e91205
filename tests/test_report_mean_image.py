"""A defended inversion figure below the attack's own global floor (the auxiliary mean image) reads "no better
than the mean image", never "protected", and says whether the attack extracted nothing or failed to train
(from its own training record and the same attack on the undefended baseline)."""

from __future__ import annotations

from typing import Any

from clicooper.attacks.adversarial import training_record
from clicooper.attacks.base import convergence
from clicooper.report import render_markdown
from clicooper.report.rows import level_rows
from clicooper.report.summary import summarize

FITTED = training_record([0.05, 0.03, 0.02], 0.086)  # the inverse network fits its own auxiliary images
NOT_FITTED = training_record([0.16, 0.15, 0.15], 0.086)  # worse than the mean image on its own data


def _level(score: float, *, floor: float = 0.13, class_floor: float = 0.35, training: Any = None) -> dict[str, Any]:
    metrics: dict[str, Any] = {"class_floor": class_floor, "global_floor": floor}
    if training is not None:
        metrics["training"] = training
    return {"primary": "ssim", "score": score, "floor": floor, "higher_is_better": True, "beats_floor": score > floor,
            "metrics": metrics, "convergence": convergence([score, score, score], [600, 1200, 2400])}


def _row(run_score: float, *, training: Any = None, base_score: float = 0.90, base_training: Any = FITTED) -> dict[str, Any]:
    run = {"headline": {"T1": {"fora": _level(run_score, training=training)}}}
    base = {"headline": {"T1": {"fora": _level(base_score, training=base_training)}}}
    (row,) = level_rows("fora", run, base)
    return row


def test_below_the_global_floor_is_no_better_than_the_mean_image_not_protected() -> None:
    row = _row(0.086)  # the defended demo's FORA: below the mean image's 0.13
    assert row["judged"]
    assert row["verdict"].startswith("no better than the mean image: 0.086 does not beat the global floor 0.130")
    assert "protected" not in row["verdict"]
    assert "cannot tell" in row["verdict"]  # no training record: it cannot say which


def test_a_fitted_attack_below_the_global_floor_extracted_nothing() -> None:
    row = _row(0.086, training=FITTED)
    assert row["verdict"].startswith("no better than the mean image")
    assert "extracted nothing" in row["verdict"] and "0.900 on the undefended baseline" in row["verdict"]
    assert "failed to train" not in row["verdict"]


def test_an_attack_that_did_not_fit_its_own_data_failed_to_train() -> None:
    row = _row(0.086, training=NOT_FITTED)  # its convergence record is re-judged with the training record
    assert row["verdict"].startswith("no better than the mean image, and not judged")
    assert "did not finish training" in row["verdict"] and "says nothing about the defence" in row["verdict"]
    assert row["converged"] is False and not row["judged"]


def test_between_the_floors_and_above_the_class_floor() -> None:
    between = _row(0.30, training=FITTED)  # beats the mean image, not the label alone: protected at this budget
    assert between["verdict"].startswith("protected at this budget: 0.300 does not beat the class floor 0.350")
    leaked = _row(0.35 + 0.031, training=FITTED)  # beyond the class floor + 0.03
    assert leaked["verdict"].startswith("leaks: 0.381 beats the class floor 0.350")


def test_the_summary_and_markdown_say_mean_image_not_protected() -> None:
    rows = [_row(0.086, training=FITTED)]
    rep = {"run": {"run": "R", "dataset": "d", "model": "m", "trainers": 2, "topology": "u-shape", "epochs": 1,
                   "seed": 0, "train_range": None, "defense": "clicooper", "test_acc": 0.8, "do_flop_share": 0.01,
                   "epsilon": []},
           "baseline": {"run": "B", "defense": "none", "test_acc": 0.9, "do_flop_share": 0.01},
           "budget": "demo", "budget_description": ["demo budget"], "warnings": [], "rows": rows, "figures": [],
           "attacks": {}, "created": "now", "seconds": 1.0}
    rep["summary"] = summarize(rep)
    assert rep["summary"]["protected"] == [] and len(rep["summary"]["mean_image"]) == 1
    md = render_markdown(rep)
    line = next(ln for ln in md.splitlines() if ln.startswith("- **No better than the mean image**"))
    assert "fora" in line and "extracted nothing" in line
    assert "- **Protected** (a converged, informative figure not beyond its floor): nothing." in md


def test_the_report_lists_what_differs_from_the_reference_code() -> None:
    from clicooper.attacks.fora import ForaConfig
    from clicooper.report.report import reference_differences

    diffs = ForaConfig(steps=2400).differences()
    res = {"results": [{"epoch": 3, "info": {"differences_from_reference": diffs}}]}
    assert reference_differences(res) == diffs and reference_differences({"results": [{"info": {}}]}) is None
    rep = {"run": {"run": "R", "dataset": "d", "model": "m", "trainers": 2, "topology": "u-shape", "epochs": 1,
                   "seed": 0, "train_range": None, "defense": "clicooper", "test_acc": 0.8, "do_flop_share": 0.01,
                   "epsilon": []},
           "baseline": {"run": "B", "defense": "none", "test_acc": 0.9, "do_flop_share": 0.01},
           "budget": "demo", "budget_description": ["demo budget"], "warnings": [], "rows": [], "figures": [],
           "attacks": {"fora": {"settings": {"budget": "demo"}, "seconds": 1.0, "baseline_seconds": 1.0,
                                "differences_from_reference": diffs}},
           "created": "now", "seconds": 1.0}
    md = render_markdown(rep)
    assert "Where **fora** differs from its reference code" in md
    assert "  | lr | 0.0001 | 0.001 | faster convergence at the small size's step budget |" in md
    assert "  | steps | 40000 | 2400 |" in md


def test_not_fitting_through_the_simulated_noise_cannot_tell_which() -> None:
    noisy = training_record([0.090, 0.0845, 0.0843], 0.086, noise=True)  # learned the mean image, settled, no fit
    row = _row(0.086, training=noisy)
    assert row["verdict"].startswith("no better than the mean image")
    assert "cannot tell" in row["verdict"] and "simulated public noise" in row["verdict"]
    assert "on the undefended baseline it did fit them" in row["verdict"]


def test_not_even_the_mean_image_through_the_noise_is_not_judged() -> None:
    row = _row(0.086, training=training_record([0.16, 0.15, 0.15], 0.086, noise=True))
    assert row["converged"] is False and row["verdict"].startswith("no better than the mean image, and not judged")
    assert "not learned even the mean image" in row["verdict"]
