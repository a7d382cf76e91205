"""``clicooper attack``: JSON output, stored results, budgets, and one-line errors on bad input.

Inversion through the CLI (16×16 images) is tested in ``test_report.py``, which reuses that run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from clicooper.cli import app

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    r = runner.invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errs = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(errs) == 1, stderr  # progress lines may precede it; the error is one line
    return errs[0]


@pytest.fixture()
def run(digits_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(digits_run, tmp_path / "run"))


def test_attack_json_and_files(run: Path) -> None:
    code, out, err = invoke("attack", str(run), "--attack", "gradient-leak,clustering", "--budget", "smoke",
                            "--json")
    assert code == 0, err
    res = last_json(out)
    assert res["budget"] == "smoke" and "smoke budget" in res["budget_description"]
    assert set(res["attacks"]) == {"gradient-leak", "clustering"}
    for name, a in res["attacks"].items():
        stored = json.loads((run / a["file"]).read_text())
        assert stored["settings"]["budget"] == "smoke" and stored["attack"] == name
        assert a["settings"]["epochs"] == [1, 2]  # smoke/demo: every recorded epoch for these two
        lv = a["headline"][a["settings"]["parties"][-1]]["zero-knowledge"]
        assert {"primary", "score", "floor", "beats_floor"} <= set(lv)
    assert res["attacks"]["gradient-leak"]["headline"]["T2"]["zero-knowledge"]["beats_floor"]


def test_attack_overrides_win_over_budget(run: Path) -> None:
    code, out, err = invoke("attack", str(run), "--attack", "gradient-leak", "--budget", "smoke", "--epochs", "last",
                            "--knowledge", "zero")
    assert code == 0, err
    res = last_json(out)
    assert res["attacks"]["gradient-leak"]["settings"]["epochs"] == [2]
    assert res["attacks"]["gradient-leak"]["settings"]["knowledge"] == ["zero"]
    assert res["overrides"]["epochs"] == "last"
    assert "gradient-leak T2 zero-knowledge" in err  # the human summary goes to stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (("--attack", "nope"), "unknown attack"),
        (("--budget", "huge"), "unknown budget"),
        (("--aux-range", "abc"), "START:STOP"),
        (("--aux-range", "5:2"), "START:STOP"),
        (("--attack", "extraction", "--knowledge", "zero,aux", "--aux-range", "0:999999"), "out of bounds"),
        (("--attack", "extraction", "--knowledge", "zero,aux", "--aux-source", "train", "--aux-range", "0:100"),
         "overlaps the DO's training range"),
        (("--epochs", "7"), "not recorded"),
        (("--knowledge", "psychic"), "unknown knowledge"),
    ],
)
def test_bad_input_is_one_line_error(run: Path, args: tuple[str, ...], needle: str) -> None:
    base = ("--attack", "gradient-leak") if "--attack" not in args else ()
    code, out, err = invoke("attack", str(run), *base, "--budget", "smoke", *args) if "--budget" not in args \
        else invoke("attack", str(run), *base, *args)
    assert code != 0
    msg = one_line_error(err)
    assert msg.startswith("error:") and needle in msg, msg
    assert not (run / "attacks" / "extraction.json").exists()


def test_run_without_observations(run: Path, tmp_path: Path) -> None:
    shutil.rmtree(run / "observations")
    code, _, err = invoke("attack", str(run), "--attack", "clustering", "--budget", "smoke")
    assert code != 0 and "without recording observations" in one_line_error(err)
    code, _, err = invoke("attack", str(tmp_path / "missing"), "--budget", "smoke")
    assert code != 0 and "not found" in one_line_error(err)


def test_mismatched_sample_ids(run: Path) -> None:
    f = run / "observations" / "T2" / "epoch_2.safetensors"
    obs = load_file(str(f))
    obs["sample_ids"] = obs["sample_ids"] + 100_000  # ids of another dataset / run
    save_file(obs, str(f))
    code, _, err = invoke("attack", str(run), "--attack", "gradient-leak", "--budget", "smoke")
    assert code != 0 and "sample ids outside the training range" in one_line_error(err)
    obs["sample_ids"] = obs["sample_ids"][:-3] - 100_000  # fewer ids than rows
    save_file(obs, str(f))
    code, _, err = invoke("attack", str(run), "--attack", "gradient-leak", "--budget", "smoke")
    assert code != 0 and "sample ids for" in one_line_error(err)


@pytest.mark.slow
def test_open_tail_last_trainer_has_labels_not_gradients(tmp_path: Path) -> None:
    """Open tail: T_K receives labels and no gradient; clustering reads the labels (1.0 without obfuscation)
    and gradient-leak refuses T_K with a one-line error."""
    from clicooper.training import train

    run = tmp_path / "ot"
    train({"dataset": "digits", "model": "digits-mlp", "trainers": 2, "topology": "open-tail", "epochs": 1,
           "record_observations": True, "observe_count": 400, "watermark": {"enabled": False}}, out=run)
    code, out, err = invoke("attack", str(run), "--attack", "clustering", "--budget", "smoke", "--party", "T2")
    assert code == 0, err
    assert last_json(out)["attacks"]["clustering"]["headline"]["T2"]["zero-knowledge"]["score"] == 1.0
    code, _, err = invoke("attack", str(run), "--attack", "gradient-leak", "--budget", "smoke")
    assert code != 0 and "receives no gradient" in one_line_error(err)
