"""Run a function in a child process under a memory limit (``RLIMIT_AS``) and a wall-clock limit.

A hostile input that makes the code under test allocate or compute without bound must not take the test
run with it: the child dies (or raises ``MemoryError``) and the parent reports what happened.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: address space the code under test may add to what the child has mapped once Python, torch and the
#: framework are imported: far less than an unbounded spec wants
DEFAULT_AS = 3 << 29  # 1.5 GiB


@dataclass(frozen=True)
class Outcome:
    """What the child did: its return value, or the error it raised (type name, message), peak RSS, time."""

    value: Any
    error: str | None
    message: str
    peak_rss_mib: float
    seconds: float


def _mapped_bytes() -> int:
    """This process's address-space size now (``/proc/self/statm``'s first field, in pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def _peak_rss_mib() -> float:
    """This process's resident high-water mark (``VmHWM``). Not ``ru_maxrss``: Linux carries that across
    fork + exec, so a child spawned by a test run that once held gigabytes would report the run's peak."""
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib / 1024


def _child(conn: Any, limit_as: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    limit = _mapped_bytes() + limit_as  # a budget on top of the imports, whatever they map
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    t0 = time.perf_counter()
    try:
        value, err, msg = fn(*args), None, ""
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which decides
        value, err, msg = None, type(e).__name__, str(e) or traceback.format_exc(limit=2)
    peak = _peak_rss_mib()
    conn.send(Outcome(value, err, msg, peak, time.perf_counter() - t0))
    conn.close()


def run_bounded(fn: Callable[..., Any], *args: Any, timeout: float = 30.0, limit_as: int = DEFAULT_AS) -> Outcome:
    """``fn(*args)`` in a fresh child that may map ``limit_as`` bytes beyond its imports; ``TimeoutError``
    past ``timeout`` seconds (the child is killed), ``RuntimeError`` if it died without answering.

    The child is spawned, not forked: a fork copies the test run's address space (gigabytes after the suite's
    other tests, past any fixed limit) and its threads' locks (torch's pool, gRPC's), so a forked child could
    die or hang for reasons that have nothing to do with the input. ``fn`` must be importable (module level)."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(child, limit_as, fn, args))
    p.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise TimeoutError(f"{getattr(fn, '__name__', fn)} ran past {timeout} s")
        return parent.recv()
    except EOFError:
        p.join(5)
        raise RuntimeError(f"the child died without answering (exit code {p.exitcode})") from None
    finally:
        if p.is_alive():
            p.kill()
        p.join()
