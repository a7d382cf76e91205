"""The one session core (issue 12): the model is built and FLOP-counted once per ``train``; node records
are typed and checked in one place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clicooper.errors import WireError
from clicooper.models import partition, zoo
from clicooper.net.node_records import Deliver, Hello, Start, is_node_record
from clicooper.protocol.messages import Control, Header
from clicooper.training import train


def test_train_builds_and_flop_counts_the_model_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # prepare: count every build of a zoo model and every FLOP count of a plan, wherever it happens
    calls = {"build": 0, "flops": 0}
    real_build, real_costs = zoo.build, partition.layer_costs

    def build(*a, **k):  # noqa: ANN002, ANN003, ANN202
        calls["build"] += 1
        return real_build(*a, **k)

    def costs(*a, **k):  # noqa: ANN002, ANN003, ANN202
        calls["flops"] += 1
        return real_costs(*a, **k)

    monkeypatch.setattr(zoo, "build", build)
    monkeypatch.setattr(partition, "layer_costs", costs)
    # execute: σ from the noise-ratio rule (needs the cut shape), provenance and observations on
    run = train({"dataset": "digits", "model": "digits-mlp", "trainers": 2, "epochs": 1, "defense": "clicooper",
                 "train_range": [0, 160], "record_observations": True}, out=tmp_path / "run")
    # assert
    assert calls == {"build": 1, "flops": 1}
    assert run.config.dp.sigma_source == "noise-ratio" and run.config.dp.sigma == pytest.approx(1 / 256 ** 0.5)
    assert (tmp_path / "run" / "ledger.jsonl").is_file()


def test_resume_builds_the_model_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = {"dataset": "digits", "model": "digits-mlp", "trainers": 2, "epochs": 2, "train_range": [0, 96],
           "provenance": False}

    def stop_after_first(_: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(Exception, match="interrupted"):
        train(cfg, out=tmp_path / "run", on_epoch=stop_after_first)
    calls = {"build": 0}
    real_build = zoo.build

    def build(*a, **k):  # noqa: ANN002, ANN003, ANN202
        calls["build"] += 1
        return real_build(*a, **k)

    monkeypatch.setattr(zoo, "build", build)
    train(resume=tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert calls["build"] == 1 and [m["epoch"] for m in metrics["epochs"]] == [1, 2]


def _ctl(kind: str, **payload: str) -> Control:
    return Control(Header("DO", "T1", 0, 0), kind, payload)


def test_node_records_round_trip_as_strings() -> None:
    # prepare
    start = Start(round=3, epochs=5, steps=40)
    # execute
    msg = start.to_control("DO", "T1", 3)
    # assert
    assert msg.payload == {"round": "3", "epochs": "5", "steps": "40"} and is_node_record(msg)
    assert Start.from_control(msg) == start
    assert Hello.from_control(_ctl("node-hello", completed="2")) == Hello(2, None, 0)
    assert Deliver.from_control(Deliver(5, 1, "seg_1.safetensors").to_control("DO", "T1")).file == "seg_1.safetensors"


@pytest.mark.parametrize(("payload", "match"), [
    ({"round": "x", "epochs": "5", "steps": "4"}, "'round' = 'x' is not an integer"),
    ({"round": "-1", "epochs": "5", "steps": "4"}, "must be ≥ 0"),
    ({"round": "1", "epochs": "5"}, "lacks its field 'steps'"),
])
def test_malformed_node_records_are_refused_with_the_field_named(payload: dict[str, str], match: str) -> None:
    with pytest.raises(WireError, match=match):
        Start.from_control(_ctl("node-start", **payload))


def test_a_record_of_another_kind_is_refused() -> None:
    with pytest.raises(WireError, match="expected node-start"):
        Start.from_control(_ctl("node-ready"))
