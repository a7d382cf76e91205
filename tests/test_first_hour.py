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
    folder = tmp_path / "img"
    _image_folder(folder / "train")
    _image_folder(folder / "test", 4)  # the test split is read at once: only a training image fails late
    bad = [folder / "train" / "c1" / "005.png"]
    for f in bad:
        f.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "R"
    if out_exists:
        out.mkdir()  # an empty directory is a valid --out; it must stay (empty), not vanish
    args = ["train", "--dataset", f"imagefolder:{folder}", "--set", "data.image_mode=L", "--model", "digits-cnn",
            "--trainers", "1", "--epochs", "1", "--stream", "--set", "data.workers=0", "--out", out]
    code, _, stderr = run_cli(*args)
    assert code == 2 and "Traceback" not in stderr, stderr
    assert (not out.exists()) if not out_exists else (out.is_dir() and not any(out.iterdir()))
    for f in bad:  # repaired, the same command works with the same --out
        from PIL import Image

        Image.new("L", (8, 8), 200).save(f)
    code, _, stderr = run_cli(*args)
    assert code == 0, stderr
    assert (out / "state.json").is_file()


# ---- a user's own nn.Sequential under --defense clicooper: export and predict ---------------------------------
# docs/python-api.md "Loading an exported model in plain PyTorch", verbatim (no clicooper import)
DOCS_CLIP = '''
class ClipPerSample(nn.Module):
    """Clip each sample to L2 norm <= norm, as the data owner did at the cut in training."""
    def __init__(self, norm):
        super().__init__()
        self.norm = norm
    def forward(self, x):
        n = x.reshape(len(x), -1).norm(dim=1).clamp_min(1e-12)
        return x * torch.clamp(self.norm / n, max=1.0).reshape(-1, *[1] * (x.dim() - 1))
'''


def _docs_clip() -> type:
    import torch
    from torch import nn

    ns: dict[str, object] = {"nn": nn, "torch": torch}
    exec(DOCS_CLIP, ns)  # noqa: S102 - the docs' own snippet, checked against the page below
    return ns["ClipPerSample"]  # type: ignore[return-value]


def test_the_docs_write_the_clip_module_the_test_uses() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "python-api.md").read_text("utf-8")
    assert DOCS_CLIP.strip() in page


def _own_digits_model():  # noqa: ANN202
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))  # ends with Linear(64, 10): 10 classes


OWN_CFG = {"dataset": "digits", "trainers": 2, "epochs": 2, "train_range": (0, 1000), "provenance": False,
           "defense": "clicooper", "dp": {"sigma": 0.02}, "lr": 3e-3}  # little noise: it learns in 2 epochs


@pytest.mark.slow
def test_own_sequential_under_clicooper_exports_to_plain_pytorch_agreeing_with_predict(tmp_path: Path) -> None:
    import json

    import numpy as np
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file
    from torch import nn

    import clicooper

    torch.manual_seed(0)
    seq = _own_digits_model()
    clicooper.train(OWN_CFG, out=tmp_path / "R", model=seq)  # Linear(64, 10) accepted: widened to 10 × m
    run = clicooper.load_run(tmp_path / "R")
    assert run.model[-1].out_features == 20
    code, _, stderr = run_cli("export", tmp_path / "R", "--out", tmp_path / "m.safetensors")
    assert code == 0, stderr
    # the plain module docs/python-api.md writes down: the user's layers, the clip after the cut, the wider output layer,
    # then Softmax and the 0/1 label decoding
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        meta = f.metadata()
    cut = json.loads(meta["cut_clip"])
    clip = _docs_clip()
    plain = nn.Sequential(*seq[: cut["after_layer"] + 1], clip(cut["norm"]), *seq[cut["after_layer"] + 1: -1],
                          nn.Linear(64, 20), nn.Softmax(dim=1), nn.Linear(20, 10, bias=False))
    plain.load_state_dict(load_file(tmp_path / "m.safetensors"))
    ds = run.dataset()
    with torch.no_grad():
        plain_pred = plain.eval()(ds.x_test).argmax(1)
    np.save(tmp_path / "x.npy", ds.x_test.numpy())
    code, stdout, stderr = run_cli("predict", tmp_path / "R", "--input", tmp_path / "x.npy", "--json")
    assert code == 0, stderr
    cli_pred = json.loads(stdout.strip().splitlines()[-1])["predictions"]
    assert len(cli_pred) == len(ds.x_test) > 300
    assert plain_pred.tolist() == cli_pred  # 100 % of the test rows
    assert len(set(cli_pred)) > 3  # it learned something: not one class for everything


def test_wrong_output_width_error_speaks_python(tmp_path: Path) -> None:
    from torch import nn

    import clicooper
    from clicooper.errors import ConfigError

    seq = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                        nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 7))
    with pytest.raises(ConfigError, match=r"nn\.Linear\(…, 20\)"):
        clicooper.train(OWN_CFG, out=tmp_path / "R", model=seq)
    assert not (tmp_path / "R").exists()


def _csv_pair(root: Path) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    return write_csv(root / "train.csv", 400), write_csv(root / "test.csv", 60)


@pytest.mark.slow
def test_predict_on_raw_csv_rows_npz_array_and_image_folder(tmp_path: Path) -> None:
    import json
    import shutil

    import numpy as np
    import torch
    from torch import nn

    import clicooper

    # csv: the user's own model, raw rows of the test file through the stored preprocessing
    train_csv, test_csv = _csv_pair(tmp_path / "csv")
    (tmp_path / "csv" / "train.csv").write_text(train_csv.read_text().replace("color", "colour"))
    (tmp_path / "csv" / "test.csv").write_text(test_csv.read_text().replace("color", "colour"))
    torch.manual_seed(0)
    tab = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                        nn.Linear(32, 2))
    cfg = {"dataset": f"csv:{train_csv},{test_csv}", "data": {"label_column": "label"}, "trainers": 2,
           "epochs": 3, "provenance": False, "defense": "clicooper", "lr": 0.01}
    clicooper.train(cfg, out=tmp_path / "T", model=tab)
    assert (tmp_path / "T" / "preprocessing.json").is_file()
    run = clicooper.load_run(tmp_path / "T")
    ds = run.dataset()
    want = run.predict(ds.x_test).argmax(1).tolist()
    code, stdout, stderr = run_cli("predict", tmp_path / "T", "--input", test_csv, "--json")
    assert code == 0, stderr
    got = json.loads(stdout.strip().splitlines()[-1])["predictions"]
    assert got == want
    truth = ds.y_test.tolist()
    assert sum(g == t for g, t in zip(got, truth, strict=True)) / len(truth) > 0.8  # not "all class 1"
    # the Python API takes the same file, and numpy arrays
    assert run.predict(test_csv).argmax(1).tolist() == want
    assert run.predict(ds.x_test.numpy()).argmax(1).tolist() == want
    assert run.predict(ds.x_test.numpy()[0]).shape == (1, 2)  # one sample
    # npz: one array, or one named among several
    np.savez(tmp_path / "one.npz", anything=ds.x_test.numpy())
    np.savez(tmp_path / "two.npz", x=ds.x_test.numpy(), other=np.zeros(3))
    for args in (["--input", tmp_path / "one.npz"], ["--input", tmp_path / "two.npz", "--key", "x"]):
        code, stdout, stderr = run_cli("predict", tmp_path / "T", *args, "--json")
        assert code == 0, stderr
        assert json.loads(stdout.strip().splitlines()[-1])["predictions"] == want
    code, _, stderr = run_cli("predict", tmp_path / "T", "--input", tmp_path / "two.npz")
    clean_error(code, stderr, "--key")

    # imagefolder: a folder of image files through the run's decoding
    img = tmp_path / "img"
    for split, n in (("train", 24), ("test", 6)):
        _image_folder(img / split, n)
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 32), nn.ReLU(),
                        nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    clicooper.train({"dataset": f"imagefolder:{img}", "data": {"image_mode": "L"}, "trainers": 2, "epochs": 1,
                     "provenance": False, "defense": "clicooper"}, out=tmp_path / "I", model=cnn)
    irun = clicooper.load_run(tmp_path / "I")
    flat = tmp_path / "flat"
    flat.mkdir()
    for c in ("c0", "c1"):  # the test split's order: class, then file name
        for f in sorted((img / "test" / c).iterdir()):
            shutil.copy(f, flat / f"{c}_{f.name}")
    want = irun.predict(irun.dataset().x_test).argmax(1).tolist()
    code, stdout, stderr = run_cli("predict", tmp_path / "I", "--input", flat, "--json")
    assert code == 0, stderr
    res = json.loads(stdout.strip().splitlines()[-1])
    assert res["predictions"] == want and res["files"][0] == "c0_000.png"
    # a folder given to a run that did not train on images: one clear line
    code, _, stderr = run_cli("predict", tmp_path / "T", "--input", flat)
    clean_error(code, stderr, "imagefolder")


def test_predict_on_npz_with_text_or_missing_file_is_one_clear_line(digits_run: Path, tmp_path: Path) -> None:
    (tmp_path / "x.npz").write_text("hello")
    code, _, stderr = run_cli("predict", digits_run, "--input", tmp_path / "x.npz")
    clean_error(code, stderr, "not a valid .npy / .npz file")
    assert "pickle" not in stderr.lower()
    code, _, stderr = run_cli("predict", digits_run, "--input", tmp_path / "nope.npz")
    clean_error(code, stderr, "not found")


# ---- launch and in-process agree bit for bit on a conv model ----------------------------------------------
def test_in_process_network_delivers_row_major_tensors_as_the_wire_does() -> None:
    import torch

    from clicooper.protocol.inproc import InProcessNetwork
    from clicooper.protocol.messages import Activations, Header

    got: list[torch.Tensor] = []

    class Sink:
        name = "T1"

        def handle(self, msg: object) -> list[object]:
            got.append(msg.tensor)  # type: ignore[attr-defined]
            return []

    conv_out = torch.nn.Conv2d(1, 4, 3)(torch.randn(2, 1, 6, 6)).contiguous(memory_format=torch.channels_last)
    net = InProcessNetwork([Sink()])  # type: ignore[list-item]
    net.send(Activations(Header("DO", "T1", 0, 0, 0), conv_out.detach()))
    net.run_until_idle()
    assert got[0].is_contiguous() and torch.equal(got[0], conv_out)


@pytest.mark.slow
def test_launch_equals_in_process_bit_for_bit_on_a_conv_model(tmp_path: Path) -> None:
    import torch

    from clicooper.net.launch import launch_local
    from clicooper.runs import load_run
    from clicooper.training import train

    cfg = {"dataset": "digits", "model": "digits-cnn", "trainers": 2, "epochs": 1, "train_range": [0, 160],
           "provenance": False}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched node computes (OMP_NUM_THREADS=1)
    try:
        ref = train(cfg, out=tmp_path / "inproc")
    finally:
        torch.set_num_threads(threads)
    res = launch_local(cfg, tmp_path / "grpc", insecure_loopback=True, max_restarts=0, timeout_s=240)
    assert res.restarts == 0
    ra, rb = load_run(ref.path), load_run(tmp_path / "grpc")
    for k in ra.modules:
        for n, v in ra.modules[k].state_dict().items():
            assert torch.equal(v, rb.modules[k].state_dict()[n]), (k, n)
