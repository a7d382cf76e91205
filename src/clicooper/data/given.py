"""The data owner's own data, given in Python rather than named by a file: tensors, a map-style
``torch.utils.data.Dataset``, or the DO's own function (``python:pkg.module:fn``).

Forms (:data:`GivenData`):

- a pair of tensors (or arrays) ``(x, y)``: ``x`` (N, …) numeric, ``y`` (N,) integer labels ``0..C-1``;
- a map-style :class:`torch.utils.data.Dataset` whose items are ``(x, y)``: read once, in index order, into
  memory (for data larger than memory, use a streamed form: ``imagefolder:`` / ``cifar*:`` with ``--stream``);
- a :class:`~clicooper.data.Dataset` (a loader's result), used as is;
- a name: any :func:`~clicooper.data.load_dataset` form, or ``python:pkg.module:fn``, the DO's own function
  returning one of the forms above or a pair ``(train, test)`` of them.

The test split is ``test_data`` when given, else the fixed 80/20 split every loader uses (see
:func:`~clicooper.data.dataset.split_indices`). **Sample ids** are index order in the training split, as for
every loader, so resume, observations and the in-process/node equivalence hold for given data too.

Given data is never written into the run directory and code is never run from one: a run records the
dataset's name (``given:TYPE`` or ``python:…``) and a fingerprint of its tensors; reopening such a run
(``train(resume=…)``, ``load_run``, a DO node) takes the data again from its owner (``data=``,
``--dataset python:…``) and checks the fingerprint. A trainer never loads data at all.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Mapping
from typing import Any, TypeAlias

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from clicooper.config.run import DataOptions
from clicooper.data.dataset import Dataset, split_indices
from clicooper.data.loaders import load_dataset
from clicooper.data.stream import StreamedImages
from clicooper.errors import DataError

#: ``python:pkg.module:fn``: the DO's own function returning its data.
PYTHON = "python"
#: ``given:TYPE``: tensors or a ``torch.utils.data.Dataset`` passed to ``train(data=…)``.
GIVEN = "given"

TensorPair: TypeAlias = tuple[Any, Any]
GivenData: TypeAlias = Dataset | TorchDataset | TensorPair | str


def is_owner_code(name: str) -> bool:
    """Whether dataset ``name`` is the DO's own Python data (``python:…`` / ``given:…``), never opened from
    a config file or a run directory alone."""
    return name.partition(":")[0] in (PYTHON, GIVEN) and ":" in name


def _tensor(a: Any, what: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu()
    if isinstance(a, np.ndarray):
        if a.dtype == object:
            raise DataError(f"{what} is an object array; give numbers")
        return torch.from_numpy(np.ascontiguousarray(a))
    if isinstance(a, (int, float)):
        return torch.tensor(a)
    raise DataError(f"{what} is a {type(a).__name__}; give a tensor or a numpy array")


def _checked(x: torch.Tensor, y: torch.Tensor, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x as float32 (N, C, …), y as int64 (N,)), refusing what a loader would refuse."""
    if x.dim() < 2 or len(x) == 0:
        raise DataError(f"{where}: x must have shape (N, features…) with N ≥ 1, got {tuple(x.shape)}")
    if y.dim() != 1 or len(y) != len(x):
        raise DataError(f"{where}: y must have shape ({len(x)},) to match x, got {tuple(y.shape)}")
    if x.dtype == torch.bool or x.is_complex():
        raise DataError(f"{where}: x has dtype {x.dtype}; give real numbers")
    x = x.to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"{where}: x contains NaN or Inf; clean or drop those samples first")
    if y.dtype.is_floating_point:
        if not bool((y == y.round()).all()):
            raise DataError(f"{where}: y has fractional values; labels must be integers 0..C-1")
    elif y.dtype == torch.bool or y.is_complex():
        raise DataError(f"{where}: y has dtype {y.dtype}; labels must be integers 0..C-1")
    y = y.to(torch.int64)
    if int(y.min()) < 0:
        raise DataError(f"{where}: labels must be >= 0 (found {int(y.min())})")
    if x.dim() == 2:
        x = x[:, None, :]  # (N, 1, F): one channel of features, as npz: and csv: give
    elif x.dim() == 3:
        x = x[:, None]  # (N, 1, H, W)
    return x.contiguous(), y.contiguous()


def _from_torch(ds: TorchDataset, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A map-style dataset's items ``(x, y)``, in index order, stacked."""
    try:
        n = len(ds)  # type: ignore[arg-type]
    except TypeError as e:
        raise DataError(f"{where}: a torch Dataset given as data must be map-style (have __len__ and "
                        "__getitem__); an IterableDataset has no stable sample ids") from e
    xs, ys = [], []
    for i in range(n):
        item = ds[i]
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise DataError(f"{where}: item {i} is a {type(item).__name__}, not an (x, y) pair")
        x, y = _tensor(item[0], f"{where}: x of item {i}"), _tensor(item[1], f"{where}: y of item {i}")
        if xs and x.shape != xs[0].shape:
            raise DataError(f"{where}: item {i} has shape {tuple(x.shape)}, item 0 {tuple(xs[0].shape)}; every "
                            "sample must have one shape")
        if y.numel() != 1:
            raise DataError(f"{where}: the label of item {i} has {y.numel()} values; give one class index")
        xs.append(x)
        ys.append(y.reshape(()))
    if not xs:
        raise DataError(f"{where}: the dataset is empty")
    return torch.stack(xs), torch.stack(ys)


def _is_array(a: Any) -> bool:
    return isinstance(a, (torch.Tensor, np.ndarray))


def _xy(data: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(_is_array(a) for a in data):
        return _checked(_tensor(data[0], f"{where}: x"), _tensor(data[1], f"{where}: y"), where)
    if isinstance(data, TorchDataset):
        return _checked(*_from_torch(data, where), where)
    raise DataError(f"{where} is a {type(data).__name__}; give (x, y) tensors, a map-style torch Dataset of "
                    "(x, y) items, or a dataset name")


def _type_name(data: Any) -> str:
    return "tensors" if isinstance(data, (tuple, list)) else type(data).__name__


def dataset_from(data: GivenData, test_data: Any = None, *, options: DataOptions | None = None) -> Dataset:
    """The :class:`Dataset` of ``data`` (see the module docstring), its test split ``test_data`` or the fixed
    80/20 split. A name is loaded (``python:`` runs the DO's own function); a :class:`Dataset` is returned
    as is."""
    if isinstance(data, str):
        if test_data is not None:
            raise DataError("test_data= goes with data given as tensors or a torch Dataset, not with a name")
        return load_python(data) if data.startswith(f"{PYTHON}:") else load_dataset(data, options)
    if isinstance(data, Dataset):
        if test_data is not None:
            raise DataError("a clicooper Dataset has its own test split; do not pass test_data=")
        return data
    name = f"{GIVEN}:{_type_name(data)}"
    x, y = _xy(data, "data")
    if test_data is not None:
        xte, yte = _xy(test_data, "test_data")
        if xte.shape[1:] != x.shape[1:]:
            raise DataError(f"test_data samples have shape {tuple(xte.shape[1:])} but data's have {tuple(x.shape[1:])}")
        xtr, ytr = x, y
    else:
        tr, te = split_indices(len(x))
        if len(tr) == 0 or len(te) == 0:
            raise DataError(f"data has only {len(x)} samples, too few for the 80/20 split; pass test_data=")
        xtr, ytr, xte, yte = x[torch.from_numpy(tr)], y[torch.from_numpy(tr)], x[torch.from_numpy(te)], \
            y[torch.from_numpy(te)]
    c = int(max(int(ytr.max()), int(yte.max()))) + 1
    if c < 2:
        raise DataError(f"data has {c} class; need at least 2")
    return Dataset(name, xtr, ytr, xte, yte, c, tuple(str(i) for i in range(c)))


def load_python(name: str) -> Dataset:
    """``python:pkg.module:fn``: import the DO's own module, call ``fn()``, and take what it returns: one of
    :data:`GivenData`, or a pair ``(train, test)`` of tensor pairs / torch Datasets. Runs code: only for a
    name the DO gives itself (``train(data=…)``, ``--dataset``), never for one read from a file."""
    form, _, ref = name.partition(":")
    mod_name, sep, fn_name = ref.rpartition(":")
    if form != PYTHON or not sep or not mod_name or not fn_name:
        raise DataError(f"{name!r} is not python:pkg.module:function (e.g. python:mydata:load)")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise DataError(f"{name}: cannot import {mod_name} ({e}); the DO's own module must be importable here "
                        "(install it, or add its folder to PYTHONPATH)") from e
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise DataError(f"{name}: {mod_name} has no function {fn_name}")
    try:
        got = fn()
    except Exception as e:  # the DO's own code: its failure, said in one line
        raise DataError(f"{name}: {fn_name}() raised {type(e).__name__}: {e}") from e
    if isinstance(got, (tuple, list)) and len(got) == 2 and not all(_is_array(a) for a in got):
        ds = dataset_from(got[0], got[1])  # (train, test)
    elif isinstance(got, str):
        raise DataError(f"{name}: {fn_name}() returned a string; return tensors or a torch Dataset")
    else:
        ds = dataset_from(got)
    return Dataset(name, ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.num_classes, ds.class_names)


def fingerprint(ds: Dataset) -> str:
    """SHA-256 over the dataset's in-memory tensors (train and test): a reopened run checks that it was given
    the same data, in the same order (its sample ids)."""
    h = hashlib.sha256(b"clicooper/given-data\x00")
    for t in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        for c in t.chunks() if isinstance(t, StreamedImages) else [t]:
            h.update(c.contiguous().numpy().tobytes())
    return h.hexdigest()


def open_dataset(name: str, options: DataOptions | Mapping[str, Any] | None, data: GivenData | None = None,
                 test_data: Any = None, *, fingerprint_of_run: str | None = None) -> Dataset:
    """The dataset of a run whose config names ``name``: loaded by name, or, for the DO's own data, from
    ``data`` (the same name, or the same tensors / torch Dataset), checked against the run's fingerprint."""
    if data is None:
        if test_data is not None:
            raise DataError("test_data= needs data=")
        return load_dataset(name, options)  # refuses python: / given: with what to pass
    if isinstance(data, str) and data != name:
        raise DataError(f"this run's dataset is {name!r}, not {data!r}")
    if not isinstance(data, str) and not name.startswith(f"{GIVEN}:"):
        raise DataError(f"this run's dataset is {name!r}, loaded by its name; do not pass data objects")
    opts = options if isinstance(options, DataOptions) else DataOptions(**(options or {}))
    ds = dataset_from(data, test_data, options=opts)
    if not isinstance(data, str):  # the run's own name for it, whatever container it came in this time
        ds = Dataset(name, ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.num_classes, ds.class_names)
    if fingerprint_of_run is not None and fingerprint(ds) != fingerprint_of_run:
        raise DataError("the data given differs from the data this run trained on (its fingerprint in plan.json "
                        "differs); give the same samples in the same order")
    return ds
