"""Issue 14 in the report: each trained attack's figure at ¼, ½ and the full budget on both runs, a figure
that has not converged marked as a lower bound and left out of the verdict, and the paper's metrics beside
the strong attacker's."""

from __future__ import annotations

from typing import Any

from clicooper.attacks.base import convergence
from clicooper.report import render_markdown
from clicooper.report.rows import level_rows


def _level(score: float, floor: float, values: list[float] | None = None, **metrics: Any) -> dict[str, Any]:
    return {"primary": "ssim", "score": score, "floor": floor, "higher_is_better": True,
            "beats_floor": score > floor, "metrics": metrics,
            "convergence": None if values is None else convergence(values, [200, 400, 800])}


def _report(rows: list[dict[str, Any]]) -> str:
    return render_markdown({
        "run": {"run": "R", "dataset": "d", "model": "m", "trainers": 2, "topology": "u-shape", "epochs": 1,
                "seed": 0, "train_range": None, "defense": "clicooper", "test_acc": 0.8, "do_flop_share": 0.01,
                "epsilon": []},
        "baseline": {"run": "B", "defense": "none", "test_acc": 0.9, "do_flop_share": 0.01},
        "budget": "demo", "budget_description": ["demo budget"], "warnings": [], "rows": rows, "figures": [],
        "attacks": {}, "created": "now", "seconds": 1.0})


def test_unconverged_figure_is_a_lower_bound_and_not_judged() -> None:
    run = {"headline": {"T1": {"white-box": _level(0.31, 0.13, [0.2, 0.27, 0.31], class_floor=0.35),
                               "known-plaintext-1000": _level(0.30, 0.13, [0.29, 0.30, 0.301], class_floor=0.35),
                               "aux": _level(0.50, 0.13, [0.49, 0.5, 0.5], class_floor=0.35)}}}
    base = {"headline": {"T1": {"white-box": _level(0.95, 0.13, [0.9, 0.94, 0.95], class_floor=0.35),
                                "known-plaintext-1000": _level(0.74, 0.13, [0.7, 0.735, 0.74], class_floor=0.35),
                                "aux": _level(0.70, 0.13, [0.6, 0.695, 0.7], class_floor=0.35)}}}
    rows = {r["level"]: r for r in level_rows("inversion", run, base)}
    wb, kp, aux = rows["white-box"], rows["known-plaintext-1000"], rows["aux"]
    assert wb["informative"] and wb["converged"] is False and not wb["judged"]
    assert "not judged" in wb["verdict"] and "lower bound" in wb["verdict"] and "0.040" in wb["verdict"]
    assert kp["judged"] and kp["verdict"].startswith("protected at this budget") and "class floor 0.350" in kp["verdict"]
    assert aux["judged"] and aux["verdict"].startswith("leaks")
    md = _report(list(rows.values()))
    wb_line = next(ln for ln in md.splitlines() if ln.startswith("| inversion | T1 | white-box | ssim"))
    assert "≥ 0.3100" in wb_line and "lower bound (not converged)" in wb_line and "0.9500" in wb_line
    assert "## Convergence" in md and "0.200 / 0.270 / 0.310 (Δ 0.040 ✗)" in md and "200 / 400 / 800 steps" in md
    assert "## Verdict" in md and "judged on the 2 of 3 figures" in md


def test_rows_without_a_step_budget_are_judged_and_left_out_of_the_convergence_table() -> None:
    run = {"headline": {"T2": {"zero-knowledge": {**_level(0.9, 0.13), "primary": "oracle_accuracy"}}}}
    base = {"headline": {"T2": {"zero-knowledge": {**_level(0.99, 0.13), "primary": "oracle_accuracy"}}}}
    (row,) = level_rows("clustering", run, base)
    assert row["converged"] is None and row["judged"] and row["verdict"].startswith("leaks")
    md = _report([row])
    assert "## Convergence" not in md and "## Verdict" in md


def test_paper_metrics_are_printed_beside_the_strong_attacker() -> None:
    strong = {"name": "surrogate outputs named by 10 labelled samples per class", "score": 0.81}
    run = {"headline": {"T2": {"surrogate-obfuscated": {
        **_level(0.012, 0.11, [0.01, 0.012, 0.012], strong=strong, why="names are hidden, groups are not"),
        "primary": "accuracy"}}}}
    base = {"headline": {"T2": {"surrogate-obfuscated": {
        **_level(0.85, 0.11, [0.8, 0.85, 0.852], strong={**strong, "score": 0.86}, why="x"),
        "primary": "accuracy"}}}}
    rows = level_rows("paper-metrics", run, base)
    md = _report(rows)
    assert "## The paper's metrics beside ours" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| surrogate-obfuscated (accuracy)"))
    assert "0.0120" in line and "0.8500" in line and "0.8100" in line and "0.8600" in line
    assert "Why they differ: names are hidden, groups are not." in md


def test_an_unconverged_baseline_still_shows_the_attack_informative_and_the_run_is_judged() -> None:
    run = {"headline": {"T1": {"fora": _level(0.12, 0.13, [0.125, 0.121, 0.12], class_floor=0.35),
                               "white-box": _level(0.40, 0.13, [0.30, 0.36, 0.40], class_floor=0.35)}}}
    base = {"headline": {"T1": {"fora": _level(0.88, 0.13, [0.79, 0.84, 0.88], class_floor=0.35),
                                "white-box": _level(0.95, 0.13, [0.90, 0.94, 0.95], class_floor=0.35)}}}
    rows = {r["level"]: r for r in level_rows("inversion", run, base)}
    fora, wb = rows["fora"], rows["white-box"]
    assert fora["baseline_converged"] is False and fora["judged"]
    # below the global floor (the mean image, 0.13): no better than the mean image, not "protected"
    assert fora["verdict"].startswith("no better than the mean image") and "baseline's figure is a lower bound" in fora["verdict"]
    # the run's own figure did not converge: not judged, though it already beats the class floor
    assert not wb["judged"] and wb["verdict"].startswith("not judged") and "already beats the class floor" in wb["verdict"]
    md = _report(list(rows.values()))
    fora_line = next(ln for ln in md.splitlines() if ln.startswith("| inversion | T1 | fora | ssim"))
    assert "≥ 0.8800" in fora_line and "| 0.1200 |" in fora_line
    assert "judged on the 1 of 2 figures" in md


def test_a_result_made_under_an_older_version_of_a_budget_is_not_reused() -> None:
    from clicooper.attacks.budgets import settings_for
    from clicooper.report.rows import _current

    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in settings_for("demo", "inversion")["config"].items()}
    assert _current({"budget": "demo", "config": {**cfg, "seed": 0}}, "demo", "inversion")
    assert not _current({"budget": "demo", "config": {**cfg, "steps": 200}}, "demo", "inversion")
    assert _current({"budget": "gone", "config": {}}, "gone", "inversion")  # unknown budget: keep what is stored


def test_the_baseline_budget_is_a_declared_share_of_the_steps() -> None:
    import pytest

    from clicooper.attacks.budgets import scaled, settings_for
    from clicooper.errors import AttackError
    from clicooper.report.rows import _current, needs_whole_budget, settings_diff

    inv = settings_for("demo", "inversion")
    q = scaled(inv, 0.25)
    assert q["config"]["steps"] == inv["config"]["steps"] // 4 and q["config"]["unsplit_rounds"] == 20
    assert q["config"]["refine_steps"] == 30 and q["config"]["width"] == inv["config"]["width"]
    assert q["victims"] == inv["victims"] and inv["config"]["steps"] == 3200  # a copy: the budget is untouched
    assert scaled(settings_for("smoke", "inversion"), 0.25)["config"]["refine_steps"] == 3  # never above itself
    assert scaled(inv, 1.0) == inv
    with pytest.raises(AttackError, match="scale"):
        scaled(inv, 0.0)
    # a stored ¼-budget result is current as such, not as the whole budget
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in q["config"].items()}
    assert _current({"config": cfg}, "demo", "inversion", 0.25) and not _current({"config": cfg}, "demo", "inversion")
    # run and ¼-budget baseline: the scaled steps are not a difference, anything else still is
    run = {"settings": {"budget": "demo", "config": inv["config"], "victims": 200}}
    base = {"settings": {"budget": "demo", "budget_scale": 0.25, "config": q["config"], "victims": 200}}
    assert settings_diff(run, base) == []
    assert settings_diff(run, {"settings": {**base["settings"], "victims": 100}}) == ["victims"]
    assert settings_diff(run, {"settings": {**base["settings"], "config": inv["config"]}}) == ["config"]
    # a figure below its floor before converging at a share of the steps: run again at the whole budget
    below = {"settings": {"budget_scale": 0.25},
             "headline": {"T1": {"fora": _level(0.12, 0.13, [0.05, 0.09, 0.12]), "wb": _level(0.9, 0.13, [0.9] * 3)}}}
    assert needs_whole_budget(below)
    assert not needs_whole_budget({**below, "settings": {}})  # already the whole budget
    done = {"settings": {"budget_scale": 0.25}, "headline": {"T1": {"fora": _level(0.12, 0.13, [0.12] * 3)}}}
    assert not needs_whole_budget(done)  # converged below the floor: not informative, whatever the steps
