"""CSV one-hot encoding is bounded and linear: an identifier column is refused with what to do, the
encoded width and size are capped, and encoding writes into one array."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest

from clicooper.data import load_dataset, tabular
from clicooper.errors import DataError


def _write(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_an_identifier_column_is_refused_with_what_to_do(tmp_path: Path) -> None:
    # 4,000 unique ids: 3,200 training categories would become as many features, at N × 3,200 cost
    path = _write(tmp_path / "ids.csv", ["id", "x", "y"], [[f"u{i}", i % 7, i % 2] for i in range(4000)])
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"column 'id' is categorical with 3,200 distinct values .* more than the "
                                        r"1,000 allowed.*drop the column, or group its values"):
        load_dataset(f"csv:{path}", options={"label_column": "y"})
    assert time.perf_counter() - t0 < 5


def test_too_many_features_in_all_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tabular, "MAX_FEATURES", 50)
    rows = [[f"a{i % 30}", f"b{i % 30}", i % 2] for i in range(200)]
    path = _write(tmp_path / "wide.csv", ["a", "b", "y"], rows)
    with pytest.raises(DataError, match="encodes to 60 features, more than the 50 allowed"):
        load_dataset(f"csv:{path}", options={"label_column": "y"})


def test_the_encoding_is_the_one_hot_it_was(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [[f"c{rng.integers(5)}", float(rng.normal()), f"d{rng.integers(3)}", int(rng.integers(2))]
            for _ in range(300)]
    path = _write(tmp_path / "t.csv", ["c", "v", "d", "y"], rows)
    ds = load_dataset(f"csv:{path}", options={"label_column": "y"})
    x = ds.x_train.numpy()
    assert x.shape[1] == 5 + 1 + 3  # c: 5 categories, v: 1 number, d: 3 categories
    assert np.array_equal(x[:, :5].sum(1), np.ones(len(x))) and np.array_equal(x[:, 6:].sum(1), np.ones(len(x)))
    assert abs(float(x[:, 5].mean())) < 1e-5  # standardised on the training split
