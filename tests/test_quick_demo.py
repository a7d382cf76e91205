"""``make quick``: the settings of the quick demo say something true (a defended run with an ε, beside the
undefended one, attacked by an attack whose figure is not a step-budget stand-in), and the summary it prints
is the report's own."""

from __future__ import annotations

from pathlib import Path

from clicooper.attacks.budgets import STEP_KEYS, settings_for
from experiments import demo


def test_quick_settings_are_a_defended_run_with_an_epsilon() -> None:
    from typer.testing import CliRunner

    from clicooper.cli import app

    opts = dict(zip(demo.QUICK_TRAIN[::2], demo.QUICK_TRAIN[1::2], strict=False))
    assert opts["--dataset"] == "digits" and opts["--defense"] == "clicooper"  # no download; noise → an ε
    r = CliRunner().invoke(app, ["plan", "--dataset", "digits", "--model", opts["--model"], "--trainers",
                                 opts["--trainers"], "--defense", "clicooper"])
    assert r.exit_code == 0 and "lopsided" not in r.stdout


def test_quick_attack_has_no_step_budget() -> None:
    for attack in demo.QUICK_ATTACKS.split(","):
        cfg = settings_for("demo", attack).get("config", {})
        assert not set(cfg) & set(STEP_KEYS), attack  # its figure is what the attack reaches, not a bound


def test_summary_of_reads_the_report_section(tmp_path: Path) -> None:
    md = tmp_path / "report.md"
    md.write_text("# title\n\n## Summary\n\n- **Leaked** …\n- **ε:** …\n\n## The two runs\n\n| x |\n")
    assert demo._summary_of(md) == "## Summary\n\n- **Leaked** …\n- **ε:** …"
