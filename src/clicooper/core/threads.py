"""How a run shares the CPU cores between torch's intra-op threads and its background workers.

Two workers run beside the step on their own thread: the transcript hash (with provenance,
:mod:`clicooper.parties.base`) and the keyed-noise prefetcher (with activation noise, when a core is spare:
:func:`clicooper.core.privacy.spare_core`). With torch's default of one intra-op thread per core they
compete with the step for the same cores. :func:`choose_threads` decides the split of one invocation: the
``threads`` the user gave, else torch's own default, or — under :data:`LEAVE_A_CORE_FOR_WORKERS` — one core
fewer for torch while a worker runs. The chosen split goes into ``metrics.json`` (``"threads"``), so a
throughput figure says what it was measured with.

The thread count can change the order of float reductions, so a fixed-seed run is bit-identical to another
with the same split; the default policy below keeps torch's default, as every earlier run had.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch

from clicooper.config import RunConfig
from clicooper.errors import ConfigError

#: the default when no ``threads`` is given: False keeps torch's own intra-op thread count; True leaves one
#: core to the background workers (torch on cores − 1, never below 1) while one runs and torch would take
#: every core. Measured on an idle machine before it is turned on (benchmarks: ``make bench``).
LEAVE_A_CORE_FOR_WORKERS = False


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask on Linux, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def background_workers(config: RunConfig) -> list[str]:
    """The background workers a run of ``config`` may start: ``transcript-hash`` (provenance) and
    ``noise-prefetch`` (keyed noise with σ unset or > 0; it runs only where a core is spare)."""
    workers = []
    if config.provenance:
        workers.append("transcript-hash")
    if config.protect_activations and config.dp.sigma != 0:
        workers.append("noise-prefetch")
    return workers


@dataclass(frozen=True)
class ThreadSplit:
    """One invocation's split: torch's intra-op threads, the cores it may use, the workers beside it, and
    why torch has that many (``given``, ``torch default``, ``one core left for the workers``)."""

    torch: int
    cores: int
    workers: list[str]
    chosen: str

    def record(self) -> dict[str, Any]:
        """Its ``metrics.json`` form."""
        return asdict(self)


def check_threads(threads: int | None) -> None:
    """Refuse a ``threads`` that is not a whole number ≥ 1 (``None``: not given) with one clear line."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a whole number ≥ 1 (torch's intra-op threads), got {threads!r}")


def choose_threads(config: RunConfig, threads: int | None = None, *, cores: int | None = None,
                   torch_default: int | None = None) -> ThreadSplit:
    """The split of a run of ``config``: ``threads`` when given (≥ 1), else torch's default, or one core
    fewer while a background worker runs under :data:`LEAVE_A_CORE_FOR_WORKERS`."""
    cores = cpu_cores() if cores is None else cores
    default = torch.get_num_threads() if torch_default is None else torch_default
    workers = background_workers(config)
    if threads is not None:
        check_threads(threads)
        return ThreadSplit(threads, cores, workers, "given")
    if LEAVE_A_CORE_FOR_WORKERS and workers and default >= cores > 1:
        return ThreadSplit(cores - 1, cores, workers, "one core left for the workers")
    return ThreadSplit(default, cores, workers, "torch default")


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then give the caller's count back (a library call
    must not change the process it runs in for good)."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
