"""Crash and resume: parties SIGKILLed at random points; every party rolls back to the last round all of
them checkpointed, and the run ends with the weights of an uninterrupted run."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from clicooper.net.launch import launch_local
from clicooper.runs import load_run
from clicooper.training import train

CFG = {"dataset": "digits", "model": "digits-mlp", "trainers": 2, "epochs": 3, "train_range": (0, 160),
       "provenance": False}  # batch 16: 10 steps per round


@pytest.mark.slow
def test_kill_at_three_random_points_then_resume(tmp_path: Path) -> None:
    # prepare: 3 distinct random (party, round, step) points in increasing (round, step) order
    rng = random.Random(20240607)
    points: set[tuple[int, int]] = set()
    while len(points) < 3:
        points.add((rng.randrange(3), rng.randrange(10)))
    kills = [(rng.choice(["DO", "T1", "T2"]), r, s) for r, s in sorted(points)]
    ref = train(CFG, out=tmp_path / "inproc")
    events: list[dict] = []
    # execute
    res = launch_local(CFG, tmp_path / "grpc", insecure_loopback=True, kill_at=kills, max_restarts=3,
                       timeout_s=240, on_event=events.append)
    # assert: every kill happened and cost one restart; weights equal the uninterrupted run
    assert res.kills == kills and res.restarts == 3
    starts = [e["round"] for e in events if e["event"] == "start" and e["party"] == "DO"]
    assert len(starts) == 4 and starts[0] == 0 and starts == sorted(starts)
    a, b = load_run(ref.path), load_run(tmp_path / "grpc")
    for k, mod in a.modules.items():
        for n, v in mod.state_dict().items():
            assert (v - b.modules[k].state_dict()[n]).abs().max() < 1e-5, (k, n)


@pytest.mark.slow
def test_kill_with_provenance_ledger_still_verifies(tmp_path: Path) -> None:
    """With the ledger on: after SIGKILLs at random points, every party's copy is identical and verify
    accepts it (no committed stage lost, none recorded twice — verify checks order and duplicates)."""
    from clicooper.provenance import verify_run
    from clicooper.rundir import LEDGER

    rng = random.Random(7)
    points = sorted({(rng.randrange(3), rng.randrange(10)) for _ in range(3)})
    kills = [(rng.choice(["DO", "T1", "T2"]), r, s) for r, s in points]
    cfg = CFG | {"provenance": True}
    res = launch_local(cfg, tmp_path / "grpc", insecure_loopback=True, kill_at=kills, max_restarts=len(kills),
                       timeout_s=300)
    assert res.kills == kills
    report = verify_run(tmp_path / "grpc" / LEDGER)
    assert report.ok, report.failures
    stages = [(c["round"], c["position"]) for c in map(__import__("json").loads,
              (tmp_path / "grpc" / LEDGER).read_text().splitlines()) if "position" in c]
    assert len(stages) == len(set(stages)) == 3 * 4  # 3 rounds × positions 0..3, each exactly once
