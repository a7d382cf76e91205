"""The split of the CPU between torch's intra-op threads and the run's background workers (transcript hash,
noise prefetch): chosen per invocation, recorded in metrics.json, and the caller's thread count given back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import clicooper.core.threads as threads
from clicooper.cli import app
from clicooper.config import make_config
from clicooper.core.threads import background_workers, choose_threads
from clicooper.errors import ConfigError
from clicooper.training import train

TINY = {"dataset": "digits", "model": "digits-mlp", "epochs": 1, "train_range": [0, 96], "trainers": 1,
        "device": "cpu", "provenance": False}


def test_the_workers_follow_the_config() -> None:
    assert background_workers(make_config(**TINY)) == []
    assert background_workers(make_config(**(TINY | {"provenance": True}))) == ["transcript-hash"]
    assert background_workers(make_config(**TINY, defense="dp", dp={"sigma": 0.1})) == ["noise-prefetch"]
    assert background_workers(make_config(**TINY, defense="dp", dp={"sigma": 0.0})) == []  # clip only: no noise


@pytest.mark.parametrize(("leave", "cores", "default", "want"), [
    (False, 2, 2, (2, "torch default")),  # the shipped default: torch's own count, as every earlier run had
    (True, 2, 2, (1, "one core left for the workers")),
    (True, 16, 16, (15, "one core left for the workers")),
    (True, 1, 1, (1, "torch default")),  # never below one thread
    (True, 4, 2, (2, "torch default")),  # torch already leaves cores free
])
def test_the_default_split(monkeypatch: pytest.MonkeyPatch, leave: bool, cores: int, default: int,
                           want: tuple[int, str]) -> None:
    monkeypatch.setattr(threads, "LEAVE_A_CORE_FOR_WORKERS", leave)
    with_worker = make_config(**(TINY | {"provenance": True}))
    split = choose_threads(with_worker, cores=cores, torch_default=default)
    assert (split.torch, split.chosen) == want and split.workers == ["transcript-hash"]
    without = choose_threads(make_config(**TINY), cores=cores, torch_default=default)
    assert (without.torch, without.chosen) == (default, "torch default")  # no worker: nothing to leave room for


def test_given_threads_win_and_bad_ones_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "LEAVE_A_CORE_FOR_WORKERS", True)
    split = choose_threads(make_config(**(TINY | {"provenance": True})), 2, cores=2, torch_default=2)
    assert (split.torch, split.chosen) == (2, "given")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="threads must be a whole number"):
            choose_threads(make_config(**TINY), bad)  # type: ignore[arg-type]


def test_a_run_records_its_split_and_gives_the_callers_threads_back(tmp_path: Path) -> None:
    # prepare: the caller's own count, different from the run's
    before = torch.get_num_threads()
    seen: list[int] = []
    # execute
    train(TINY, out=tmp_path / "r", threads=1, on_epoch=lambda m: seen.append(torch.get_num_threads()))
    # assert: the run trained on 1 thread, recorded it, and the caller has its own count again
    assert seen == [1] and torch.get_num_threads() == before
    record = json.loads((tmp_path / "r" / "metrics.json").read_text())["threads"]
    assert record == {"torch": 1, "cores": threads.cpu_cores(), "workers": [], "chosen": "given"}


def test_the_cli_threads_option(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["train", "--dataset", "digits", "--model", "digits-mlp", "--epochs", "1",
                                 "--train-range", "0:96", "--trainers", "1", "--no-provenance", "--threads", "1",
                                 "--out", str(tmp_path / "r"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["threads"]["torch"] == 1
    bad = CliRunner().invoke(app, ["train", "--dataset", "digits", "--threads", "0", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "threads must be a whole number" in bad.output and not (tmp_path / "b").exists()
