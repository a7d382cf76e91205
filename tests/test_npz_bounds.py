"""A hostile .npz is refused before anything it declares is allocated: a header claiming a huge shape
over a small member, object arrays, and too few samples to split are one clear DataError each."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from clicooper.data import load_dataset
from clicooper.errors import DataError
from tests.support.bounded import run_bounded


def _npy_header_only(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def _load_error(path: Path) -> str:
    try:
        load_dataset(f"npz:{path}")
    except DataError as e:
        return str(e)
    return "accepted"


def test_a_header_declaring_a_huge_array_is_refused_unallocated(tmp_path: Path) -> None:
    f = tmp_path / "bomb.npz"
    with zipfile.ZipFile(f, "w") as z:
        z.writestr("x.npy", _npy_header_only((1 << 28, 4)))  # 4 GiB declared, no data
        z.writestr("y.npy", _npy_header_only((4,), "<i8"))
    # act: in a child with 1.5 GiB of address space
    out = run_bounded(_load_error, f, timeout=60)
    # assert
    assert out.error is None, out.message
    assert "declares shape (268435456, 4)" in out.value and "truncated or forged" in out.value


def test_object_arrays_and_too_few_samples_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "obj.npz"
    np.savez(f, x=np.array([object()], dtype=object), y=np.array([0, 1]))
    one = tmp_path / "one.npz"
    np.savez(one, x=np.zeros((1, 3), np.float32), y=np.array([0]))
    with pytest.raises(DataError, match="Python objects, pickled"):
        load_dataset(f"npz:{f}")
    with pytest.raises(DataError, match="cannot be split 80/20"):
        load_dataset(f"npz:{one}")
