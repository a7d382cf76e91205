"""Help that helps: described options with their defaults, ``clicooper models``, ``--version``, JSON errors
under ``--json``, help not cut at 80 columns, numbers in tables never wrapped mid-digit."""

from __future__ import annotations

import json
import os
import re

import pytest
from typer.testing import CliRunner

from clicooper.cli import app, main

runner = CliRunner()


def _raw_help(*cmd: str, columns: int) -> str:
    from typer import rich_utils

    old = rich_utils.MAX_WIDTH
    rich_utils.MAX_WIDTH = columns  # what a terminal of that width gives
    try:
        r = runner.invoke(app, [*cmd, "--help"])
    finally:
        rich_utils.MAX_WIDTH = old
    assert r.exit_code == 0, r.output
    return r.stdout


def _help(*cmd: str, columns: int = 80) -> str:
    return re.sub(r"[│╭╮╰╯─]", " ", _raw_help(*cmd, columns=columns))


def _option_help(text: str, option: str) -> str:
    """The help text of one option (its lines up to the next option), whitespace collapsed."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if re.search(rf"^\s*\*?\s*{re.escape(option)}\s", ln))
    block = [lines[start]]
    for ln in lines[start + 1:]:
        if re.match(r"^\s*\*?\s*--", ln):
            break
        block.append(ln)
    return " ".join(" ".join(block).split())


@pytest.mark.parametrize(("option", "default"), [("--epochs", "default 5"), ("--batch-size", "default 128"),
                                                 ("--lr", "default 0.001"), ("--trainers", "default 2")])
def test_training_options_are_described_with_their_defaults(option: str, default: str) -> None:
    text = _option_help(_help("train", columns=200), option)
    assert default in text, text
    assert len(text) > len(option) + 30, text  # a description, not just the name and its type


def test_models_lists_the_zoo_and_model_help_points_to_it() -> None:
    from clicooper.models import zoo

    r = runner.invoke(app, ["models", "--json"])
    assert r.exit_code == 0, r.output
    listed = json.loads(r.stdout.strip().splitlines()[-1])["models"]
    assert [m["name"] for m in listed] == zoo.names()
    assert all(m["description"] for m in listed)
    human = runner.invoke(app, ["models"], env={"COLUMNS": "200"}).stdout
    assert "digits-mlp" in human and "fmnist-cnn" in human and zoo.describe("digits-mlp") in human
    assert "clicooper models" in _option_help(_help("train", columns=200), "--model")
    assert "clicooper models" in _option_help(_help("plan", columns=200), "--model")


def test_version() -> None:
    from clicooper import __version__

    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == f"clicooper {__version__}"


def test_json_errors_from_a_command_and_from_a_bad_option_value(tmp_path, capsys) -> None:  # noqa: ANN001
    r = runner.invoke(app, ["train", "--dataset", "nope", "--out", str(tmp_path / "R"), "--json"])
    assert r.exit_code == 2
    obj = json.loads(r.stdout.strip().splitlines()[-1])
    assert "unknown dataset" in obj["error"] and obj["exit_code"] == 2
    r = runner.invoke(app, ["train", "--epochs", "1", "--json"])  # a command's own typer.BadParameter
    assert r.exit_code == 2 and "--out" in json.loads(r.stdout.strip())["error"]
    for argv in (["train", "--bogus", "--json"], ["train", "--epochs", "abc", "--json"]):  # refused while parsing
        with pytest.raises(SystemExit) as e:
            main(argv)
        out = capsys.readouterr().out.strip().splitlines()
        assert e.value.code == 2 and len(out) == 1, out
        assert json.loads(out[0])["exit_code"] == 2
    assert not (tmp_path / "R").exists()


@pytest.mark.parametrize("cmd", ["train", "report", "attack", "plan"])
def test_help_not_cut_at_80_columns(cmd: str) -> None:
    text = _raw_help(cmd, columns=80)
    assert max(len(ln) for ln in text.splitlines()) <= 80
    cut = [ln for ln in text.splitlines() if re.search(r"…\s*│\s*$", ln)]  # rich's mark of a word cut off
    assert not cut, cut


@pytest.mark.skipif(bool(os.environ.get("COLUMNS") or os.environ.get("TERMINAL_WIDTH")),
                    reason="the width is the user's own choice when COLUMNS / TERMINAL_WIDTH is set")
def test_help_wide_when_not_on_a_terminal() -> None:
    from typer import rich_utils

    from clicooper.cli.app import HELP_WIDTH

    assert rich_utils.MAX_WIDTH == HELP_WIDTH  # pytest's stdout is not a terminal, COLUMNS unset
    assert max(len(ln) for ln in runner.invoke(app, ["report", "--help"]).stdout.splitlines()) > 80


def test_plan_table_numbers_do_not_wrap_mid_digit() -> None:
    from rich.console import Console

    from clicooper.cli.train import plan_table
    from clicooper.models.partition import PartyPlan, Plan

    big = PartyPlan(party="T1", position=1, layers=[1], layer_names=["Conv2d"] * 6, params=123_456_789,
                    flops=98_765_432_100, flop_share=0.5)
    head = PartyPlan(party="DO:head", position=0, layers=[0], layer_names=["Conv2d"], params=10, flops=10,
                     flop_share=0.5)
    plan = Plan(model="m", topology="open-tail", trainers=1, capacities=[1.0], parties=[head, big],
                input_shape=[1, 8, 8], total_flops=1, do_flop_share=0.5)
    con = Console(width=60, record=True)
    con.print(plan_table(plan))
    text = con.export_text()
    assert "123,456,789" in text and "98,765,432,100" in text


def _words_intact(cmd: str, columns: int = 80) -> list[str]:
    """Words of ``cmd``'s option names, metavars and help strings that its ``--help`` at ``columns`` does not show
    whole (rich cut them with an ellipsis, or folded them across lines)."""
    import typer.main

    text = _raw_help(cmd, columns=columns)
    assert max(len(ln) for ln in text.splitlines()) <= columns, text
    shown = set(re.sub(r"[│╭╮╰╯─]", " ", text).split())
    command = typer.main.get_command(app).commands[cmd]  # type: ignore[attr-defined]
    missing = []
    for p in command.params:
        words = [*p.opts, *p.secondary_opts, *(p.help or "").split()]
        missing += [f"{p.name}: {w!r}" for w in words if w not in shown]
    return missing


@pytest.mark.parametrize("cmd", ["train", "report", "attack", "launch", "node"])
def test_every_option_readable_at_80_columns(cmd: str) -> None:
    missing = _words_intact(cmd)
    assert not missing, missing  # a word cut (…) or folded mid-word, a number split mid-digit among them


@pytest.mark.parametrize(("argv", "line"), [
    (["train", "--stream", "true"], "--stream is a switch: use --stream or --no-stream"),
    (["train", "--stream", "False"], "--stream is a switch: use --stream or --no-stream"),
    (["train", "--stream=false"], "--stream is a switch: use --stream or --no-stream"),
    (["train", "--no-provenance", "yes"], "--no-provenance is a switch: use --provenance or --no-provenance"),
    (["report", "RUN", "--rerun", "true"], "--rerun is a switch: use --rerun, or leave it out"),
])
def test_a_value_after_a_switch_gets_one_line(tmp_path, argv: list[str], line: str) -> None:  # noqa: ANN001
    out = tmp_path / "R"
    r = runner.invoke(app, [*argv, "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().splitlines() == [f"error: {line}"], r.stderr
    assert not out.exists()


def test_a_value_after_a_switch_under_json(capsys) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit) as e:
        main(["train", "--stream", "true", "--json"])
    got = capsys.readouterr()
    assert e.value.code == 2
    assert json.loads(got.out.strip()) == {"error": "--stream is a switch: use --stream or --no-stream",
                                           "exit_code": 2}


def test_switches_show_both_sides_and_no_turns_a_config_value_off(tmp_path) -> None:  # noqa: ANN001
    from clicooper.cli.common import config_from_options

    text = _help("train", columns=200)
    for name in ("stream", "record-observations", "provenance"):
        assert f"--no-{name}" in text, name
    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text("dataset = \"digits\"\nmodel = \"digits-mlp\"\nrecord_observations = true\n")
    assert config_from_options(cfg_file, record_observations=False).record_observations is False
    assert config_from_options(cfg_file, record_observations=None).record_observations is True


def test_python_dash_m_clicooper_is_the_console_script() -> None:
    """``python -m clicooper`` works as the installed command does (the guides and the docs use both)."""
    import subprocess
    import sys

    import clicooper

    out = subprocess.run([sys.executable, "-m", "clicooper", "--version"], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"clicooper {clicooper.__version__}"
