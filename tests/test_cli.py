"""The command line as a user meets it: JSON output, and bad input → one clear line, exit ≠ 0."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clicooper.cli import app

runner = CliRunner()


def run_cli(*args: str) -> tuple[int, str, str]:
    r = runner.invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


def assert_clean_error(code: int, stderr: str, needle: str) -> None:
    assert code != 0
    assert "Traceback" not in stderr
    assert "error:" in stderr and needle in stderr, stderr


def test_train_evaluate_predict_json(tmp_path: Path) -> None:
    out = tmp_path / "R"
    code, stdout, _ = run_cli("train", "--dataset", "digits", "--model", "digits-mlp", "--trainers", "2",
                              "--epochs", "2", "--out", str(out), "--json")
    assert code == 0
    trained = json.loads(stdout.strip().splitlines()[-1])
    code, stdout, _ = run_cli("evaluate", str(out), "--json")
    assert code == 0
    assert json.loads(stdout.strip().splitlines()[-1])["test_acc"] == pytest.approx(trained["test_acc"], abs=1e-12)
    from sklearn.datasets import load_digits

    np.save(tmp_path / "x.npy", (load_digits().images[:4] / 16.0).astype(np.float32))
    code, stdout, _ = run_cli("predict", str(out), "--input", str(tmp_path / "x.npy"), "--json")
    assert code == 0
    pred = json.loads(stdout.strip().splitlines()[-1])
    assert len(pred["predictions"]) == 4 and all(abs(sum(p) - 1) < 1e-4 for p in pred["probabilities"])


def test_config_file(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text('dataset = "digits"\nmodel = "digits-mlp"\ntrainers = 1\nepochs = 1\n')
    code, stdout, _ = run_cli("train", "--config", str(tmp_path / "run.toml"), "--out", str(tmp_path / "R"), "--json")
    assert code == 0 and json.loads(stdout.strip().splitlines()[-1])["epochs"] == 1
    (tmp_path / "bad.toml").write_text('dataset = "digits"\nepochs = -3\nbogus = 1\n')
    code, _, stderr = run_cli("train", "--config", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "R2"))
    assert_clean_error(code, stderr, "epochs")
    assert not (tmp_path / "R2").exists()


def test_schedule_and_wire_settings_reach_the_config(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text('dataset = "digits"\nmodel = "digits-mlp"\ntrainers = 1\nepochs = 1\n'
                                       'wire_dtype = "bf16"\n')
    code, _, _ = run_cli("train", "--config", str(tmp_path / "run.toml"), "--set", "lr_schedule=cosine", "--set",
                         "wire_dtype=int8", "--train-range", "0:160", "--out", str(tmp_path / "R"))
    cfg = json.loads((tmp_path / "R" / "config.json").read_text())
    assert code == 0 and cfg["lr_schedule"] == "cosine" and cfg["wire_dtype"] == "int8"  # --set wins
    code, _, stderr = run_cli("train", "--dataset", "digits", "--set", "wire_dtype=fp8", "--out", str(tmp_path / "R2"))
    assert_clean_error(code, stderr, "wire_dtype")
    assert not (tmp_path / "R2").exists()


def test_missing_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICOOPER_FMNIST_DIR", str(tmp_path / "nowhere"))
    code, _, stderr = run_cli("train", "--dataset", "fashion-mnist", "--out", str(tmp_path / "R"))
    assert_clean_error(code, stderr, "apt-get install -y dataset-fashion-mnist")


def test_malformed_npz(tmp_path: Path) -> None:
    (tmp_path / "bad.npz").write_bytes(b"this is not a zip file")
    code, _, stderr = run_cli("train", "--dataset", f"npz:{tmp_path / 'bad.npz'}", "--model", "digits-mlp",
                              "--out", str(tmp_path / "R"))
    assert_clean_error(code, stderr, "not a valid .npz")
    np.savez(tmp_path / "noy.npz", x=np.zeros((10, 4), np.float32))
    code, _, stderr = run_cli("train", "--dataset", f"npz:{tmp_path / 'noy.npz'}", "--out", str(tmp_path / "R"))
    assert_clean_error(code, stderr, "must contain arrays 'x' and 'y'")


def test_nan_features(tmp_path: Path) -> None:
    x = np.ones((50, 8, 8), np.float32)
    x[3, 2, 2] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.arange(50) % 2)
    code, _, stderr = run_cli("train", "--dataset", f"npz:{tmp_path / 'nan.npz'}", "--model", "digits-mlp",
                              "--out", str(tmp_path / "R"))
    assert_clean_error(code, stderr, "NaN")


def test_wrong_capacities_length(tmp_path: Path) -> None:
    code, _, stderr = run_cli("train", "--dataset", "digits", "--model", "digits-mlp", "--trainers", "3",
                              "--capacities", "1,2", "--out", str(tmp_path / "R"))
    assert_clean_error(code, stderr, "one capacity per trainer")


def test_corrupt_safetensors_in_run(digits_run: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(digits_run, run)
    seg = run / "model" / "seg_1.safetensors"
    good = seg.read_bytes()
    seg.write_bytes(good[: len(good) // 2])
    code, _, stderr = run_cli("evaluate", str(run))
    assert_clean_error(code, stderr, "seg_1.safetensors")
    assert (run / "model" / "head.safetensors").is_file()  # nothing else touched


def test_resume_of_non_run(tmp_path: Path) -> None:
    code, _, stderr = run_cli("train", "--resume", str(tmp_path))
    assert_clean_error(code, stderr, "not a run directory")


def test_set_overrides_any_config_field_by_its_dotted_name(tmp_path: Path) -> None:
    # prepare: a config file, a flag, and --set over both (applied last)
    (tmp_path / "run.json").write_text(json.dumps({"trainers": 2, "party_devices": {"DO": "cpu"}}))
    # execute
    code, stdout, stderr = run_cli("plan", "--dataset", "digits", "--model", "digits-mlp", "--trainers", "2",
                                   "--set", "trainers=3", "--set", "capacities=[1, 2, 1]", "--json")
    # assert
    assert code == 0, stderr
    plan = json.loads(stdout.strip().splitlines()[-1])
    assert plan["trainers"] == 3 and len(plan["parties"]) == 5
    from clicooper.cli.common import apply_sets

    fields = apply_sets({"party_devices": {"DO": "cpu"}}, ["dp.sigma=0.1", "party_devices.T1=cpu",
                                                           "train_range=[0, 100]", "provenance=false"])
    assert fields == {"party_devices": {"DO": "cpu", "T1": "cpu"}, "dp": {"sigma": 0.1}, "train_range": [0, 100],
                      "provenance": False}


@pytest.mark.parametrize(("arg", "needle"), [
    ("dp.sigmaa=0.1", "did you mean dp.sigma"),
    ("trainrs=3", "did you mean trainers"),
    ("epochs.n=3", "epochs is a single value"),
    ("dp=", "invalid configuration: dp"),
    ("trainers=many", "trainers: Input should be a valid integer"),
    ("novalue", "is not KEY=VALUE"),
])
def test_set_refuses_a_wrong_key_or_value_in_one_line(arg: str, needle: str) -> None:
    code, _, stderr = run_cli("plan", "--dataset", "digits", "--model", "digits-mlp", "--set", arg)
    assert code == 2
    assert_clean_error(code, stderr, needle)


def test_set_on_train_and_launch_reaches_the_run_config(tmp_path: Path) -> None:
    code, _, stderr = run_cli("train", "--dataset", "digits", "--model", "digits-mlp", "--set", "epochs=0",
                              "--out", str(tmp_path / "R"))
    assert_clean_error(code, stderr, "epochs: Input should be greater than or equal to 1")
    assert not (tmp_path / "R").exists()
    (tmp_path / "run.json").write_text(json.dumps({"dataset": "digits", "model": "digits-mlp"}))
    code, _, stderr = run_cli("launch", str(tmp_path / "run.json"), "--local", "--set", "trainerz=2",
                              "--out", str(tmp_path / "L"))
    assert_clean_error(code, stderr, "did you mean trainers")


def test_train_names_the_do_own_python_data_on_its_command_line_only(tmp_path: Path) -> None:
    code, _, stderr = run_cli("train", "--dataset", "python:no_such_module_xyz:load", "--model", "digits-mlp",
                              "--out", str(tmp_path / "R"))
    assert_clean_error(code, stderr, "cannot import no_such_module_xyz")
    (tmp_path / "run.json").write_text(json.dumps({"dataset": "python:no_such_module_xyz:load"}))
    code, _, stderr = run_cli("train", "--config", str(tmp_path / "run.json"), "--model", "digits-mlp",
                              "--out", str(tmp_path / "R2"))
    assert_clean_error(code, stderr, "never loaded from a config")
