"""Shared fixtures. Tests run on CPU, on digits or tiny synthetic data; nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fmnist = pytest.mark.skipif(not FMNIST.is_file(), reason="Debian package dataset-fashion-mnist not installed")


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trained digits run with observations (shared by read-only tests)."""
    from clicooper.training import train

    out = tmp_path_factory.mktemp("runs") / "digits"
    train(
        {"dataset": "digits", "model": "digits-mlp", "trainers": 2, "epochs": 2, "record_observations": True},
        out=out,
    )
    return out
