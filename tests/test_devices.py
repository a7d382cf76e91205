"""Devices (issue 13 item 5): each party on its own device, bf16 autocast for trainers, the GPU script.

Everything here runs on the CPU; a CUDA run is the prepared script's job (benchmarks/gpu.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from benchmarks import gpu
from clicooper.cli import app
from clicooper.config import make_config
from clicooper.errors import ConfigError
from clicooper.training import train

TINY = {"dataset": "digits", "model": "digits-mlp", "trainers": 2, "epochs": 1, "train_range": [0, 320],
        "provenance": False}


def test_party_devices_are_recorded_and_checked(tmp_path: Path) -> None:
    # execute
    run = train(TINY | {"party_devices": {"DO": "cpu", "T1": "cpu"}}, out=tmp_path / "r")
    # assert
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["party_devices"] == {"DO": "cpu", "T1": "cpu"} and run.config.device_of("T2") == "auto"
    with pytest.raises(ConfigError, match="party_devices names T3, not a party of this run"):
        make_config(**(TINY | {"party_devices": {"T3": "cpu"}}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_one_clear_error(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["train", "--dataset", "digits", "--model", "digits-mlp", "--epochs", "1",
                                 "--set", "party_devices.DO=cpu", "--set", "party_devices.T1=cuda",
                                 "--out", str(tmp_path / "r")])
    assert r.exit_code != 0 and "Traceback" not in r.output and not (tmp_path / "r").exists()
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "T1 asks for device cuda but no CUDA GPU is visible" in errors[0]
    bad = CliRunner().invoke(app, ["train", "--set", "party_devices.T1=gpu", "--out", str(tmp_path / "b")])
    assert bad.exit_code != 0 and "party_devices.T1" in bad.output and not (tmp_path / "b").exists()


def test_bf16_trainers_train_and_send_float32(tmp_path: Path) -> None:
    # prepare / execute
    fp32 = train(TINY | {"record_observations": True}, out=tmp_path / "fp32")
    bf16 = train(TINY | {"record_observations": True, "trainer_precision": "bf16"}, out=tmp_path / "bf16")
    # assert: the weights stay float32, the wire stays float32, and the run learns like the fp32 one
    seg = bf16.segments[0].state_dict()
    assert all(v.dtype == torch.float32 for v in seg.values())
    got = bf16.observations("T2", 1)
    assert got["activations"].dtype == torch.float32 and got["gradients"].dtype == torch.float32
    a = json.loads((fp32.path / "metrics.json").read_text())["final_test_acc"]
    b = json.loads((bf16.path / "metrics.json").read_text())["final_test_acc"]
    assert abs(a - b) < 0.1
    assert any(not torch.equal(v, fp32.segments[0].state_dict()[k]) for k, v in seg.items())


def test_the_gpu_script_runs_its_code_path_on_the_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    code = gpu.main(["--dataset", "digits", "--model", "digits-mlp", "--steps", "3", "--cpu-steps", "3",
                     "--batch-size", "16", "--trainer-device", "cpu"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["samples_per_s"]["trainers_on_device"] > 0 and out["ratio_device_over_cpu"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_the_gpu_script_says_when_there_is_no_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu.main(["--dataset", "digits", "--model", "digits-mlp"]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err
