"""``csv:PATH`` (split here) or ``csv:TRAIN.csv,TEST.csv``: a table with a header row and a label column.

Rules (every one a :class:`~clicooper.errors.DataError` of one line naming the file, line and column):

- The first row is the header; column names must be unique and non-empty. Blank lines are skipped. Cells
  are stripped of surrounding spaces. ``line N`` in messages is the line of the file (the header is line 1).
- ``data.label_column`` names the class column (required); its values are the classes, sorted (as numbers
  when every value is one, else as text) → class ids 0..C-1, over both splits.
- **Empty cells are errors** (nothing is imputed): fill them or drop the row.
- A feature column is **numeric** when more than half of its training values parse as finite numbers
  (Python ``float``: ``3``, ``-1.5e3``; not ``nan``/``inf``); every value of a numeric column must then
  parse, and one that does not is an error naming its line and column. Any other column is
  **categorical**: its values are text (a ``3`` among words is the category ``"3"``).
- Numeric columns are standardised with the mean and (population) std of the **training** split only
  (a constant column becomes 0). Categorical columns are one-hot encoded over the categories of the
  training split, sorted; a test value never seen in training encodes as all zeros.
- One file is split deterministically: ``data.test_fraction`` (default 0.2) of its rows held out by
  :func:`clicooper.data.dataset.split_indices` seeded with the public ``data.split_seed`` (default 0).
  With two files, the second is the test split; both must have the same columns.

Features are float32, shape (N, F) (so ``input_shape`` is ``(F,)``), in file column order: one feature per
numeric column, one per training category of each categorical column.

Bounds (a file may come from anyone): a categorical column has at most :data:`MAX_CATEGORIES` distinct
training values (more is an identifier or free text, not a category: drop the column or group its values),
the table at most :data:`MAX_FEATURES` features and :data:`MAX_VALUES` encoded values in all; each refusal
names the column or the count. Encoding costs one pass over the cells plus the output itself.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clicooper.config.run import DataOptions
from clicooper.data.dataset import DEFAULT_TEST_FRACTION, Dataset, checked_split
from clicooper.errors import DataError

MAX_CATEGORIES = 1_000  # distinct training values of one categorical column
MAX_FEATURES = 1 << 14  # encoded features (numeric columns + every column's categories)
MAX_VALUES = 1 << 28  # encoded values, rows × features, of one split (1 GiB of float32)


@dataclass(frozen=True)
class Table:
    """A CSV file's header and rows (stripped text), with the file line of each row."""

    path: Path
    header: tuple[str, ...]
    rows: list[list[str]]
    lines: list[int]

    def take(self, idx: np.ndarray) -> Table:
        """The rows at ``idx`` (in that order)."""
        return Table(self.path, self.header, [self.rows[i] for i in idx], [self.lines[i] for i in idx])


@dataclass(frozen=True)
class Column:
    """How one feature column is encoded, fitted on the training split."""

    name: str
    numeric: bool
    mean: float = 0.0
    std: float = 1.0
    categories: tuple[str, ...] = ()
    numbers: int = 0  # how many training values parse as numbers (quoted when a value does not)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _check_header(path: Path, header: list[str]) -> tuple[str, ...]:
    names = tuple(h.strip() for h in header)
    if any(not n for n in names):
        raise DataError(f"csv: {path} line 1 (the header) has an empty column name; name every column")
    dup = sorted(n for n, k in Counter(names).items() if k > 1)
    if dup:
        raise DataError(f"csv: {path} header repeats column name(s) {', '.join(dup)}; make the names unique")
    return names


def read_table(path: Path) -> Table:
    """Read ``path`` as CSV (UTF-8, optional BOM): header, rows, line numbers; checks shape and empty cells."""
    if not path.is_file():
        raise DataError(
            f"csv: file {path} not found; pass csv:PATH or csv:TRAIN.csv,TEST.csv with existing files"
        )
    header: tuple[str, ...] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for raw in reader:
                if not raw or all(not c.strip() for c in raw):
                    continue
                if header is None:
                    header = _check_header(path, raw)
                    continue
                _check_row(path, reader.line_num, header, raw)
                rows.append([c.strip() for c in raw])
                lines.append(reader.line_num)
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"csv: {path} is not a readable UTF-8 CSV file ({e})") from e
    if header is None or not rows:
        raise DataError(f"csv: {path} has {'no header row' if header is None else 'no data rows'}")
    return Table(path, header, rows, lines)


def _check_row(path: Path, line: int, header: tuple[str, ...], raw: list[str]) -> None:
    if len(raw) != len(header):
        raise DataError(f"csv: {path} line {line} has {len(raw)} fields but the header has {len(header)}")
    for name, cell in zip(header, raw, strict=True):
        if not cell.strip():
            raise DataError(
                f"csv: {path} line {line}, column {name!r}: empty cell; fill it or drop the row "
                "(missing values are not imputed)"
            )


def _fit(train: Table, label: str) -> list[Column]:
    """The encoding of every feature column, from the training rows only."""
    cols = []
    for j, name in enumerate(train.header):
        if name == label:
            continue
        values = [r[j] for r in train.rows]
        numbers = sum(_is_number(v) for v in values)
        if 2 * numbers > len(values):
            x = np.array([float(v) if _is_number(v) else np.nan for v in values], dtype=np.float64)
            mean, std = float(np.nanmean(x)), float(np.nanstd(x))
            cols.append(Column(name, True, mean, std if std > 0 else 1.0, numbers=numbers))
        else:
            distinct = set(values)
            if len(distinct) > MAX_CATEGORIES:
                raise DataError(
                    f"csv: {train.path} column {name!r} is categorical with {len(distinct):,} distinct values in the "
                    f"training split, more than the {MAX_CATEGORIES:,} allowed: an identifier or free text is no "
                    "category; drop the column, or group its values into fewer categories")
            cols.append(Column(name, False, categories=tuple(sorted(distinct))))
    if not cols:
        raise DataError(f"csv: {train.path} has no feature columns besides the label column {label!r}")
    width = sum(1 if c.numeric else len(c.categories) for c in cols)
    if width > MAX_FEATURES:
        raise DataError(f"csv: {train.path} encodes to {width:,} features, more than the {MAX_FEATURES:,} allowed; "
                        "drop columns or group the values of the widest categorical ones")
    return cols


def _encode(table: Table, cols: list[Column]) -> np.ndarray:
    """float32 (N, F) features of ``table`` under the fitted encoding ``cols``: written into one array,
    each one-hot column set by index (no (N, categories) temporary per column)."""
    index = {n: j for j, n in enumerate(table.header)}
    n = len(table.rows)
    width = sum(1 if c.numeric else len(c.categories) for c in cols)
    if n * width > MAX_VALUES:
        raise DataError(f"csv: {table.path} would encode to {n:,} rows × {width:,} features, more than the "
                        f"{MAX_VALUES:,} values allowed; use fewer rows or columns")
    out = np.zeros((n, width), dtype=np.float32)
    at = 0
    for c in cols:
        values = [r[index[c.name]] for r in table.rows]
        if c.numeric:
            for v, line in zip(values, table.lines, strict=True):
                if not _is_number(v):
                    raise DataError(
                        f"csv: {table.path} line {line}, column {c.name!r}: {v!r} is not a number, but the "
                        f"column is numeric ({c.numbers} of its training values are numbers); fix the value "
                        "or drop the row"
                    )
            out[:, at] = (np.array([float(v) for v in values]) - c.mean) / c.std
            at += 1
        else:
            pos = {cat: k for k, cat in enumerate(c.categories)}
            codes = np.fromiter((pos.get(v, -1) for v in values), dtype=np.int64, count=n)
            seen = codes >= 0  # a category never seen in training stays all-zero
            out[np.flatnonzero(seen), at + codes[seen]] = 1.0
            at += len(c.categories)
    return out


def _classes(tables: list[Table], label: str) -> tuple[str, ...]:
    """Sorted class values (numerically when every value is a number) over all ``tables``."""
    values = {r[t.header.index(label)] for t in tables for r in t.rows}
    if len(values) < 2:
        raise DataError(f"csv: label column {label!r} has {len(values)} distinct value(s); need at least 2 classes")
    if all(_is_number(v) for v in values):
        return tuple(sorted(values, key=lambda v: (float(v), v)))
    return tuple(sorted(values))


def _split_tables(arg: str, options: DataOptions) -> tuple[Table, Table]:
    """(train, test) tables of ``csv:PATH`` (split here) or ``csv:TRAIN,TEST``."""
    if not arg:
        raise DataError("give the file as csv:PATH or csv:TRAIN.csv,TEST.csv")
    if Path(arg).is_file() or "," not in arg:
        table = read_table(Path(arg))
        frac = options.test_fraction if options.test_fraction is not None else DEFAULT_TEST_FRACTION
        tr, te = checked_split(len(table.rows), frac, options.split_seed, f"csv: {table.path}")
        return table.take(tr), table.take(te)
    parts = arg.split(",")
    if len(parts) != 2:
        raise DataError(f"csv:{arg}: give one file, or two separated by one comma (csv:TRAIN.csv,TEST.csv)")
    if options.test_fraction is not None:
        raise DataError("csv:TRAIN.csv,TEST.csv already gives the test split; drop data.test_fraction")
    train, test = read_table(Path(parts[0])), read_table(Path(parts[1]))
    if set(train.header) != set(test.header):
        only_tr, only_te = sorted(set(train.header) - set(test.header)), sorted(set(test.header) - set(train.header))
        raise DataError(
            f"csv: {train.path} and {test.path} have different columns (only in train: {', '.join(only_tr) or '-'}; "
            f"only in test: {', '.join(only_te) or '-'}); give both the same header"
        )
    return train, test


def load_csv(arg: str, options: DataOptions) -> Dataset:
    """A CSV table as features (N, F) and class ids (see the module docstring for every rule)."""
    label = options.label_column
    if label is None:
        raise DataError(f"csv:{arg} needs the label column: pass --label-column NAME (data.label_column)")
    train, test = _split_tables(arg, options)
    if label not in train.header:
        raise DataError(
            f"csv: label column {label!r} not in {train.path}; its columns are: {', '.join(train.header)}"
        )
    cols = _fit(train, label)
    classes = _classes([train, test], label)
    ids = {v: i for i, v in enumerate(classes)}

    def labels(t: Table) -> torch.Tensor:
        j = t.header.index(label)
        return torch.tensor([ids[r[j]] for r in t.rows], dtype=torch.int64)

    return Dataset(
        f"csv:{arg}", torch.from_numpy(_encode(train, cols)), labels(train),
        torch.from_numpy(_encode(test, cols)), labels(test), len(classes), classes,
    )


def csv_encoding(arg: str, options: DataOptions) -> dict[str, Any]:
    """The fitted encoding of ``csv:ARG`` (training split only) as JSON data: what
    :func:`encode_csv_rows` needs to turn raw rows into the run's features (``RUN/preprocessing.json``)."""
    label = options.label_column
    if label is None:
        raise DataError(f"csv:{arg} needs the label column: pass --label-column NAME (data.label_column)")
    train, _ = _split_tables(arg, options)
    if label not in train.header:
        raise DataError(f"csv: label column {label!r} not in {train.path}; its columns are: {', '.join(train.header)}")
    cols = _fit(train, label)
    return {"kind": "csv", "label_column": label,
            "columns": [{"name": c.name, "numeric": c.numeric, "mean": c.mean, "std": c.std,
                         "categories": list(c.categories), "numbers": c.numbers} for c in cols]}


def encode_csv_rows(path: Path, encoding: dict[str, Any]) -> np.ndarray:
    """Raw rows of the CSV file ``path`` (a header naming at least the run's feature columns; the label
    column and any other column are ignored) → float32 ``(N, F)`` features, encoded as the run's training
    split was (standardised numbers, one-hot categories; an unseen category is all zeros)."""
    table = read_table(Path(path))
    try:
        cols = [Column(c["name"], bool(c["numeric"]), float(c["mean"]), float(c["std"]), tuple(c["categories"]),
                       int(c.get("numbers", 0))) for c in encoding["columns"]]
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"the run's csv encoding is malformed ({e}); retrain the run") from e
    missing = [c.name for c in cols if c.name not in table.header]
    if missing:
        raise DataError(f"csv: {path} lacks the column(s) {', '.join(missing)} the model was trained on; its "
                        f"columns are: {', '.join(table.header)}")
    return _encode(table, cols)
