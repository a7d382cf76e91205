"""The dataset forms beyond Fashion-MNIST/digits/npz: CIFAR-10/100 (official binary files), imagefolder:, csv:.

Every test writes tiny files in exactly the official formats into tmp_path; bad input is checked through the
CLI as a user meets it: exit ≠ 0, exactly one ``error:`` line, and ``--out`` not created.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clicooper.cli import app
from clicooper.data import load_dataset
from clicooper.errors import DataError

runner = CliRunner()


# -- writers of the official formats -------------------------------------------------------------------
def cifar_records(labels: np.ndarray, rng: np.random.RandomState) -> tuple[bytes, np.ndarray]:
    """Binary records: each row of ``labels`` (uint8 label bytes) followed by 3,072 random pixel bytes."""
    pixels = rng.randint(0, 256, size=(len(labels), 3, 32, 32)).astype(np.uint8)
    recs = np.concatenate([labels.astype(np.uint8), pixels.reshape(len(labels), -1)], axis=1)
    return recs.tobytes(), pixels


def write_cifar10(d: Path, n: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``data_batch_1..5.bin`` + ``test_batch.bin`` with ``n`` records each → (x_train, y_train, x_test, y_test)."""
    rng = np.random.RandomState(seed)
    d.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        y = rng.randint(0, 10, size=(n, 1))
        raw, px = cifar_records(y, rng)
        (d / name).write_bytes(raw)
        xs.append(px)
        ys.append(y[:, 0])
    return np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5]


def write_cifar100(d: Path, n_test: int = 2, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``train.bin`` (5 × n_test records) and ``test.bin`` → {file: (pixels, label bytes (N, 2))}."""
    rng = np.random.RandomState(seed)
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, n in (("train.bin", 5 * n_test), ("test.bin", n_test)):
        lab = np.stack([rng.randint(0, 20, size=n), rng.randint(0, 100, size=n)], axis=1)
        raw, px = cifar_records(lab, rng)
        (d / name).write_bytes(raw)
        out[name] = (px, lab)
    return out


def write_images(d: Path, classes: dict[str, int], size: tuple[int, int] = (6, 5), seed: int = 0
                 ) -> dict[str, list[np.ndarray]]:
    """``d/<class>/img_<k>.png`` (RGB, ``size`` = (width, height)) → {class: [uint8 (H, W, 3), …]} in file order."""
    rng = np.random.RandomState(seed)
    out: dict[str, list[np.ndarray]] = {}
    for cls, count in classes.items():
        (d / cls).mkdir(parents=True, exist_ok=True)
        out[cls] = []
        for k in range(count):
            a = rng.randint(0, 256, size=(size[1], size[0], 3)).astype(np.uint8)
            Image.fromarray(a, "RGB").save(d / cls / f"img_{k}.png")
            out[cls].append(a)
    return out


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def breast_cancer_csv(path: Path) -> Path:
    """scikit-learn's breast-cancer table as CSV, plus a categorical column ``colour`` and the label ``target``."""
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    colours = np.random.RandomState(1).choice(["red", "green", "blue"], size=len(d.target))
    rows = [[*(f"{v:.6g}" for v in x), c, d.target_names[y]] for x, c, y in zip(d.data, colours, d.target, strict=True)]
    return write_csv(path, [*d.feature_names, "colour", "target"], rows)


def cli_error(tmp_path: Path, *args: str) -> str:
    """Run ``clicooper train ARGS --out tmp/R``; assert one clean error line and no run directory; return it."""
    out = tmp_path / "R"
    r = runner.invoke(app, ["train", *args, "--epochs", "1", "--out", str(out)])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code != 0, r.stderr
    assert "Traceback" not in r.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert not out.exists()
    return lines[0]


# -- CIFAR ---------------------------------------------------------------------------------------------
def test_cifar10_binary_decodes_pixels_labels_and_channel_order(tmp_path: Path) -> None:
    xtr, ytr, xte, yte = write_cifar10(tmp_path / "c10", n=3)
    red = np.zeros((1, 3, 32, 32), np.uint8)
    red[0, 0], red[0, 2] = 255, 128  # plane 0 = red, plane 2 = blue
    with (tmp_path / "c10" / "test_batch.bin").open("r+b") as f:
        f.write(bytes([7]) + red.tobytes())  # overwrite the first test record
    ds = load_dataset(f"cifar10:{tmp_path / 'c10'}")
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32) and ds.num_classes == 10
    assert ds.x_train.dtype == torch.float32
    assert torch.equal(ds.x_train, torch.from_numpy(xtr.astype(np.float32) / 255))
    assert ds.y_train.tolist() == ytr.tolist()
    assert ds.y_test.tolist() == [7, *yte[1:].tolist()]
    assert ds.x_test[0, 0].eq(1).all() and ds.x_test[0, 1].eq(0).all()
    assert torch.allclose(ds.x_test[0, 2], torch.tensor(128 / 255))
    assert torch.equal(ds.x_test[1:], torch.from_numpy(xte[1:].astype(np.float32) / 255))
    assert ds.class_names[0] == "airplane"


def test_cifar10_accepts_the_archive_folder(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar-10-batches-bin", n=1)
    assert len(load_dataset(f"cifar10:{tmp_path}").x_train) == 5


def test_cifar100_fine_and_coarse_labels(tmp_path: Path) -> None:
    written = write_cifar100(tmp_path / "c100", n_test=2)
    (tmp_path / "c100" / "fine_label_names.txt").write_text("\n".join(f"f{i}" for i in range(100)) + "\n")
    fine = load_dataset(f"cifar100:{tmp_path / 'c100'}")
    coarse = load_dataset(f"cifar100-coarse:{tmp_path / 'c100'}")
    px, lab = written["train.bin"]
    assert fine.num_classes == 100 and coarse.num_classes == 20 and len(fine.x_train) == 10
    assert fine.y_train.tolist() == lab[:, 1].tolist() and coarse.y_train.tolist() == lab[:, 0].tolist()
    assert fine.y_test.tolist() == written["test.bin"][1][:, 1].tolist()
    assert torch.equal(fine.x_train, torch.from_numpy(px.astype(np.float32) / 255))
    assert fine.class_names[3] == "f3" and coarse.class_names[3] == "3"


def _truncate(path: Path, drop: int) -> None:
    path.write_bytes(path.read_bytes()[:-drop])


CIFAR_BAD: dict[str, tuple[Callable[[Path], str], str]] = {
    "missing dir": (lambda p: f"cifar10:{p / 'nowhere'}", "nothing can be downloaded here"),
    "missing file": (lambda p: (write_cifar10(p / "c"), (p / "c" / "test_batch.bin").unlink(),
                                f"cifar10:{p / 'c'}")[-1], "test_batch.bin not found"),
    "partial record": (lambda p: (write_cifar10(p / "c"), _truncate(p / "c" / "data_batch_2.bin", 100),
                                  f"cifar10:{p / 'c'}")[-1], "not a whole number of 3,073-byte records"),
    "record count": (lambda p: (write_cifar10(p / "c"), _truncate(p / "c" / "data_batch_4.bin", 3073),
                                f"cifar10:{p / 'c'}")[-1], "data_batch_4.bin is truncated: 2 records"),
    "cifar10 label": (lambda p: (write_cifar10(p / "c"), _poke(p / "c" / "data_batch_1.bin", 3073, 12),
                                 f"cifar10:{p / 'c'}")[-1], "record 1: label byte 12 is out of range 0..9"),
    "cifar100 count": (lambda p: (write_cifar100(p / "c"), _truncate(p / "c" / "test.bin", 3074),
                                  f"cifar100:{p / 'c'}")[-1], "train.bin must hold 5 × the records of test.bin"),
    "cifar100 fine label": (lambda p: (write_cifar100(p / "c"), _poke(p / "c" / "test.bin", 1, 100),
                                       f"cifar100:{p / 'c'}")[-1], "fine label byte 100 is out of range 0..99"),
    "cifar100 missing": (lambda p: f"cifar100:{(p / 'e').mkdir() or p / 'e'}", "train.bin, test.bin not found"),
}


def _poke(path: Path, offset: int, value: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] = value
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("case", sorted(CIFAR_BAD))
def test_cifar_bad_input_is_one_clear_line(tmp_path: Path, case: str) -> None:
    make, needle = CIFAR_BAD[case]
    line = cli_error(tmp_path, "--dataset", make(tmp_path), "--model", "digits-mlp")
    assert needle in line


# -- imagefolder ---------------------------------------------------------------------------------------
def test_imagefolder_train_test_layout(tmp_path: Path) -> None:
    train = write_images(tmp_path / "f" / "train", {"cat": 2, "ant": 3})
    test = write_images(tmp_path / "f" / "test", {"cat": 1, "ant": 1}, seed=1)
    (tmp_path / "f" / "train" / "ant" / ".DS_Store").write_bytes(b"\0")  # hidden: ignored
    ds = load_dataset(f"imagefolder:{tmp_path / 'f'}")
    assert ds.class_names == ("ant", "cat") and ds.num_classes == 2
    assert ds.y_train.tolist() == [0, 0, 0, 1, 1] and ds.y_test.tolist() == [0, 1]
    assert ds.input_shape == (3, 5, 6)
    want = np.stack(train["ant"] + train["cat"]).transpose(0, 3, 1, 2).astype(np.float32) / 255
    assert torch.equal(ds.x_train, torch.from_numpy(want))
    assert torch.equal(ds.x_test[1], torch.from_numpy(test["cat"][0].transpose(2, 0, 1).astype(np.float32) / 255))


def test_imagefolder_flat_split_resize_and_mode(tmp_path: Path) -> None:
    write_images(tmp_path / "f", {"a": 4, "b": 4}, size=(12, 10))
    opts = {"test_fraction": 0.25, "image_size": 8}
    ds = load_dataset(f"imagefolder:{tmp_path / 'f'}", options=opts)
    again = load_dataset(f"imagefolder:{tmp_path / 'f'}", options=opts)
    assert len(ds.x_train) == 6 and len(ds.x_test) == 2 and ds.input_shape == (3, 8, 8)
    assert torch.equal(ds.x_test, again.x_test) and torch.equal(ds.y_train, again.y_train)  # deterministic
    other = load_dataset(f"imagefolder:{tmp_path / 'f'}", options={**opts, "split_seed": 5})
    assert float(ds.x_train.sum() + ds.x_test.sum()) == pytest.approx(float(other.x_train.sum() + other.x_test.sum()))
    grey = load_dataset(f"imagefolder:{tmp_path / 'f'}", options={"image_mode": "L"})
    assert grey.input_shape == (1, 10, 12) and len(grey.x_test) == 2  # default test_fraction 0.2 of 8


def test_imagefolder_sizes_must_agree_without_image_size(tmp_path: Path) -> None:
    write_images(tmp_path / "f", {"a": 2})
    write_images(tmp_path / "f", {"b": 2}, size=(7, 7))
    with pytest.raises(DataError, match="--set data.image_size=N"):
        load_dataset(f"imagefolder:{tmp_path / 'f'}")


def _undecodable(p: Path) -> str:
    write_images(p / "f" / "train", {"a": 2, "b": 2})
    write_images(p / "f" / "test", {"a": 1, "b": 1})
    (p / "f" / "train" / "b" / "broken.png").write_bytes(b"not a png")
    return f"imagefolder:{p / 'f'}"


def _class_mismatch(p: Path) -> str:
    write_images(p / "f" / "train", {"a": 2, "b": 2})
    write_images(p / "f" / "test", {"a": 1, "c": 1})
    return f"imagefolder:{p / 'f'}"


@pytest.mark.parametrize(("make", "needle"), [
    (_undecodable, "broken.png"),
    (_class_mismatch, "only in train: b; only in test: c"),
    (lambda p: f"imagefolder:{p / 'nowhere'}", "not found"),
], ids=["undecodable", "class-mismatch", "missing-dir"])
def test_imagefolder_bad_input_is_one_clear_line(tmp_path: Path, make: Callable[[Path], str], needle: str) -> None:
    line = cli_error(tmp_path, "--dataset", make(tmp_path), "--model", "digits-mlp")
    assert needle in line


# -- csv -----------------------------------------------------------------------------------------------
def test_csv_standardised_on_train_one_hot_and_labels(tmp_path: Path) -> None:
    path = breast_cancer_csv(tmp_path / "bc.csv")
    ds = load_dataset(f"csv:{path}", options={"label_column": "target"})
    assert ds.input_shape == (33,) and len(ds.x_train) == 455 and len(ds.x_test) == 114  # 30 numeric + 3 colours
    assert ds.class_names == ("benign", "malignant")
    assert torch.allclose(ds.x_train[:, :30].mean(0), torch.zeros(30), atol=1e-5)
    assert torch.allclose(ds.x_train[:, :30].std(0, unbiased=False), torch.ones(30), atol=1e-4)
    assert not torch.allclose(ds.x_test[:, :30].mean(0), torch.zeros(30), atol=1e-3)  # test stats not used
    assert ds.x_train[:, 30:].sum(1).eq(1).all()  # one-hot over blue, green, red


def test_csv_train_test_files_unknown_category_and_numeric_label_order(tmp_path: Path) -> None:
    header = ["size", "shape", "y"]
    tr = write_csv(tmp_path / "tr.csv", header, [[1, "round", 10], [3, "square", 2], [5, "round", 10]])
    te = write_csv(tmp_path / "te.csv", header, [[3, "star", 2], [1, "square", 10]])
    ds = load_dataset(f"csv:{tr},{te}", options={"label_column": "y"})
    assert ds.class_names == ("2", "10") and ds.y_train.tolist() == [1, 0, 1] and ds.y_test.tolist() == [0, 1]
    s = (np.array([1, 3, 5]) - 3) / np.std([1, 3, 5])
    assert torch.allclose(ds.x_train[:, 0], torch.tensor(s, dtype=torch.float32))
    assert ds.x_train[:, 1:].tolist() == [[1, 0], [0, 1], [1, 0]]  # categories round, square (train only)
    assert ds.x_test[:, 1:].tolist() == [[0, 0], [0, 1]]  # "star" never seen in training: all zeros


def _csv_rows(p: Path, rows: list[list[object]]) -> str:
    return str(write_csv(p / "t.csv", ["a", "b", "y"], rows))


CSV_BAD: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "missing label column": (lambda p: [f"csv:{_csv_rows(p, [[1, 2, 0]] * 10)}", "--label-column", "class"],
                             "label column 'class' not in"),
    "no label column given": (lambda p: [f"csv:{_csv_rows(p, [[1, 2, 0]] * 10)}"], "--label-column NAME"),
    "non-numeric cell": (lambda p: [f"csv:{_csv_rows(p, [[i, 2, i % 2] for i in range(8)] + [['x7', 2, 1]])}",
                                    "--label-column", "y"], "line 10, column 'a': 'x7' is not a number"),
    "empty cell": (lambda p: [f"csv:{_csv_rows(p, [[1, 2, 0], [1, '', 1]] * 5)}", "--label-column", "y"],
                   "line 3, column 'b': empty cell"),
    "train range": (lambda p: [f"csv:{_csv_rows(p, [[i, 2, i % 2] for i in range(10)])}", "--label-column", "y",
                               "--train-range", "0:50"], "--train-range 0:50 exceeds the 8 training samples"),
    "too few rows": (lambda p: [f"csv:{_csv_rows(p, [[1, 2, 0], [2, 2, 1]])}", "--label-column", "y",
                                "--set", "data.test_fraction=0.1"], "leaves 2 for training and 0 for testing"),
    "option for another dataset": (lambda p: ["digits", "--label-column", "y"], "applies to csv: datasets only"),
}


@pytest.mark.parametrize("case", sorted(CSV_BAD))
def test_csv_bad_input_is_one_clear_line(tmp_path: Path, case: str) -> None:
    make, needle = CSV_BAD[case]
    line = cli_error(tmp_path, "--dataset", *make(tmp_path), "--model", "tabular-mlp")
    assert needle in line


def test_csv_cli_run_reloads_its_data_from_config(tmp_path: Path) -> None:
    path = breast_cancer_csv(tmp_path / "bc.csv")
    out = tmp_path / "R"
    r = runner.invoke(app, ["train", "--dataset", f"csv:{path}", "--label-column", "target", "--set",
                            "data.test_fraction=0.3", "--model", "tabular-mlp", "--trainers", "3", "--epochs", "1", "--out", str(out),
                            "--json"])
    assert r.exit_code == 0, r.stderr
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data"]["label_column"] == "target" and cfg["data"]["test_fraction"] == 0.3
    r = runner.invoke(app, ["evaluate", str(out), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout.strip().splitlines()[-1])["n_test"] == 171


@pytest.mark.slow
def test_csv_reaches_sklearn_mlp_accuracy(tmp_path: Path) -> None:
    """Acceptance (issue 13, item 4): the breast-cancer CSV, K = 2, within 2 pt of a plain scikit-learn MLP
    trained on the same standardised split."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    from clicooper.training import train

    path = breast_cancer_csv(tmp_path / "bc.csv")
    run = train({"dataset": f"csv:{path}", "data": {"label_column": "target"}, "model": "tabular-mlp",
                 "trainers": 2, "epochs": 5, "lr": 1e-3, "batch_size": 16, "provenance": False, "device": "cpu"},
                out=tmp_path / "R")
    ds = run.dataset()
    ours = run.accuracy(ds.x_test, ds.y_test)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPClassifier(random_state=0, max_iter=500).fit(ds.x_train.numpy(), ds.y_train.numpy())
    theirs = float(mlp.score(ds.x_test.numpy(), ds.y_test.numpy()))
    print(f"clicooper tabular-mlp K=2: {ours:.4f}  sklearn MLPClassifier: {theirs:.4f}")
    assert ours >= theirs - 0.02
