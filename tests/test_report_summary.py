"""A report that answers first: the summary at the top of report.md (what leaked, what was protected, the
accuracy cost, the trainers' gain with a negative one called out, what the ε means), smoke figures labelled
not converged, and figures a reader can read (a grid, each y-axis named by its metric, floors drawn and in
the legend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from clicooper.report import plots, render_markdown
from clicooper.report.rows import level_rows, not_converged
from clicooper.report.summary import UNCONVERGED_BUDGETS, epsilon_meaning, summarize


def _level(score: float, floor: float, primary: str = "ssim", **metrics: float) -> dict[str, Any]:
    return {"primary": primary, "score": score, "floor": floor, "higher_is_better": True,
            "beats_floor": score > floor, "metrics": metrics}


def _rows() -> list[dict[str, Any]]:
    run = {"headline": {"T1": {"white-box": _level(0.30, 0.13, class_floor=0.36),  # protected (class floor)
                               "aux": _level(0.05, 0.13, class_floor=0.36)}}}      # not informative
    base = {"headline": {"T1": {"white-box": _level(0.96, 0.13, class_floor=0.36),
                                "aux": _level(0.10, 0.13, class_floor=0.36)}}}
    crun = {"headline": {"T1": {"zero-knowledge": _level(0.89, 0.13, "accuracy")}}}  # leaks
    cbase = {"headline": {"T1": {"zero-knowledge": _level(0.99, 0.13, "accuracy")}}}
    return level_rows("inversion", run, base) + level_rows("clustering", crun, cbase)


def _report(rows: list[dict[str, Any]], *, gain: float, budget: str = "demo") -> dict[str, Any]:
    rep = {
        "run": {"run": "R", "dataset": "digits", "model": "digits-mlp", "trainers": 2, "topology": "u-shape",
                "epochs": 1, "seed": 0, "train_range": None, "defense": "clicooper", "test_acc": 0.80,
                "do_flop_share": 0.1, "do_alone_acc": 0.80 - gain, "trainer_gain": gain,
                "epsilon": [{"epsilon": 935.0, "delta": 1e-5, "covers": "per-release, head fixed",
                             "released": "head activations"}]},
        "baseline": {"run": "B", "defense": "none", "test_acc": 0.90, "do_flop_share": 0.1},
        "budget": budget, "budget_description": ["…"], "warnings": [], "rows": rows, "figures": [],
        "attacks": {}, "created": "now", "seconds": 1.0}
    rep["summary"] = summarize(rep)
    return rep


def test_summary_is_at_the_top_and_answers() -> None:
    md = render_markdown(_report(_rows(), gain=0.05))
    top = md.index("## Summary")
    assert top < md.index("## The two runs") < md.index("## Attack results")
    summary = md[top:md.index("## The two runs")]
    leaked = next(ln for ln in summary.splitlines() if ln.startswith("- **Leaked**"))
    protected = next(ln for ln in summary.splitlines() if ln.startswith("- **Protected**"))
    assert "clustering" in leaked and "inversion" not in leaked
    assert "inversion" in protected and "0.300 vs class floor 0.360" in protected
    assert "1 not informative" in summary
    assert "**Accuracy cost:** 0.8000 against 0.9000 undefended (10.0 pt lost)" in summary
    assert "**Trainers' gain:** +5.0 pt" in summary and "negative" not in summary
    assert "ε = 935" in summary and "too large to bound anything" in summary


def test_negative_trainers_gain_is_called_out() -> None:
    md = render_markdown(_report(_rows(), gain=-0.086))
    line = next(ln for ln in md.splitlines() if "Trainers' gain" in ln)
    assert "-8.6 pt — negative" in line and "0.8860" in line  # the DO alone's accuracy beside it


@pytest.mark.parametrize(("eps", "words"), [(None, "no ε"), (0.5, "strong"), (4.0, "moderate"),
                                             (float("inf"), "no formal guarantee"), (50.0, "too large")])
def test_epsilon_meaning(eps: float | None, words: str) -> None:
    line = epsilon_meaning(None if eps is None else {"epsilon": eps, "delta": 1e-5, "covers": "x"})
    assert words in line


def test_smoke_figures_are_labelled_not_converged() -> None:
    why = UNCONVERGED_BUDGETS["smoke"]
    rows = [not_converged(r, why) for r in _rows()]
    assert all(r["converged"] is False and not r["judged"] for r in rows)
    md = render_markdown(_report(rows, gain=0.01, budget="smoke"))
    assert "**Not converged:**" in md[:md.index("## The two runs")]
    cl = next(ln for ln in md.splitlines() if ln.startswith("| clustering |"))
    assert "≥ 0.8900" in cl and "not converged" in cl
    assert "**Protected**" in md and "Protected** (a converged, informative figure not beyond its floor): nothing" in md


class _Captured:
    fig: Any = None


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> _Captured:
    box = _Captured()

    def keep(fig: Any, path: Path) -> None:
        box.fig = fig
    monkeypatch.setattr(plots, "_save", keep)
    return box


def _many_rows() -> list[dict[str, Any]]:
    rows = []
    for i, (attack, primary) in enumerate([("a1", "ssim"), ("a2", "accuracy"), ("a3", "auc"), ("a4", "ssim"),
                                           ("a5", "accuracy"), ("a6", "auc"), ("a7", "ssim"), ("a8", "accuracy")]):
        rows.append({"key": f"{attack}/T1/x", "attack": attack, "party": "T1", "level": "x", "primary": primary,
                     "score": 0.3, "floor": 0.1 + i / 100, "baseline_score": 0.9, "informative": True})
    return rows


def test_accuracy_vs_attack_is_a_readable_grid(captured: _Captured) -> None:
    plots.accuracy_vs_metric(Path("unused.png"), _many_rows(), 0.8, 0.9, "defense clicooper")
    fig = captured.fig
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 8
    w, h = fig.get_size_inches()
    assert w / h < 2.0 and w <= 18  # a grid, not 8 panels in one long row
    for ax, row in zip(visible, _many_rows(), strict=True):
        assert ax.get_ylabel() == row["primary"]  # named by its metric, not "attack metric (primary)"
        floors = [ln for ln in ax.get_lines() if len(set(ln.get_ydata())) == 1
                  and abs(ln.get_ydata()[0] - row["floor"]) < 1e-9]
        assert floors, "the floor is drawn as a line"
        legend = ax.get_legend()
        assert legend is not None and any("floor" in t.get_text() for t in legend.get_texts())
        assert min(t.get_fontsize() for t in legend.get_texts()) >= 8


def test_attack_per_epoch_has_the_floor_in_its_legend(captured: _Captured) -> None:
    series = [{"attack": "clustering", "party": "T1", "level": "zero-knowledge", "primary": "accuracy",
               "run": {1: 0.5, 2: 0.6}, "base": {1: 0.8, 2: 0.9}, "floor": {1: 0.13, 2: 0.13}, "informative": True}]
    assert plots.metric_per_epoch(Path("unused.png"), series, "defense clicooper")
    ax = captured.fig.axes[0]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("floor" in t for t in texts), texts
    assert ax.get_ylabel() == "accuracy"
