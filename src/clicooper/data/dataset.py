"""The :class:`Dataset` every loader returns, and the deterministic train/test split they share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clicooper.data.stream import StreamedImages
from clicooper.errors import DataError

#: What a training split's inputs are: a tensor in memory, or a split streamed from its files.
TrainInputs = torch.Tensor | StreamedImages

DEFAULT_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Dataset:
    """A train/test split held by the data owner. Sample id of ``x_train[i]`` is ``i``."""

    name: str
    x_train: TrainInputs  # (N, ...) float32; indexed by sample-id tensors
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...]

    @property
    def streamed(self) -> StreamedImages | None:
        """The training inputs when they stream from files (``data.stream``), else ``None`` (in memory)."""
        return self.x_train if isinstance(self.x_train, StreamedImages) else None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. ``(1, 28, 28)``."""
        return tuple(self.x_train.shape[1:])

    def train_ids(self, train_range: tuple[int, int] | None) -> torch.Tensor:
        """Sample ids the DO trains on: all, or the slice ``[start, end)`` of the training split."""
        n = len(self.x_train)
        if train_range is None:
            return torch.arange(n)
        a, b = train_range
        if b > n:
            raise DataError(
                f"--train-range {a}:{b} exceeds the {n} training samples of {self.name}; use END <= {n}"
            )
        return torch.arange(a, b)


def split_indices(n: int, test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/test split of ``n`` samples: (train indices, test indices), each ascending.

    ``round(n · test_fraction)`` samples of ``numpy.random.RandomState(seed).permutation(n)`` are the test
    split. The seed is public and part of the dataset's definition (not the run's seed), so runs with
    different seeds share one test set.
    """
    perm = np.random.RandomState(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def checked_split(n: int, test_fraction: float, seed: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`split_indices`, refusing a split that leaves the train or the test side empty."""
    tr, te = split_indices(n, test_fraction, seed)
    if len(tr) == 0 or len(te) == 0:
        raise DataError(
            f"{where} has only {n} samples: test_fraction {test_fraction:g} leaves {len(tr)} for training and "
            f"{len(te)} for testing; add samples or change data.test_fraction (--set data.test_fraction=F) so both sides get at least one"
        )
    return tr, te
