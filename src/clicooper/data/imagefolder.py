"""``imagefolder:DIR``: one sub-folder per class, decoded with Pillow.

Two layouts:

- ``DIR/train/<class>/*`` and ``DIR/test/<class>/*``: the given split; both sides must have the same class
  folders.
- ``DIR/<class>/*``: split deterministically, ``data.test_fraction`` (default 0.2) of all images held out
  by :func:`clicooper.data.dataset.split_indices` seeded with the public ``data.split_seed`` (default 0).

Class names are the folder names, sorted; label id = position in that order. Every non-hidden file in a
class folder is read as an image (sorted by name; sample order = class, then file name). Files directly in
``DIR`` and hidden entries (``.*``) are ignored. Images are converted to ``data.image_mode`` (``RGB``, the
default, or ``L``), optionally resized to ``data.image_size`` × ``data.image_size`` (bilinear), and scaled
as Fashion-MNIST is: ``float32(byte) / 255`` in [0, 1], shape (N, C, H, W). Without a size every image
must already have the first one's size. With ``data.stream`` the training images stay in their files and
are decoded per batch by DataLoader workers (:mod:`.stream`); the test split is read into memory.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from clicooper.config.run import DataOptions
from clicooper.data.dataset import DEFAULT_TEST_FRACTION, Dataset, checked_split
from clicooper.data.stream import FileImages, StreamedImages
from clicooper.errors import DataError

_LAYOUT = "DIR/<class>/* or DIR/train/<class>/* and DIR/test/<class>/*"
Pairs = list[tuple[Path, int]]  # (image file, label id)


def _visible(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if not p.name.startswith("."))


def _class_files(root: Path) -> dict[str, list[Path]]:
    """``{class name: sorted image files}`` of the class folders directly under ``root``."""
    classes = {p.name: [f for f in _visible(p) if f.is_file()] for p in _visible(root) if p.is_dir()}
    if len(classes) < 2:
        raise DataError(
            f"imagefolder: {root} has {len(classes)} class folder(s); need at least 2 ({_LAYOUT})"
        )
    for name, files in classes.items():
        if not files:
            raise DataError(f"imagefolder: class folder {root / name} has no images; add some or remove it")
    return classes


def _decode(path: Path, mode: str, size: int | None) -> np.ndarray:
    """One image as uint8 (C, H, W) in ``mode``, resized to ``size``×``size`` if given."""
    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"imagefolder: cannot decode image {path} ({e}); replace or remove the file") from e
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def decode_image(path: Path, options: DataOptions) -> np.ndarray:
    """One image file as the run's ``imagefolder:`` data reads it: ``data.image_mode``, resized to
    ``data.image_size``, float32 (C, H, W) in [0, 1]."""
    return _decode(Path(path), options.image_mode or "RGB", options.image_size).astype(np.float32) / 255.0


def _read(items: Pairs, mode: str, size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x float32 (N, C, H, W) in [0, 1], y int64 (N,)) of ``(file, label)`` pairs."""
    arrays = []
    for path, _ in items:
        a = _decode(path, mode, size)
        if arrays and a.shape != arrays[0].shape:
            h, w = a.shape[1:]
            h0, w0 = arrays[0].shape[1:]
            raise DataError(
                f"imagefolder: image {path} is {w}×{h} but {items[0][0]} is {w0}×{h0}; pass --set data.image_size=N "
                "to resize every image to N×N"
            )
        arrays.append(a)
    x = np.stack(arrays).astype(np.float32)
    x /= 255.0
    return torch.from_numpy(x), torch.tensor([lab for _, lab in items], dtype=torch.int64)


def _streamed(items: Pairs, mode: str, size: int | None, options: DataOptions) -> tuple[Any, torch.Tensor]:
    """(the training images read per batch from their files (:mod:`.stream`), labels in memory)."""
    decode = functools.partial(_decode, mode=mode, size=size)
    files = [path for path, _ in items]
    items_ = FileImages(files, decode, tuple(decode(files[0]).shape))
    return StreamedImages(items_, workers=options.workers), torch.tensor([lab for _, lab in items], dtype=torch.int64)


def _pairs(classes: dict[str, list[Path]], names: tuple[str, ...]) -> Pairs:
    return [(f, i) for i, n in enumerate(names) for f in classes[n]]


def _split_layout(root: Path, options: DataOptions) -> tuple[tuple[str, ...], Pairs, Pairs]:
    """(class names, train pairs, test pairs) of the ``train/`` + ``test/`` layout."""
    if options.test_fraction is not None:
        raise DataError(
            f"imagefolder: {root} already has train/ and test/ folders; drop data.test_fraction"
        )
    train, test = _class_files(root / "train"), _class_files(root / "test")
    if set(train) != set(test):
        only_tr, only_te = sorted(set(train) - set(test)), sorted(set(test) - set(train))
        raise DataError(
            f"imagefolder: {root}/train and {root}/test have different class folders (only in train: "
            f"{', '.join(only_tr) or '-'}; only in test: {', '.join(only_te) or '-'}); give both the same classes"
        )
    names = tuple(sorted(train))
    return names, _pairs(train, names), _pairs(test, names)


def load_imagefolder(arg: str, options: DataOptions) -> Dataset:
    """Images in class folders under ``arg`` (see the module docstring for layouts, split and scaling)."""
    root = Path(arg)
    if not arg or not root.is_dir():
        raise DataError(f"imagefolder: directory {root} not found; pass imagefolder:DIR with {_LAYOUT}")
    has_train, has_test = (root / "train").is_dir(), (root / "test").is_dir()
    if has_train != has_test:
        present, absent = ("train", "test") if has_train else ("test", "train")
        raise DataError(
            f"imagefolder: {root} has {present}/ but no {absent}/; give both, or put the class folders "
            f"directly in {root}"
        )
    if has_train:
        names, train, test = _split_layout(root, options)
    else:
        classes = _class_files(root)
        names = tuple(sorted(classes))
        items = _pairs(classes, names)
        frac = options.test_fraction if options.test_fraction is not None else DEFAULT_TEST_FRACTION
        tr, te = checked_split(len(items), frac, options.split_seed, f"imagefolder: {root}")
        train, test = [items[i] for i in tr], [items[i] for i in te]
    mode, size = options.image_mode or "RGB", options.image_size
    x_train, y_train = _streamed(train, mode, size, options) if options.stream else _read(train, mode, size)
    x_test, y_test = _read(test, mode, size)
    if x_test.shape[1:] != x_train.shape[1:]:
        raise DataError(
            f"imagefolder: test images are {tuple(x_test.shape[1:])} but training images "
            f"{tuple(x_train.shape[1:])}; pass --set data.image_size=N to resize every image to N×N"
        )
    return Dataset(f"imagefolder:{arg}", x_train, y_train, x_test, y_test, len(names), names)
