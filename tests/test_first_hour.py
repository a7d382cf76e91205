"""A new user's first hour: bad inputs, reproducible runs, messages that say what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from clicooper.cli import app

runner = CliRunner()


def run_cli(*args: str) -> tuple[int, str, str]:
    r = runner.invoke(app, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def clean_error(code: int, stderr: str, *needles: str) -> None:
    assert code == 2, (code, stderr)
    assert "Traceback" not in stderr and "error:" in stderr, stderr
    for n in needles:
        assert n in stderr, (n, stderr)


def write_csv(path: Path, rows: int = 120) -> Path:
    """A small table: two numeric columns, one text column, a binary label."""
    import random

    rnd = random.Random(0)
    lines = ["a,b,color,label"]
    for _ in range(rows):
        a, b, c = rnd.gauss(50, 10), rnd.random(), rnd.choice(["red", "blue", "green"])
        lines.append(f"{a:.4f},{b:.4f},{c},{int(a > 50)}")
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- non-finite capacities --------------------------------------------------------------------------------
@pytest.mark.parametrize("caps", ["inf,1", "nan,1", "-1,1", "0,1"])
def test_non_finite_capacities_refused_by_train_and_plan(tmp_path: Path, caps: str) -> None:
    code, _, stderr = run_cli("plan", "--dataset", "digits", "--model", "digits-mlp", "--capacities", caps)
    clean_error(code, stderr, "finite number > 0")
    code, _, stderr = run_cli("train", "--dataset", "digits", "--model", "digits-mlp", "--capacities", caps,
                              "--epochs", "1", "--out", tmp_path / "R")
    clean_error(code, stderr, "finite number > 0")
    assert not (tmp_path / "R").exists()


def test_non_finite_capacity_in_a_config_file(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text('dataset = "digits"\nmodel = "digits-mlp"\ncapacities = [inf, 1]\n')
    code, _, stderr = run_cli("train", "--config", tmp_path / "run.toml", "--out", tmp_path / "R")
    clean_error(code, stderr, "finite number > 0")
    assert not (tmp_path / "R").exists()


# ---- a csv run without --model ------------------------------------------------------------------------------
def test_csv_without_model_names_the_shape_and_tabular_mlp(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "t.csv")
    code, _, stderr = run_cli("train", "--dataset", f"csv:{csv}", "--label-column", "label", "--epochs", "1",
                              "--out", tmp_path / "R")
    # a, b, and color one-hot (3 values): 5 features per sample
    clean_error(code, stderr, "(5,)", "--model tabular-mlp")
    assert not (tmp_path / "R").exists()


# ---- messages ---------------------------------------------------------------------------------------------
def test_text_file_as_npz_does_not_advise_unpickling(tmp_path: Path) -> None:
    (tmp_path / "x.npz").write_text("hello\n")
    code, _, stderr = run_cli("train", "--dataset", f"npz:{tmp_path / 'x.npz'}", "--out", tmp_path / "R")
    clean_error(code, stderr, "not a valid .npz file", "numpy.savez")
    assert "pickle" not in stderr.lower()


@pytest.mark.parametrize(("toml", "wanted"), [("epoch = 2\n", "`epochs`"), ("[dp]\nsigm = 1\n", "`sigma`"),
                                              ("[data]\nstreem = true\n", "`stream`")])
def test_misspelt_field_gets_did_you_mean(tmp_path: Path, toml: str, wanted: str) -> None:
    (tmp_path / "run.toml").write_text('dataset = "digits"\n' + toml)
    code, _, stderr = run_cli("train", "--config", tmp_path / "run.toml", "--out", tmp_path / "R")
    clean_error(code, stderr, f"did you mean {wanted}")


def test_missing_secret_message_names_no_internal_function(tmp_path: Path) -> None:
    from clicooper.errors import PrivacyError
    from clicooper.privacy.secrets import load_secret

    (tmp_path / "secrets").mkdir()
    with pytest.raises(PrivacyError) as e:
        load_secret(tmp_path, "label_key")
    assert "()" not in str(e.value) and "clicooper train" in str(e.value)


def test_boolean_options_read_as_flags_in_help() -> None:
    code, stdout, _ = run_cli("train", "--help")
    assert code == 0
    assert "<bool>" not in stdout
    assert "--no-provenance" in stdout


# ---- the same seed, the same weights ------------------------------------------------------------------------
def _weights(run: Path) -> dict[str, object]:
    from clicooper import rundir

    out = {}
    for f in sorted((run / "model").glob("*.safetensors")):
        tensors, _ = rundir.load_tensors(f)
        out |= {f"{f.stem}/{k}": v for k, v in tensors.items()}
    return out


def _train_digits(out: Path, *extra: str) -> None:
    code, _, stderr = run_cli("train", "--dataset", "digits", "--model", "digits-mlp", "--trainers", "2",
                              "--epochs", "1", "--train-range", "0:320", "--seed", "3", "--out", out, *extra)
    assert code == 0, stderr


@pytest.mark.slow
def test_no_provenance_same_seed_gives_bit_identical_weights(tmp_path: Path) -> None:
    import torch

    _train_digits(tmp_path / "A", "--no-provenance")
    _train_digits(tmp_path / "B", "--no-provenance")
    a, b = _weights(tmp_path / "A"), _weights(tmp_path / "B")
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "A" / "ledger.jsonl").exists()  # the flag reached the run: no ledger, no watermark
    # with provenance (the default) the watermark keys are fresh secrets: the same seed gives other weights
    _train_digits(tmp_path / "C")
    c = _weights(tmp_path / "C")
    assert any(not torch.equal(a[k], c[k]) for k in a)
