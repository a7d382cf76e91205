"""Run a sweep's independent tasks (one point at one seed each) one after another, or as Ray tasks.

A frontier point is hours of training and attacks, and a sweep is points × seeds, all independent. The
sequential backend runs them in this process, in order. The ``ray`` backend submits each as one Ray task
(https://docs.ray.io, ``ray.remote``) that reserves ``threads_per_task`` CPUs and runs torch on that many
threads, so a laptop, a workstation and a cluster run the same sweep. Both backends give the results in
task order, and each task runs with the same torch thread count on either backend, so the same seeds give
byte-identical results (tests/test_sweep_ray.py).

Ray is optional (``pip install 'clicooper[cluster]'``) and imported only when the ``ray`` backend is asked
for. Without ``address`` Ray starts a local instance on this machine (or joins the one this process already
started); with ``address`` (``ray://HOST:10001`` or ``HOST:6379``) it joins that cluster.

On a cluster:

- every node needs the same CliCooper install, and the sweep's own code where the driver imports it from
  (for a checkout, the same path on every node), and the datasets the tasks read;
- the sweeps write their run directories where the task runs, so their ``--runs`` folder must be on a file
  system every node mounts at the same path;
- Ray moves a task's function, arguments and result between its processes with (cloud)pickle, so run it
  only on machines and networks you trust, as Ray's own security guide says
  (https://docs.ray.io/en/latest/ray-security/index.html). Nothing a party of a split-learning run sends
  goes through it: the tasks are the experimenter's own training and attack runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from clicooper.errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")

#: The backends :func:`run_tasks` knows.
BACKENDS = ("sequential", "ray")
#: The one line shown when the ``ray`` backend is asked for and Ray is not installed.
INSTALL_HINT = "the ray backend needs Ray: install the cluster extra: pip install 'clicooper[cluster]'"


def check_backend(backend: str, *, address: str | None = None, threads_per_task: int = 1) -> None:
    """Refuse, before any work starts, what :func:`run_tasks` would refuse: an unknown backend, a thread count
    below 1, an address with the sequential backend, the ``ray`` backend without Ray installed
    (:class:`~clicooper.errors.ConfigError`, one line that says what to do)."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown sweep backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if isinstance(threads_per_task, bool) or not isinstance(threads_per_task, int) or threads_per_task < 1:
        raise ConfigError(f"threads per task must be a whole number ≥ 1, got {threads_per_task!r}")
    if address is not None and backend != "ray":
        raise ConfigError("a cluster address needs the ray backend (--backend ray); the sequential backend "
                          "runs every task in this process")
    if backend == "ray":
        _import_ray()


def _in_threads(fn: Callable[[T], R], task: T, threads: int) -> R:
    """``fn(task)`` with torch on ``threads`` intra-op threads (restored afterwards: a Ray worker process
    and the sequential driver both run further tasks)."""
    import torch  # here, not at module level: the module stays cheap to import for the CLI's option parsing

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn(task)
    finally:
        torch.set_num_threads(before)


def _remote_task(fn: Callable[[T], R], task: T, threads: int, cwd: str) -> R:
    """One Ray task: the driver's working directory where this node has it (relative run paths then mean
    the same on a local instance and on a cluster with a shared file system), then :func:`_in_threads`."""
    if os.path.isdir(cwd):
        os.chdir(cwd)
    return _in_threads(fn, task, threads)


def _by_name(fn: Callable[[T], R]) -> Callable[[T], R]:
    """``fn`` as its workers can import it. A sweep run as ``python -m pkg.mod`` defines its task in
    ``__main__``, which a Ray worker does not have (cloudpickle would send the function by value and fail on
    the module's other names): the same function of ``pkg.mod`` instead, sent by name."""
    if getattr(fn, "__module__", None) != "__main__":
        return fn
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is None or not spec.name or spec.name == "__main__":
        return fn  # a plain script (python path/to/file.py): by value, as Ray does
    return getattr(importlib.import_module(spec.name), fn.__qualname__, fn)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:  # also sys.modules["ray"] = None
        raise ConfigError(INSTALL_HINT) from e
    return ray


def run_tasks(fn: Callable[[T], R], tasks: Sequence[T], *, backend: str = "sequential", address: str | None = None,
              threads_per_task: int = 1, progress: Callable[[str], None] | None = None) -> list[R]:
    """``[fn(t) for t in tasks]``, each on ``threads_per_task`` torch threads, in this process
    (``backend="sequential"``) or as one Ray task each (``backend="ray"``, a local instance unless ``address``
    names a cluster). Returns the results in task order.

    ``fn`` must be importable by name (a module-level function) and, with Ray, its tasks and results must
    survive Ray's serialisation. A failed task fails the sweep after the tasks already running have been
    cancelled; each task should cache its own result so that a second call resumes.

    Raises :class:`~clicooper.errors.ConfigError` as :func:`check_backend` does.
    """
    check_backend(backend, address=address, threads_per_task=threads_per_task)
    say = progress or (lambda _m: None)
    if backend == "sequential":
        out = []
        for i, t in enumerate(tasks):
            out.append(_in_threads(fn, t, threads_per_task))
            say(f"task {i + 1}/{len(tasks)} done")
        return out
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, **({} if address else {"include_dashboard": False}))
    elif address is not None:
        raise ConfigError(f"this process is already connected to a Ray instance; it cannot also join {address} "
                          "(leave the address out to use that instance)")
    try:
        remote = ray.remote(num_cpus=threads_per_task)(_remote_task)
        named = _by_name(fn)
        refs = [remote.remote(named, t, threads_per_task, os.getcwd()) for t in tasks]
        index = {r: i for i, r in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                results[index[done[0]]] = ray.get(done[0])
                say(f"task {index[done[0]] + 1}/{len(tasks)} done ({len(refs) - len(pending)}/{len(tasks)})")
        except BaseException:
            for r in pending:
                ray.cancel(r)
            raise
        return results
    finally:
        if started:
            ray.shutdown()


def add_options(parser: argparse.ArgumentParser, *, threads_default: int = 1,
                threads_flags: tuple[str, ...] = ("--threads-per-task",)) -> None:
    """The sweep scripts' ``--backend``, ``--address`` and ``--threads-per-task`` options (``threads_flags``:
    the names of the last, for a script whose ``--threads`` already meant torch's thread count)."""
    parser.add_argument("--backend", choices=BACKENDS, default="sequential",
                        help="sequential: one task after another in this process; ray: each point-seed as a Ray "
                        "task (needs pip install 'clicooper[cluster]'), on this machine unless --address")
    parser.add_argument("--address", default=None,
                        help="the Ray cluster to join (ray://HOST:10001 or HOST:6379; --backend ray only; the run "
                        "folder must be on a file system every node shares)")
    parser.add_argument(*threads_flags, dest="threads_per_task", type=int, default=threads_default, metavar="N",
                        help=f"torch threads of each point-seed task, and the CPUs Ray reserves for it "
                        f"(default {threads_default})")


def options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`run_tasks`'s keywords from :func:`add_options`'s options, checked now (a bad combination or a
    missing Ray exits with one line and status 2, before any work starts)."""
    kw = {"backend": args.backend, "address": args.address, "threads_per_task": args.threads_per_task}
    try:
        check_backend(args.backend, address=args.address, threads_per_task=args.threads_per_task)
    except ConfigError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    return kw
