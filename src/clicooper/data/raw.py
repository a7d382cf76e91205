"""Inputs for ``predict`` as a user has them: arrays, ``.npy`` / ``.npz`` files, raw CSV rows, image files.

Everything becomes float32 ``(N, *input_shape)`` through the run's own preprocessing:

- a numpy array or tensor (numbers) is taken as features, already preprocessed: ``(N, *input_shape)``,
  one sample ``input_shape``, or ``(N, prod(input_shape))`` flat rows;
- ``.npy``: one such array; ``.npz``: its only array, or the one named by ``key``;
- ``.csv`` (a run on ``csv:`` data): raw rows with a header, encoded as the training split was
  (:func:`clicooper.data.tabular.encode_csv_rows` with the run's ``preprocessing.json``);
- a folder (a run on ``imagefolder:`` data): its image files (sorted by name, hidden files skipped; not
  recursive), decoded, resized and scaled as the run's data was (:func:`clicooper.data.imagefolder.decode_image`).

Nothing is unpickled (``allow_pickle=False``); every problem is a one-line :class:`DataError`.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clicooper.config.run import DataOptions
from clicooper.data.imagefolder import decode_image
from clicooper.data.loaders import npz_problem
from clicooper.data.tabular import encode_csv_rows
from clicooper.errors import DataError


def as_inputs(x: Any, input_shape: tuple[int, ...], what: str = "inputs") -> torch.Tensor:
    """``x`` (numpy array, tensor or nested list of numbers) as float32 ``(N, *input_shape)``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu").numpy()
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as e:
        raise DataError(f"{what} are not an array of numbers ({e})") from e
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{what} have dtype {arr.dtype}; expected numbers (float or int)")
    shape = tuple(input_shape)
    if arr.shape == shape:
        arr = arr[None]
    elif arr.ndim >= 1 and arr.shape[1:] != shape and int(np.prod(arr.shape[1:])) == int(np.prod(shape)):
        arr = arr.reshape((len(arr), *shape))
    if tuple(arr.shape[1:]) != shape:
        raise DataError(f"{what} have shape {tuple(arr.shape)}; this model expects (N, {', '.join(map(str, shape))}), "
                        f"one sample {shape}, or (N, {int(np.prod(shape))}) flat rows")
    out = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if not bool(torch.isfinite(out).all()):
        raise DataError(f"{what} contain NaN or Inf; clean them first")
    return out


def _array_file(path: Path, key: str | None) -> np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path} is not a valid .npy / .npz file ({npz_problem(e)}); save it with numpy.save "
                        "or numpy.savez") from e
    if isinstance(loaded, np.ndarray):
        if key is not None:
            raise DataError(f"{path} is one .npy array; --key names an array of a .npz file: drop it")
        return loaded
    with loaded as f:
        names = list(f.files)
        if key is None:
            if len(names) != 1:
                raise DataError(f"{path} holds {len(names)} arrays ({', '.join(names) or 'none'}); name the one "
                                "to predict with --key NAME (Python: key=NAME)")
            key = names[0]
        if key not in names:
            raise DataError(f"{path} has no array {key!r}; its arrays: {', '.join(names)}")
        try:
            return f[key]
        except ValueError as e:
            raise DataError(f"{path}: array {key!r} cannot be read ({npz_problem(e)})") from e


def _image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError(f"{folder} holds no image files; put the images to predict directly in it")
    return files


def read_inputs(path: str | Path, *, dataset: str, options: DataOptions, input_shape: tuple[int, ...],
                encoding: dict[str, Any] | None = None, key: str | None = None) -> tuple[torch.Tensor, list[str]]:
    """The inputs in ``path`` (see the module docstring) as float32 ``(N, *input_shape)``, and a name per
    row (the image file names for a folder, else row numbers). ``dataset`` / ``options`` are the run's;
    ``encoding`` is its csv encoding (needed for ``.csv`` inputs)."""
    p = Path(path)
    form = dataset.partition(":")[0]
    if p.is_dir():
        if form != "imagefolder":
            raise DataError(f"{p} is a folder: image files are read for runs on imagefolder: data only; this run "
                            f"trained on {dataset!r}: give a .npy / .npz file{' or a .csv' if form == 'csv' else ''}")
        files = _image_files(p)
        arrays = [decode_image(f, options) for f in files]
        sizes = sorted({a.shape for a in arrays})
        if len(sizes) > 1:
            raise DataError(f"the images in {p} decode to different shapes {sizes}; give images of the size the "
                            f"run trained on, {tuple(input_shape)}")
        return as_inputs(np.stack(arrays), input_shape, f"images in {p}"), [f.name for f in files]
    if not p.is_file():
        raise DataError(f"input {p} not found; give a .npy / .npz file, a .csv of raw rows (csv: runs) or a "
                        "folder of images (imagefolder: runs)")
    if p.suffix.lower() == ".csv":
        if form != "csv" or encoding is None:
            raise DataError(f"{p} is a CSV file: raw rows are read for runs on csv: data only; this run trained "
                            f"on {dataset!r}: give a .npy / .npz file of its inputs")
        x = as_inputs(encode_csv_rows(p, encoding), input_shape, f"rows of {p}")
        return x, [str(i) for i in range(len(x))]
    x = as_inputs(_array_file(p, key), input_shape, str(p))
    return x, [str(i) for i in range(len(x))]

