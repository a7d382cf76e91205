"""Sweeps as Ray tasks (clicooper.sweep): the same seeds give byte-identical results on Ray and sequentially, and
the sequential path needs no Ray."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from clicooper import sweep
from clicooper.errors import ConfigError

#: Two points (undefended, NoPeek α 1: neither draws a secret, so the seed decides everything; a defence with
#: a label key or keyed noise draws it from the OS per run, by design, and no two runs of it are equal)
POINTS = ({"defense": "none"}, {"defense": "none", "nopeek": 1.0})
SEEDS = (0, 1)


def digits_point_seed(task: dict[str, Any]) -> dict[str, Any]:
    """One point at one seed: a short digits split run, and what the seed determines of it (accuracies,
    losses, every saved tensor's bytes; not the timings, nor safetensors' header order)."""
    import torch
    from safetensors import safe_open

    from clicooper.training import train

    out = Path(task["runs"]) / f"p{task['point']}-s{task['seed']}"
    train({"dataset": "digits", "model": "digits-mlp", "trainers": 2, "epochs": 1, "seed": task["seed"],
           "train_range": (0, 300), "provenance": False, **POINTS[task["point"]]}, out=out)
    metrics = json.loads((out / "metrics.json").read_text())
    tensors = {}
    for f in sorted(out.rglob("*.safetensors")):
        h = hashlib.sha256()
        with safe_open(str(f), "pt") as st:
            for k in sorted(st.keys()):
                h.update(k.encode() + st.get_tensor(k).reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        tensors[f.relative_to(out).as_posix()] = h.hexdigest()
    epochs = [{k: v for k, v in e.items() if k not in ("seconds", "samples_per_s")} for e in metrics["epochs"]]
    return {"point": task["point"], "seed": task["seed"], "threads": torch.get_num_threads(),
            "final_test_acc": metrics["final_test_acc"], "epochs": epochs, "tensors": tensors}


def _tasks(runs: Path) -> list[dict[str, Any]]:
    return [{"runs": str(runs), "point": p, "seed": s} for p in range(len(POINTS)) for s in SEEDS]


@pytest.fixture(scope="module")
def local_ray() -> Any:
    """A local Ray instance of 2 CPUs for this module (about 10 s to start)."""
    ray = pytest.importorskip("ray", reason="the cluster extra (ray) is not installed")
    # the workers import this module's task by value: tests/ is no package on their path
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_sweep_is_byte_identical_to_the_sequential_sweep(tmp_path: Path, local_ray: Any) -> None:
    # prepare: 2 points × 2 seeds, each its own run directory per backend
    seq_tasks, ray_tasks = _tasks(tmp_path / "seq"), _tasks(tmp_path / "ray")
    # execute
    seq = sweep.run_tasks(digits_point_seed, seq_tasks, backend="sequential", threads_per_task=1)
    par = sweep.run_tasks(digits_point_seed, ray_tasks, backend="ray", threads_per_task=1)
    # assert: task order kept, every task on its own thread count, the same bytes; and the sweep means something
    assert [(r["point"], r["seed"]) for r in par] == [(t["point"], t["seed"]) for t in ray_tasks]
    assert {r["threads"] for r in seq + par} == {1}
    assert json.dumps(par, sort_keys=True).encode() == json.dumps(seq, sort_keys=True).encode()
    assert len({json.dumps(r["tensors"], sort_keys=True) for r in seq}) == len(seq)  # points and seeds differ
    assert (tmp_path / "ray" / "p1-s1" / "metrics.json").is_file()  # the Ray tasks wrote their own runs


@pytest.mark.slow
def test_a_failing_ray_task_fails_the_sweep_with_its_own_error(local_ray: Any) -> None:
    # prepare: a task that raises
    bad = [{"point": 0}]
    # execute / assert: the task's error comes back (Ray's wrapper is an instance of the original class)
    with pytest.raises(KeyError, match="seed"):
        sweep.run_tasks(_missing_key, bad, backend="ray")


def _missing_key(task: dict[str, Any]) -> None:
    raise KeyError(f"no {'seed'!r} in {task}")


def test_the_sequential_sweep_runs_without_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    # prepare: ray unimportable
    monkeypatch.setitem(sys.modules, "ray", None)
    # execute
    got = sweep.run_tasks(_threads_and_square, [1, 2, 3], threads_per_task=2)
    # assert: in order, each on its own thread count
    assert got == [(1, 2), (4, 2), (9, 2)]


def _threads_and_square(x: int) -> tuple[int, int]:
    import torch

    return x * x, torch.get_num_threads()


def test_the_ray_backend_without_ray_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # prepare
    monkeypatch.setitem(sys.modules, "ray", None)
    # execute / assert
    with pytest.raises(ConfigError, match=r"pip install 'clicooper\[cluster\]'"):
        sweep.run_tasks(_threads_and_square, [1], backend="ray")


@pytest.mark.parametrize(("kw", "says"), [
    ({"backend": "dask"}, "unknown sweep backend"),
    ({"backend": "sequential", "threads_per_task": 0}, "≥ 1"),
    ({"backend": "sequential", "address": "ray://head:10001"}, "needs the ray backend"),
])
def test_bad_sweep_options_are_refused(kw: dict[str, Any], says: str) -> None:
    # execute / assert: nothing runs
    ran: list[int] = []
    with pytest.raises(ConfigError, match=says):
        sweep.run_tasks(ran.append, [1], **kw)
    assert ran == []


def test_the_options_exit_2_with_one_line_before_any_work(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # prepare
    monkeypatch.setitem(sys.modules, "ray", None)
    ap = argparse.ArgumentParser(prog="sweep")
    sweep.add_options(ap)
    # execute
    with pytest.raises(SystemExit) as e:
        sweep.options(ap, ap.parse_args(["--backend", "ray"]))
    # assert
    assert e.value.code == 2
    assert "install the cluster extra: pip install 'clicooper[cluster]'" in capsys.readouterr().err
    assert sweep.options(ap, ap.parse_args(["--threads-per-task", "3"])) == {
        "backend": "sequential", "address": None, "threads_per_task": 3}


def test_a_task_of_a_script_run_as_a_module_goes_to_ray_by_its_module_name(monkeypatch: pytest.MonkeyPatch) -> None:
    # prepare: `python -m clicooper.sweep` would define its functions in __main__, which Ray's workers lack
    main = type(sys)("__main__")
    main.__spec__ = type("Spec", (), {"name": "clicooper.sweep"})()
    monkeypatch.setitem(sys.modules, "__main__", main)

    def check_backend() -> None: ...

    check_backend.__module__ = "__main__"
    check_backend.__qualname__ = "check_backend"
    # execute
    named = sweep._by_name(check_backend)
    # assert: the module's own function (pickled by name); one from an importable module is left alone
    assert named is sweep.check_backend
    assert sweep._by_name(_threads_and_square) is _threads_and_square


def test_the_frontier_refuses_a_missing_ray_and_seeds_in_one_folder_before_any_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from experiments.research import frontier

    # prepare
    monkeypatch.setitem(sys.modules, "ray", None)
    cases = [(["--backend", "ray"], "pip install 'clicooper[cluster]'"),
             (["--seeds", "0,1"], "put {seed} in --runs and --results"),
             (["--backend", "sequential", "--address", "head:6379"], "needs the ray backend")]
    for extra, says in cases:
        # execute
        with pytest.raises(SystemExit) as e:
            frontier.main(["--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "res"), *extra])
        # assert: status 2, one line, nothing made
        err = capsys.readouterr().err
        assert e.value.code == 2 and says in err and err.count("\n") == 1, err
        assert not (tmp_path / "runs").exists()


def test_the_frontier_sweeps_every_point_at_every_seed_into_its_seeds_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments.research import frontier

    # prepare: the sweep's tasks recorded instead of run
    seen: dict[str, Any] = {}

    def run_tasks(fn: Any, tasks: list[Any], **kw: Any) -> list[Any]:
        seen.update(fn=fn, tasks=tasks, kw=kw)
        return []

    monkeypatch.setattr(frontier.sweep, "run_tasks", run_tasks)
    runs, res = tmp_path / "runs" / "s{seed}", tmp_path / "res" / "s{seed}"
    # execute
    frontier.main(["--runs", str(runs), "--results", str(res), "--seeds", "0,2", "--quick", "--threads", "3"])
    # assert: seed by seed, each point once, each seed's own folder; the backend options passed on
    got = [(s.tag, b.seed, str(r)) for s, b, r in seen["tasks"]]
    tags = [g.tag for g in frontier.default_grid(quick=True)]
    assert got == [(t, seed, str(tmp_path / "runs" / f"s{seed}")) for seed in (0, 2) for t in tags]
    assert seen["fn"] is frontier.measure_task
    assert seen["kw"] == {"backend": "sequential", "address": None, "threads_per_task": 3}
    assert (tmp_path / "res" / "s2" / "frontier.md").is_file()
