"""Dataset loaders with validation, and :func:`load_dataset`, the one entry point that dispatches a dataset
name to its loader. Images are float32 in [0, 1] (``byte / 255``), shape (N, C, H, W); labels int64.

Names: ``fashion-mnist`` and ``digits`` (here), ``npz:PATH`` (here), ``cifar10:DIR``, ``cifar100:DIR``,
``cifar100-coarse:DIR`` (:mod:`.cifar`), ``imagefolder:DIR`` (:mod:`.imagefolder`), ``csv:PATH`` or
``csv:TRAIN.csv,TEST.csv`` (:mod:`.tabular`). The options of the last two come from the run config's
``data`` table (:class:`clicooper.config.DataOptions`).
"""

from __future__ import annotations

import gzip
import os
import struct
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import torch

from clicooper.config.run import DataOptions
from clicooper.data.cifar import load_cifar10, load_cifar100, load_cifar100_coarse
from clicooper.data.dataset import Dataset, split_indices
from clicooper.data.imagefolder import load_imagefolder
from clicooper.data.tabular import load_csv
from clicooper.errors import DataError

FMNIST_DIR_ENV = "CLICOOPER_FMNIST_DIR"
FMNIST_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) as described at yann.lecun.com/exdb/mnist."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}; reinstall with apt-get install dataset-fashion-mnist") from e
    if len(data) < 4:
        raise DataError(f"{path} is truncated; reinstall with apt-get install --reinstall dataset-fashion-mnist")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated ({body.size} of {int(np.prod(dims))} values)")
    return body.reshape(dims)


def _find(d: Path, stem: str) -> Path:
    for cand in (d / f"{stem}.gz", d / stem):
        if cand.is_file():
            return cand
    raise DataError(
        f"Fashion-MNIST file {stem}(.gz) not found in {d}. Install it with "
        "`apt-get update && apt-get install -y dataset-fashion-mnist` (or set "
        f"{FMNIST_DIR_ENV} to a folder holding the IDX files)."
    )


def load_fashion_mnist(directory: str | Path | None = None) -> Dataset:
    """Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (60k train, 10k test)."""
    d = Path(directory or os.environ.get(FMNIST_DIR_ENV, FMNIST_DEFAULT_DIR))
    xtr = _read_idx(_find(d, "train-images-idx3-ubyte"))
    ytr = _read_idx(_find(d, "train-labels-idx1-ubyte"))
    xte = _read_idx(_find(d, "t10k-images-idx3-ubyte"))
    yte = _read_idx(_find(d, "t10k-labels-idx1-ubyte"))

    def img(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)  # (N, 1, 28, 28)

    return Dataset(
        "fashion-mnist", img(xtr), torch.from_numpy(ytr.astype(np.int64)), img(xte),
        torch.from_numpy(yte.astype(np.int64)), 10, FMNIST_CLASSES,
    )


def _split(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/test split of ``n`` samples (fixed seed: part of the dataset's definition)."""
    return split_indices(n, test_fraction, seed)


def load_digits() -> Dataset:
    """scikit-learn's bundled 8×8 digits (1,797 images; a fixed 80/20 split), scaled to [0, 1]."""
    from sklearn.datasets import load_digits as _ld

    d = _ld()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
    y = d.target.astype(np.int64)
    tr, te = _split(len(x))
    return Dataset(
        "digits", torch.from_numpy(x[tr]), torch.from_numpy(y[tr]), torch.from_numpy(x[te]),
        torch.from_numpy(y[te]), 10, tuple(str(i) for i in range(10)),
    )


#: the most bytes the arrays of one .npz may declare (a header can claim any shape; nothing that large is read)
MAX_NPZ_BYTES = 1 << 32


def _check_npz_headers(p: Path) -> None:
    """Each ``.npy`` member's header, read before any array is: no object dtype, at most
    :data:`MAX_NPZ_BYTES` in all, and exactly as many data bytes as the shape declares (a header claiming
    a huge shape over a small member would otherwise make ``np.load`` allocate it first)."""
    total = 0
    with zipfile.ZipFile(p) as z:
        for info in z.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with z.open(info) as m:
                version = np.lib.format.read_magic(m)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read(m, max_header_size=1 << 16)
                header = m.tell()
            if dtype.hasobject:
                raise DataError(f"{p}: array {info.filename[:-4]!r} has dtype {dtype} (Python objects, pickled); "
                                "save plain numeric arrays")
            nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            total += nbytes
            if total > MAX_NPZ_BYTES:
                raise DataError(f"{p}: its arrays declare more than {MAX_NPZ_BYTES:,} bytes; that is no dataset "
                                "this loader reads (split it, or use imagefolder/CSV with data.stream)")
            if header + nbytes != info.file_size:
                raise DataError(f"{p}: array {info.filename[:-4]!r} declares shape {shape} ({nbytes:,} bytes) but "
                                f"holds {info.file_size - header:,}: the file is truncated or forged")


def _check_xy(x: np.ndarray, y: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if x.ndim < 2:
        raise DataError(f"{where}: x must have shape (N, features…), got {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{where}: y must have shape ({len(x)},) to match x, got {y.shape}")
    if len(x) == 0:
        raise DataError(f"{where}: no samples")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataError(f"{where}: x has dtype {x.dtype}; expected a numeric array")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).reshape(len(x), -1).any(1).sum())
        raise DataError(f"{where}: x contains NaN or Inf in {bad} samples; clean or drop them first")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise DataError(f"{where}: y has dtype {y.dtype}; labels must be integers 0..C-1")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise DataError(f"{where}: labels must be >= 0 (found {int(y.min())})")
    if x.ndim == 2:
        x = x[:, None, :]  # (N, 1, F): one channel of features
    elif x.ndim == 3:
        x = x[:, None]  # (N, 1, H, W)
    return x, y


def npz_problem(e: BaseException) -> str:
    """Why ``numpy.load`` (``allow_pickle=False``) refused a file, in words that never advise unpickling:
    NumPy reads a file that is neither a zip archive nor ``.npy`` as a pickle, and refuses that."""
    text = str(e)
    if "pickle" in text:
        return "neither a NumPy .npz zip archive nor a .npy array"
    return f"{type(e).__name__}: {text}"


def load_npz(path: str | Path) -> Dataset:
    """A user's ``.npz`` with ``x`` and ``y`` (and optionally ``x_test``, ``y_test``).

    Without a test split a fixed 80/20 split is made. Labels must be integers in ``0..C-1``.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"npz file {p} not found; pass --dataset npz:PATH with an existing file")
    try:
        _check_npz_headers(p)
        with np.load(p, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, MemoryError, NotImplementedError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{p} is not a valid .npz file ({npz_problem(e)}); save it with numpy.savez(path, "
                        "x=…, y=…)") from None
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"{p} must contain arrays 'x' and 'y' (found {sorted(arrays)})")
    x, y = _check_xy(arrays["x"], arrays["y"], f"{p}")
    if "x_test" in arrays and "y_test" in arrays:
        xte, yte = _check_xy(arrays["x_test"], arrays["y_test"], f"{p} (test split)")
        if xte.shape[1:] != x.shape[1:]:
            raise DataError(f"{p}: x_test samples have shape {xte.shape[1:]} but x has {x.shape[1:]}")
        xtr, ytr = x, y
    else:
        tr, te = _split(len(x))
        xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
        if len(xtr) == 0 or len(xte) == 0:
            raise DataError(f"{p}: {len(x)} sample(s) cannot be split 80/20 into train and test; give more samples "
                            "or x_test and y_test")
    c = int(max(ytr.max(), yte.max())) + 1
    if c < 2:
        raise DataError(f"{p}: need at least 2 classes, found {c}")
    return Dataset(
        f"npz:{p}", torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte),
        torch.from_numpy(yte), c, tuple(str(i) for i in range(c)),
    )


def _stream_workers(options: DataOptions) -> int | None:
    """``data.workers`` when the training split streams (``data.stream``), else ``None`` (in memory)."""
    return options.workers if options.stream else None


FIXED: dict[str, Callable[[], Dataset]] = {"fashion-mnist": load_fashion_mnist, "digits": load_digits}
# ``FORM:ARG`` datasets: the loader gets ARG and the run's data options
PREFIXED: dict[str, Callable[[str, DataOptions], Dataset]] = {
    "npz": lambda arg, _: load_npz(arg),
    "cifar10": lambda arg, o: load_cifar10(arg, _stream_workers(o)),
    "cifar100": lambda arg, o: load_cifar100(arg, _stream_workers(o)),
    "cifar100-coarse": lambda arg, o: load_cifar100_coarse(arg, _stream_workers(o)),
    "imagefolder": load_imagefolder,
    "csv": load_csv,
}
#: the DO's own data given in Python (:mod:`clicooper.data.given`): never opened by name alone
OWNER_FORMS = ("python", "given")
FORMS = "fashion-mnist, digits, npz:PATH, cifar10:DIR, cifar100:DIR, cifar100-coarse:DIR, imagefolder:DIR, csv:PATH"


def _options(options: DataOptions | Mapping[str, Any] | None) -> DataOptions:
    if options is None:
        return DataOptions()
    if isinstance(options, DataOptions):
        return options
    try:
        return DataOptions(**options)
    except pydantic.ValidationError as e:
        msg = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise DataError(f"invalid data options: {msg}") from e


def load_dataset(name: str, options: DataOptions | Mapping[str, Any] | None = None) -> Dataset:
    """Load dataset ``name`` (one of :data:`FORMS`) with the run's ``data`` options (``config.data``).

    ``options`` may be a :class:`~clicooper.config.DataOptions`, its dict form (``config.json``'s
    ``"data"``) or ``None`` (every option at its default). Options that do not apply to ``name`` are refused.
    """
    opts = _options(options)
    problem = opts.problem_for(name)
    if problem is not None:
        raise DataError(problem)
    if name in FIXED:
        return FIXED[name]()
    form, sep, arg = name.partition(":")
    if sep and form in OWNER_FORMS:  # clicooper.data.given: the DO hands them over itself
        raise DataError(
            f"dataset {name!r} is the data owner's own Python data, which is never loaded from a config or a "
            "run directory alone (no code runs from a file): pass it again (Python: data=…; a DO node: "
            f"--dataset {name if form == 'python' else 'python:pkg.module:fn'})")
    if sep and form in PREFIXED:
        return PREFIXED[form](arg, opts)
    raise DataError(f"unknown dataset {name!r}; use one of {FORMS}")
