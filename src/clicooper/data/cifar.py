"""CIFAR-10 and CIFAR-100 from the official **binary** version (never the pickled "python version").

Layout (https://www.cs.toronto.edu/~kriz/cifar.html, "binary version"):

- CIFAR-10 (``cifar-10-binary.tar.gz`` → ``cifar-10-batches-bin/``): ``data_batch_1.bin`` …
  ``data_batch_5.bin`` and ``test_batch.bin``; each record is 1 label byte (0–9) + 3,072 pixel bytes.
- CIFAR-100 (``cifar-100-binary.tar.gz`` → ``cifar-100-binary/``): ``train.bin`` and ``test.bin``; each
  record is 2 label bytes (coarse 0–19, fine 0–99) + 3,072 pixel bytes. ``cifar100:`` uses the fine
  label (100 classes), ``cifar100-coarse:`` the coarse one (20 superclasses).

Pixels are channel-major (1,024 red, 1,024 green, 1,024 blue, each row-major 32×32), so a record's pixels
reshape directly to (3, 32, 32). Normalisation, as for Fashion-MNIST: ``float32(byte) / 255`` in [0, 1],
no mean/std. Class names come from ``batches.meta.txt`` / ``fine_label_names.txt`` /
``coarse_label_names.txt`` when present (plain text, one name a line).

Record counts: the official files hold 10,000 records per CIFAR-10 batch and 50,000 + 10,000 for
CIFAR-100. A smaller but consistent set is accepted (every CIFAR-10 batch the same count; CIFAR-100 train
= 5 × test); a file whose size is not a whole number of records, or whose count breaks that rule, is
reported as truncated.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clicooper.data.dataset import Dataset
from clicooper.data.stream import RecordImages, StreamedImages
from clicooper.errors import DataError

PIXELS = 3 * 32 * 32
CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST = "test_batch.bin"
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
_NO_DOWNLOAD = "nothing can be downloaded here: copy the extracted files onto this machine"


def _directory(arg: str, subfolder: str, form: str, expected: str) -> Path:
    """The folder holding the batches: ``DIR`` itself, or ``DIR/<subfolder>`` (the archive's own folder)."""
    if not arg:
        raise DataError(f"give the folder as {form}:DIR (it must hold {expected})")
    d = Path(arg)
    if not d.is_dir():
        raise DataError(f"{form}: directory {d} not found; it must hold {expected}; {_NO_DOWNLOAD}")
    return d / subfolder if (d / subfolder).is_dir() else d


def _require(d: Path, names: tuple[str, ...], form: str, expected: str) -> None:
    missing = [n for n in names if not (d / n).is_file()]
    if missing:
        raise DataError(
            f"{form}: {', '.join(missing)} not found in {d}; expected {expected} (the official binary version, "
            f"not the python version); {_NO_DOWNLOAD}"
        )


def _read_records(path: Path, label_bytes: int, mmap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(labels uint8 (N, label_bytes), pixels uint8 (N, 3, 32, 32)) of one binary batch file (memory-mapped
    views with ``mmap``: nothing is read until used)."""
    try:
        raw = np.memmap(path, dtype=np.uint8, mode="r") if mmap and path.stat().st_size else path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    record = label_bytes + PIXELS
    if len(raw) == 0 or len(raw) % record:
        raise DataError(
            f"{path} is truncated: {len(raw):,} bytes is not a whole number of {record:,}-byte records "
            f"({label_bytes} label byte(s) + 3,072 pixels); copy it again from the official binary archive"
        )
    recs = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    return recs[:, :label_bytes], recs[:, label_bytes:].reshape(-1, 3, 32, 32)


def _check_labels(labels: np.ndarray, classes: int, path: Path, what: str) -> None:
    bad = np.flatnonzero(labels >= classes)
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{path} record {i}: {what} byte {int(labels[i])} is out of range 0..{classes - 1}; "
            "the file is corrupt or not this CIFAR version"
        )


def _images(pixels: list[np.ndarray], stream_workers: int | None = None) -> Any:
    """uint8 (N, 3, 32, 32) batches → one float32 tensor in [0, 1] (same scaling as Fashion-MNIST), or with
    ``stream_workers`` a :class:`~.stream.StreamedImages` reading the memory-mapped records per batch."""
    if stream_workers is not None:
        return StreamedImages(RecordImages(pixels), workers=stream_workers)
    x = np.concatenate(pixels).astype(np.float32)
    x /= 255.0
    return torch.from_numpy(x)


def _names(path: Path, count: int, fallback: tuple[str, ...]) -> tuple[str, ...]:
    """Class names from a plain-text names file (one a line) if it lists ``count`` names, else ``fallback``."""
    if path.is_file():
        names = tuple(ln.strip() for ln in path.read_text("utf-8", errors="replace").splitlines() if ln.strip())
        if len(names) == count:
            return names
    return fallback


def load_cifar10(arg: str, stream_workers: int | None = None) -> Dataset:
    """CIFAR-10 binary from folder ``arg`` (or its ``cifar-10-batches-bin/``): 50k train, 10k test, 10 classes.
    With ``stream_workers`` the training split streams from the memory-mapped files (:mod:`.stream`)."""
    expected = "data_batch_1.bin … data_batch_5.bin and test_batch.bin"
    d = _directory(arg, "cifar-10-batches-bin", "cifar10", expected)
    files = (*CIFAR10_TRAIN, CIFAR10_TEST)
    _require(d, files, "cifar10", expected)
    read = {n: _read_records(d / n, 1, mmap=stream_workers is not None) for n in files}
    counts = Counter(len(lab) for lab, _ in read.values())
    usual = counts.most_common(1)[0][0]
    for n, (lab, _) in read.items():
        if len(lab) != usual:
            raise DataError(
                f"{d / n} is truncated: {len(lab):,} records where the other batches hold {usual:,} "
                "(officially 10,000 each); copy it again from the official binary archive"
            )
        _check_labels(lab[:, 0], 10, d / n, "label")
    ytr = np.concatenate([read[n][0][:, 0] for n in CIFAR10_TRAIN]).astype(np.int64)
    yte = read[CIFAR10_TEST][0][:, 0].astype(np.int64)
    return Dataset(
        f"cifar10:{arg}", _images([read[n][1] for n in CIFAR10_TRAIN], stream_workers), torch.from_numpy(ytr),
        _images([read[CIFAR10_TEST][1]]), torch.from_numpy(yte), 10,
        _names(d / "batches.meta.txt", 10, CIFAR10_CLASSES),
    )


def _load_cifar100(arg: str, *, coarse: bool, stream_workers: int | None = None) -> Dataset:
    form = "cifar100-coarse" if coarse else "cifar100"
    expected = "train.bin and test.bin"
    d = _directory(arg, "cifar-100-binary", form, expected)
    _require(d, ("train.bin", "test.bin"), form, expected)
    mm = stream_workers is not None
    (ltr, xtr), (lte, xte) = _read_records(d / "train.bin", 2, mm), _read_records(d / "test.bin", 2, mm)
    if len(ltr) != 5 * len(lte):
        bad = "test.bin" if len(ltr) == 50_000 else "train.bin" if len(lte) == 10_000 else "one of them"
        raise DataError(
            f"{d}: train.bin holds {len(ltr):,} records and test.bin {len(lte):,}, but train.bin must hold "
            f"5 × the records of test.bin (officially 50,000 and 10,000): {bad} is truncated; copy it again"
        )
    for path, lab in ((d / "train.bin", ltr), (d / "test.bin", lte)):
        _check_labels(lab[:, 0], 20, path, "coarse label")
        _check_labels(lab[:, 1], 100, path, "fine label")
    col, classes = (0, 20) if coarse else (1, 100)
    names_file = "coarse_label_names.txt" if coarse else "fine_label_names.txt"
    return Dataset(
        f"{form}:{arg}", _images([xtr], stream_workers), torch.from_numpy(ltr[:, col].astype(np.int64)),
        _images([xte]),
        torch.from_numpy(lte[:, col].astype(np.int64)), classes,
        _names(d / names_file, classes, tuple(str(i) for i in range(classes))),
    )


def load_cifar100(arg: str, stream_workers: int | None = None) -> Dataset:
    """CIFAR-100 binary from folder ``arg`` (or its ``cifar-100-binary/``), fine labels: 100 classes."""
    return _load_cifar100(arg, coarse=False, stream_workers=stream_workers)


def load_cifar100_coarse(arg: str, stream_workers: int | None = None) -> Dataset:
    """CIFAR-100 binary with the coarse labels: 20 superclasses."""
    return _load_cifar100(arg, coarse=True, stream_workers=stream_workers)
