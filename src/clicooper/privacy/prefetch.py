"""Computes the keyed noise of the data owner's *next* batch on one background thread.

The noise of a release is a pure function of ``(noise_secret, stream, round, sample id)`` (see
:mod:`.activation`), and the DO's batches follow a public, fixed order (``clicooper.data.epoch_order``:
a function of the run's seed and the epoch). So while step ``s`` runs, the noise of step ``s + 1`` can be
drawn on another core: ``cryptography``'s ChaCha20 and NumPy's ufuncs release the GIL.

* **Same values.** A prefetched tensor is what the protector would compute inline for the same
  ``(stream, round, item shape, ids)``; a request that matches nothing prefetched (a miss, a different
  order, a served query, an error in the worker) is computed inline, as without prefetching.
* **Bounded.** At most :attr:`NoisePrefetcher.max_ahead` batches per stream are held (computed or in
  flight), each released once it has been handed out (micro-batches take contiguous slices of it). Only
  the training streams (``"act"``, ``"grad"``) are predicted; served queries are computed inline.
* **No hang.** One worker thread (``concurrent.futures``), started on the first prediction; :meth:`close`
  cancels what has not started and waits for the one batch in flight. A prefetcher that is dropped without
  ``close`` lets its idle thread exit (and the interpreter joins it at exit).

The prefetcher only ever holds noise, never the secret itself (the protector computes; the worker calls
it), and nothing it holds leaves the DO's process.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

#: ``compute(item_shape, ids, round, stream) -> noise`` (the protector's inline computation)
Compute = Callable[[tuple[int, ...], list[int], int, str], torch.Tensor]


class EpochSchedule:
    """Which batch the DO releases after a given one: the public per-epoch order cut into batches.

    ``order_of(r)`` returns round ``r``'s order of sample ids (``epoch_order(train_ids, seed=, epoch=r)``);
    batch ``s`` of round ``r`` is ``order_of(r)[s·B:(s+1)·B]``, and after a round's last batch comes batch 0
    of the next round (up to ``epochs``). Only the last two rounds' orders are kept.
    """

    def __init__(self, order_of: Callable[[int], torch.Tensor], *, batch_size: int, epochs: int) -> None:
        if batch_size < 1 or epochs < 1:
            raise ValueError("batch_size and epochs must be >= 1")
        self._order_of = order_of
        self.batch_size = int(batch_size)
        self.epochs = int(epochs)
        self._rounds: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def _round(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            if r in self._rounds:
                self._rounds.move_to_end(r)
                return self._rounds[r]
        order = np.asarray(self._order_of(r), dtype=np.int64)
        pos = np.full(int(order.max()) + 1 if len(order) else 0, -1, dtype=np.int64)
        pos[order] = np.arange(len(order))
        with self._lock:
            self._rounds[r] = (order, pos)
            while len(self._rounds) > 2:
                self._rounds.popitem(last=False)
        return order, pos

    def next_batch(self, round: int, ids: Sequence[int]) -> tuple[int, tuple[int, ...]] | None:
        """``(round, ids)`` of the batch after the one that contains ``ids`` (a batch or a contiguous
        micro-batch of one), or ``None`` when ``ids`` is not on the schedule or is in the last batch."""
        if not ids or not 0 <= round < self.epochs:
            return None
        order, pos = self._round(round)
        first = int(ids[0])
        if not 0 <= first < len(pos) or pos[first] < 0:
            return None
        start = int(pos[first])
        if not np.array_equal(order[start : start + len(ids)], np.asarray(ids, dtype=np.int64)):
            return None
        nxt = (start // self.batch_size + 1) * self.batch_size
        if nxt < len(order):
            return round, tuple(order[nxt : nxt + self.batch_size].tolist())
        if round + 1 < self.epochs:
            return round + 1, tuple(self._round(round + 1)[0][: self.batch_size].tolist())
        return None


@dataclass
class _Entry:
    ids: tuple[int, ...]
    future: Future[torch.Tensor]
    taken: int = 0  # rows handed out so far
    index: dict[int, int] | None = field(default=None, repr=False)  # id -> row, built on a partial request


_Key = tuple[int, str, int, tuple[int, ...], tuple[int, ...]]  # (owner, stream, round, item shape, ids)


class NoisePrefetcher:
    """Noise of predicted batches, computed ahead on one background thread (see the module docstring).

    ``take`` returns a prefetched tensor or ``None`` (then the caller computes inline); ``ahead`` submits
    the batch the schedule predicts after the current one. Both are called by
    :meth:`clicooper.privacy.activation.ActivationProtector.noise`.
    """

    def __init__(
        self, schedule: EpochSchedule, *, max_ahead: int = 2, streams: Sequence[str] = ("act", "grad")
    ) -> None:
        if not 1 <= max_ahead <= 4:
            raise ValueError("max_ahead must be between 1 and 4 batches")
        self.schedule = schedule
        self.max_ahead = max_ahead
        self.streams = frozenset(streams)  # the training streams, which follow the schedule
        self._entries: OrderedDict[_Key, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"NoisePrefetcher(held={len(self._entries)}, hits={self.hits}, misses={self.misses})"

    @property
    def closed(self) -> bool:
        """True after :meth:`close` (then every request is computed inline)."""
        return self._closed

    # -- used by the protector ---------------------------------------------------------------------------
    def take(
        self, owner: object, stream: str, round: int, item_shape: tuple[int, ...], ids: Sequence[int]
    ) -> torch.Tensor | None:
        """The prefetched noise for exactly these rows (waiting for it if still in flight), or ``None``."""
        ids = tuple(ids)
        hit = None
        with self._lock:
            for key, e in self._entries.items():
                if key[:4] != (id(owner), stream, round, item_shape):
                    continue
                if key[4] == ids:
                    start = 0
                else:  # a micro-batch: a contiguous slice of a prefetched batch
                    if e.index is None:
                        e.index = {v: j for j, v in enumerate(e.ids)}
                    start = e.index.get(ids[0], -1) if ids else -1
                    if start < 0 or e.ids[start : start + len(ids)] != ids:
                        continue
                e.taken += len(ids)
                if e.taken >= len(e.ids):
                    del self._entries[key]
                hit = (e.future, start)
                break
        if hit is None:
            self.misses += 1
            return None
        fut, start = hit
        try:
            z = fut.result()
        except (CancelledError, Exception):  # the inline computation raises the real error, if any
            self.misses += 1
            return None
        self.hits += 1
        return z if start == 0 and len(ids) == z.shape[0] else z[start : start + len(ids)]

    def ahead(
        self,
        owner: object,
        compute: Compute,
        stream: str,
        round: int,
        item_shape: tuple[int, ...],
        ids: Sequence[int],
    ) -> None:
        """Start computing the batch predicted after ``ids`` (no-op if already held or not predictable)."""
        if self._closed or stream not in self.streams:
            return
        nxt = self.schedule.next_batch(round, ids)
        if nxt is None:
            return
        r2, ids2 = nxt
        key: _Key = (id(owner), stream, r2, item_shape, ids2)
        with self._lock:
            if self._closed or key in self._entries:
                return
            same = [k for k in self._entries if k[:2] == key[:2]]  # this protector's stream
            for k in same[: max(0, len(same) - self.max_ahead + 1)]:  # oldest first
                self._entries.pop(k).future.cancel()
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clicooper-noise")
            fut = self._pool.submit(compute, item_shape, list(ids2), r2, stream)
            self._entries[key] = _Entry(ids2, fut)

    # -- lifetime ----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Drop everything held, cancel what has not started, wait for the batch in flight; idempotent."""
        with self._lock:
            self._closed = True
            entries = list(self._entries.values())
            self._entries.clear()
            pool, self._pool = self._pool, None
        for e in entries:
            e.future.cancel()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> NoisePrefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
