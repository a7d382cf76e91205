"""Streamed training splits (``data.stream``): for data that does not fit in memory, the training images
stay in their files and are read per batch through a :class:`torch.utils.data.DataLoader` with worker
processes. The in-memory tensors stay the default (and the fast path for small data).

:class:`StreamedImages` stands where ``Dataset.x_train`` holds a tensor: it has ``len``, ``shape``,
``dtype`` and indexing by a sample-id tensor (all the DO does), and returns exactly the tensor the
in-memory path would (same decode, same ``byte / 255`` scaling), so batches, sample ids and the trained
weights are bit-identical. Labels and the test split stay in memory (one int64 per sample; evaluation).

The session core announces each round's batches (:meth:`StreamedImages.expect`: the public
:func:`~clicooper.data.order.epoch_order` cut into the DO's steps and micro-batches); a batch sampler
yields them in that order to persistent workers that decode ahead (``prefetch_factor`` batches each), so
a step finds its batch ready and never waits for the workers to start. A request that is not the next
announced batch (an evaluator's look, an attack reading ids) is read inline: same values, no prefetch.

Sources: ``imagefolder:`` decodes one image file per item (Pillow); ``cifar10:`` / ``cifar100:`` /
``cifar100-coarse:`` memory-map their binary batch files and read one record per item (the label bytes are
read once, to check and keep them). The other forms are refused: their files (gzip'd IDX, ``.npz``, csv)
cannot be read per sample without decompressing or parsing them whole, so they stay in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset

from clicooper.errors import DataError

Decode = Callable[[Path], np.ndarray]  # one file → uint8 (C, H, W)


class FileImages(TorchDataset):
    """One image per item, decoded from its file by ``decode`` and scaled to float32 ``byte / 255``."""

    def __init__(self, files: Sequence[Path], decode: Decode, shape: tuple[int, ...]):
        self.files, self.decode, self.shape = list(files), decode, shape

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        a = self.decode(self.files[i])
        if a.shape != self.shape:
            raise DataError(
                f"imagefolder: image {self.files[i]} has shape {a.shape}, the others {self.shape}; pass "
                "--set data.image_size=N to resize every image to N×N"
            )
        x = a.astype(np.float32)
        x /= 255.0
        return torch.from_numpy(x)


class RecordImages(TorchDataset):
    """Images in fixed-size records of memory-mapped files (CIFAR's binary batches): ``parts`` are uint8
    (N_i, C, H, W) views of ``numpy.memmap`` s, items numbered across them in order, scaled as :class:`FileImages`."""

    def __init__(self, parts: Sequence[np.ndarray]):
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])
        self.shape: tuple[int, ...] = tuple(self.parts[0].shape[1:])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> torch.Tensor:
        j = int(np.searchsorted(self.starts, i, side="right")) - 1
        x = np.asarray(self.parts[j][i - int(self.starts[j])]).astype(np.float32)
        x /= 255.0
        return torch.from_numpy(x)


Items = FileImages | RecordImages


class _Announced(Sampler[list[int]]):
    """Yields the batches announced for the current round, in order (iterated by the DataLoader)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(list(self.batches))

    def __len__(self) -> int:
        return len(self.batches)


def micro_chunks(ids: torch.Tensor, micro_batches: int) -> list[torch.Tensor]:
    """The DO's micro-batches of a step's ids (as :meth:`DataOwner.start_step` cuts them)."""
    return [c for c in torch.tensor_split(ids, micro_batches) if len(c)]


class StreamedImages:
    """A training split read from files on demand (module doc).

    Its own type, not a tensor: code that must treat a streamed split differently (announcing a round's
    batches, hashing it in chunks, reading it inline in a node) asks ``isinstance(x, StreamedImages)`` or
    :attr:`clicooper.data.Dataset.streamed`. Indexing by sample ids returns the tensor the in-memory split
    would, so the DO's step code reads both alike (:data:`clicooper.data.TrainInputs`).
    """

    def __init__(self, items: Items, *, workers: int, prefetch_factor: int = 2):
        self.items, self.workers = items, workers
        self._sampler = _Announced()
        self._pending: list[torch.Tensor] = []
        self._it: Iterator[torch.Tensor] | None = None
        self._loader: DataLoader | None = None
        self._prefetch = prefetch_factor
        self._rng = torch.Generator().manual_seed(0)  # the loader's worker seeds (unused: decoding is exact)

    # tensor-like surface --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    @property
    def shape(self) -> torch.Size:
        """``(N, C, H, W)``, as the in-memory tensor's."""
        return torch.Size((len(self.items), *self.items.shape))

    @property
    def dtype(self) -> torch.dtype:
        """Always float32."""
        return torch.float32

    def __getitem__(self, index: Any) -> torch.Tensor:
        """The samples ``index`` (id tensor, list, array, slice or int), from the prefetch when announced."""
        if isinstance(index, int):
            return self.items[index]
        if isinstance(index, slice):
            ids = torch.arange(len(self.items))[index]
        else:
            ids = torch.as_tensor(index)
            ids = (ids.nonzero().reshape(-1) if ids.dtype == torch.bool else ids.to(torch.int64)).reshape(-1)
        if self._pending and self._it is not None and torch.equal(self._pending[0], ids):
            self._pending.pop(0)
            return next(self._it)
        return self.read(ids)

    def read(self, ids: torch.Tensor) -> torch.Tensor:
        """The samples ``ids`` decoded inline (no workers)."""
        if len(ids) == 0:
            return torch.empty((0, *self.items.shape), dtype=torch.float32)
        return torch.stack([self.items[int(i)] for i in ids])

    def chunks(self, size: int = 4096) -> Iterator[torch.Tensor]:
        """The whole split in id order, ``size`` samples at a time (hashing it without holding it)."""
        for a in range(0, len(self.items), size):
            yield self.read(torch.arange(a, min(a + size, len(self.items))))

    # prefetch -------------------------------------------------------------------------------------
    def read_inline(self) -> None:
        """Decode in the calling process from now on (no worker processes): a node does, since forking
        DataLoader workers once gRPC's threads run crashes them. Same batches, same values."""
        if self._loader is not None:
            raise DataError("read_inline() must be called before the first round is announced")
        self.workers = 0

    def expect(self, order: torch.Tensor, batch_size: int, micro_batches: int) -> None:
        """Announce a round: the DO will ask for ``order`` step by step, each step in micro-batches."""
        batches = [c for s in range(0, len(order), batch_size)
                   for c in micro_chunks(order[s : s + batch_size], micro_batches)]
        self._sampler.batches = [c.tolist() for c in batches]
        self._pending = list(batches)
        if self.workers == 0:  # read inline on request
            self._it = iter(self.read(c) for c in batches)
            return
        if self._loader is None:  # started once; its workers persist across rounds
            self._loader = DataLoader(self.items, batch_sampler=self._sampler, num_workers=self.workers,
                                      persistent_workers=True, prefetch_factor=self._prefetch,
                                      generator=self._rng)  # never draws from the run's global RNG
        self._it = iter(self._loader)
