"""``--max-epsilon`` (stop cleanly before an epoch that would exceed the budget; resumable) and
``dp.max_sigma`` (the largest σ a target ε may choose), issue 5."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clicooper.config import make_config
from clicooper.errors import ConfigError
from clicooper.privacy.accountant import epsilon
from clicooper.provenance.ledger import Ledger
from clicooper.provenance.verify import verify_run
from clicooper.training import train

SIGMA = 1.0
BASE = {"dataset": "digits", "model": "digits-mlp", "trainers": 2, "epochs": 3, "seed": 0,
        "defense": "dp", "dp": {"sigma": SIGMA, "clip_norm": 1.0}}


def _eps(epochs: int) -> float:
    return epsilon(sigma=SIGMA, epochs=epochs, delta=1e-5).epsilon


@pytest.mark.slow
def test_max_epsilon_stops_before_the_epoch_and_a_larger_budget_resumes(tmp_path: Path) -> None:
    run = tmp_path / "r"
    budget = (_eps(1) + _eps(2)) / 2  # one epoch fits, two do not
    train(BASE, out=run, max_epsilon=budget)

    metrics = json.loads((run / "metrics.json").read_text())
    stopped = metrics["stopped"]
    assert len(metrics["epochs"]) == 1 and stopped["before_epoch"] == 2 and stopped["completed_epochs"] == 1
    assert stopped["epsilon_after_next_epoch"] == pytest.approx(_eps(2)) and stopped["max_epsilon"] == budget
    assert stopped["covers"] == "per-release, head fixed"
    assert json.loads((run / "state.json").read_text()) == {"completed_rounds": 1}
    privacy = json.loads((run / "privacy.json").read_text())
    assert privacy["epochs_accounted"] == 1 and privacy["reports"][0]["epsilon"] <= budget
    assert not Ledger.open(run / "ledger.jsonl").closed  # resumable: no closing entry yet

    train(resume=run, max_epsilon=_eps(3) * 1.01)
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 3 and "stopped" not in metrics
    assert json.loads((run / "privacy.json").read_text())["epochs_accounted"] == 3
    from clicooper.provenance.delivered import load_segments

    report = verify_run(run / "ledger.jsonl", load_segments(run))
    assert report.ok and report.closed and report.rounds_completed == 3


@pytest.mark.slow
def test_max_epsilon_below_one_epoch_trains_nothing_and_says_so_on_the_cli(tmp_path: Path) -> None:
    from clicooper.cli import app

    run = tmp_path / "r"
    res = CliRunner().invoke(app, [
        "train", "--dataset", "digits", "--model", "digits-mlp", "--trainers", "2", "--epochs", "2",
        "--defense", "dp", "--sigma", str(SIGMA), "--max-epsilon", str(_eps(1) / 2), "--out", str(run), "--json",
    ])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["stopped"]["before_epoch"] == 1 and summary["epochs"] == 0 and summary["test_acc"] is None
    assert json.loads((run / "state.json").read_text()) == {"completed_rounds": 0}
    assert (run / "config.json").is_file() and (run / "secrets").is_dir()  # nothing lost: resumable


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "5"])
def test_max_epsilon_is_validated(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ConfigError, match="max_epsilon"):
        train(BASE, out=tmp_path / "r", max_epsilon=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "r").exists()


def test_max_epsilon_needs_a_dp_guarantee(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="releases nothing"):
        train(BASE | {"defense": "labels"}, out=tmp_path / "a", max_epsilon=10.0)
    with pytest.raises(ConfigError, match="σ = 0"):
        train(BASE | {"dp": {"sigma": 0.0}}, out=tmp_path / "b", max_epsilon=10.0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_target_epsilon_needing_more_than_max_sigma_is_refused(tmp_path: Path) -> None:
    from clicooper.cli import app
    from clicooper.privacy.defaults import resolve_sigma

    cfg = make_config(defense="dp", epochs=10, dp={"target_epsilon": 1.0, "max_sigma": 2.0})
    with pytest.raises(ConfigError, match="max_sigma"):
        resolve_sigma(cfg, cut_shape=(64,))
    ok = resolve_sigma(make_config(defense="dp", epochs=10, dp={"target_epsilon": 1.0, "max_sigma": 1000.0}),
                       cut_shape=(64,))
    assert ok.dp.sigma is not None and ok.dp.sigma > 2.0  # the refused target really needs σ above 2
    with pytest.raises(ValueError):
        make_config(dp={"max_sigma": 0.0})

    res = CliRunner().invoke(app, [
        "train", "--dataset", "digits", "--model", "digits-mlp", "--defense", "dp", "--epochs", "10",
        "--target-epsilon", "1", "--set", "dp.max_sigma=2", "--out", str(tmp_path / "r"),
    ])
    assert res.exit_code != 0 and "max_sigma" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()
