"""The DO's batch order: a pure function of the public (seed, epoch), so a resumed run, a node, the
noise prefetcher and the DO-alone baseline all see the same batches."""

from __future__ import annotations

import torch


def epoch_order(train_ids: torch.Tensor, *, seed: int, epoch: int) -> torch.Tensor:
    """The DO's shuffle of its training ids for ``epoch`` (0-based), a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) & 0x7FFF_FFFF_FFFF_FFFF)
    return train_ids[torch.randperm(len(train_ids), generator=g)]


def steps_in(n: int, batch_size: int) -> int:
    """Number of steps of an epoch over ``n`` samples (the last batch may be short)."""
    return (n + batch_size - 1) // batch_size
