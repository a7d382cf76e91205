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


# ---- docs that name what the CLI has -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch digits run with provenance on (copy it before changing it)."""
    out = tmp_path_factory.mktemp("fh") / "R"
    _train_digits(out)
    return out


def _copy(run: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(run, dst)
    return dst


@pytest.mark.slow
def test_attack_removal_and_forgery_as_readme_lists_them(small_run: Path, tmp_path: Path) -> None:
    import json

    run = _copy(small_run, tmp_path / "R")
    code, stdout, stderr = run_cli("attack", run, "--attack", "removal,forgery", "--budget", "smoke", "--json")
    assert code == 0, stderr
    res = json.loads(stdout.strip().splitlines()[-1])["attacks"]
    assert set(res) == {"removal", "forgery"}
    forgery = json.loads((run / "attacks" / "forgery.json").read_text())
    assert forgery["headline"]["verifier"]["verify"]["score"] == 1.0  # every forged ledger rejected
    removal = json.loads((run / "attacks" / "removal.json").read_text())
    assert {r["attack"] for r in removal["results"][0]["info"]["rows"]} == {"none", "prune-global", "int8"}
    # options that choose trainer views do not apply to them: refused, not ignored
    code, _, stderr = run_cli("attack", run, "--attack", "removal", "--party", "T1", "--budget", "smoke")
    clean_error(code, stderr, "--party does not apply to removal")


def test_attack_removal_on_a_run_without_provenance_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "R"
    run.mkdir()
    (run / "config.json").write_text('{"provenance": false}')
    code, _, stderr = run_cli("attack", run, "--attack", "forgery")
    clean_error(code, stderr, "provenance off")


def test_launch_into_an_existing_directory_does_not_advise_resume(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text('dataset = "digits"\nmodel = "digits-mlp"\nepochs = 1\n')
    (tmp_path / "R").mkdir()
    (tmp_path / "R" / "keep.txt").write_text("mine")
    code, _, stderr = run_cli("launch", tmp_path / "run.toml", "--local", "--out", tmp_path / "R")
    clean_error(code, stderr, "already exists")
    assert "--resume" not in stderr
    assert (tmp_path / "R" / "keep.txt").read_text() == "mine"


def _as_finished_launch(run: Path) -> Path:
    """``run`` laid out as `clicooper launch` leaves a finished run: nodes/<party>/ hold the checkpoints,
    RUN/ holds config, plan, state, model/ (no RUN/checkpoints)."""
    import shutil

    shutil.rmtree(run / "checkpoints")
    (run / "nodes" / "DO").mkdir(parents=True)
    (run / "nodes" / "DO" / "state.json").write_text('{"completed_rounds": 1, "finished": true}')
    return run


def test_resume_of_a_finished_launch_run_says_so(small_run: Path, tmp_path: Path) -> None:
    run = _as_finished_launch(_copy(small_run, tmp_path / "R"))
    code, _, stderr = run_cli("train", "--resume", run)
    clean_error(code, stderr, "finished `clicooper launch` run", "clicooper evaluate")
    assert "missing" not in stderr


# ---- a missing state.json ---------------------------------------------------------------------------------
def test_missing_state_json_is_refused_not_restarted(small_run: Path, tmp_path: Path) -> None:
    run = _copy(small_run, tmp_path / "R")
    (run / "state.json").unlink()
    before = {f: f.read_bytes() for f in run.rglob("*") if f.is_file()}
    code, _, stderr = run_cli("train", "--resume", run)
    clean_error(code, stderr, "state.json is missing", '{"completed_rounds": 1}')
    assert {f: f.read_bytes() for f in run.rglob("*") if f.is_file()} == before  # nothing touched
    # following the advice resumes it (a finished run: nothing left to train)
    (run / "state.json").write_text('{"completed_rounds": 1}')
    code, _, stderr = run_cli("train", "--resume", run)
    assert code == 0, stderr


def test_new_run_writes_state_json_from_the_start(tmp_path: Path) -> None:
    from clicooper.training import train

    calls: list[int] = []

    def progress(epoch: int, step: int, steps: int) -> None:
        if not calls:  # during the first step: the run's files exist, no round has completed
            calls.append(int(__import__("json").loads((tmp_path / "R" / "state.json").read_text())
                             ["completed_rounds"]))

    train({"dataset": "digits", "model": "digits-mlp", "trainers": 1, "epochs": 1, "train_range": [0, 64],
           "provenance": False}, out=tmp_path / "R", progress=progress)
    assert calls == [0]


# ---- --stream on bad data leaves nothing behind ---------------------------------------------------------
def _image_folder(root: Path, per_class: int = 12) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        for k in range(per_class):
            a = (rng.random((8, 8)) * 80 + c * 120).astype(np.uint8)
            Image.fromarray(a, "L").save(root / f"c{c}" / f"{k:03d}.png")
    return root


@pytest.mark.parametrize("out_exists", [False, True])
def test_stream_with_an_undecodable_image_leaves_no_half_made_run(tmp_path: Path, out_exists: bool) -> None:
    folder = _image_folder(tmp_path / "img")
    bad = sorted((folder / "c1").glob("*.png"))
    for f in bad:  # which file lands in the training split is the split's business: break them all
        f.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "R"
    if out_exists:
        out.mkdir()  # an empty directory is a valid --out; it must stay (empty), not vanish
    args = ["train", "--dataset", f"imagefolder:{folder}", "--image-mode", "L", "--model", "digits-cnn",
            "--trainers", "1", "--epochs", "1", "--stream", "--workers", "0", "--out", out]
    code, _, stderr = run_cli(*args)
    assert code == 2 and "Traceback" not in stderr, stderr
    assert (not out.exists()) if not out_exists else (out.is_dir() and not any(out.iterdir()))
    for f in bad:  # repaired, the same command works with the same --out
        from PIL import Image

        Image.new("L", (8, 8), 200).save(f)
    code, _, stderr = run_cli(*args)
    assert code == 0, stderr
    assert (out / "state.json").is_file()
