"""A smoke report bounds what it can without saying less: auxiliary images capped at the smoke budget only, no
shadow heads there (the demo budget runs none either), the DO-alone model trained once for a run and its
undefended baseline, and the report says where its time went."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clicooper.attacks.budgets import BUDGETS, SMOKE_AUX_ROWS, settings_for


@pytest.mark.parametrize("attack", ["inversion", "extraction", "paper-metrics", "fora", "sdar"])
def test_smoke_caps_auxiliary_images_and_no_other_budget_does(attack: str) -> None:
    assert settings_for("smoke", attack)["aux_rows"] == SMOKE_AUX_ROWS
    for budget in set(BUDGETS) - {"smoke"}:
        assert "aux_rows" not in settings_for(budget, attack), budget


def test_smoke_inversion_runs_the_demos_modes() -> None:
    smoke = settings_for("smoke", "inversion")["config"]["modes"]
    assert set(smoke) == set(settings_for("demo", "inversion")["config"]["modes"]) == {
        "white-box", "known-plaintext", "unsplit"}
    assert "modes" not in settings_for("full", "inversion")["config"]  # full: every mode, shadow heads included


def test_aux_rows_takes_the_first_rows_and_keeps_the_held_out_split(digits_run: Path) -> None:
    from clicooper.attacks.reader import RunReader
    from clicooper.attacks.runner import OwnObjects, _load_core
    from clicooper.attacks.views import build_view

    reader = RunReader(digits_run)
    dataset, arch, _ = _load_core(reader, False, OwnObjects())
    kw = {"architecture": arch, "dataset": dataset, "reader": reader, "victims": 8}
    whole = build_view(digits_run, "T1", ("zero", "aux"), **kw)
    few = build_view(digits_run, "T1", ("zero", "aux"), aux_rows=20, **kw)
    assert few.aux.x.shape[0] == 20 and few.aux.range == (0, 20)
    assert bool((few.aux.x == whole.aux.x[:20]).all())
    assert bool((few.truth.x_test == whole.truth.x_test).all())  # the rows left out are not scored on
    with pytest.raises(Exception, match="aux_rows"):
        build_view(digits_run, "T1", ("zero", "aux"), aux_rows=0, **kw)


def test_run_and_baseline_share_one_do_alone_model(digits_run: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from clicooper.report import report
    from clicooper.training.do_alone import LINEAR_TAIL, DoAloneResult

    calls: list[int] = []
    monkeypatch.setattr(report, "do_alone_result", lambda *a, **k: (
        calls.append(1), DoAloneResult(0.5, "linear", LINEAR_TAIL, {LINEAR_TAIL: 0.5}))[1])
    run, base = tmp_path / "run", tmp_path / "base"
    shutil.copytree(digits_run, run)
    shutil.copytree(digits_run, base)
    (run / "do_alone.json").unlink(missing_ok=True)
    (base / "do_alone.json").unlink(missing_ok=True)
    first = report.do_alone_for(run)
    second = report.do_alone_for(base, known=first)
    assert calls == [1] and second["do_alone_acc"] == 0.5
    assert json.loads((base / "do_alone.json").read_text())["settings"] == first["settings"]
    cfg = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**cfg, "train_range": [0, 100]}))
    (base / "do_alone.json").unlink()
    report.do_alone_for(base, known=first)  # other rows: trained again
    assert calls == [1, 1]


@pytest.mark.slow
def test_smoke_report_says_where_its_time_went(digits_run: Path, tmp_path: Path) -> None:
    from clicooper.report import make_report
    from clicooper.report.markdown import render_markdown

    rep = make_report(digits_run, tmp_path / "rep", budget="smoke", attacks="gradient-leak", do_alone=False)
    base_cfg = json.loads((tmp_path / "rep" / "baseline" / "config.json").read_text())
    run_cfg = json.loads((digits_run / "config.json").read_text())
    assert base_cfg["train_range"] == run_cfg["train_range"]  # the baseline is the run's, at every budget
    md = render_markdown(rep)
    assert "not converged" in md.lower()
    assert set(rep["phase_seconds"]) == {"baseline", "do_alone", "attacks", "figures"}  # where the time went
    assert f"baseline {rep['phase_seconds']['baseline']:g} s" in md
