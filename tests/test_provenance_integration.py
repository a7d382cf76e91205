"""Provenance in training: ledger + watermarks written by the loop, verified by the library and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from clicooper import rundir
from clicooper.cli import app
from clicooper.errors import InterruptedRun
from clicooper.models import zoo
from clicooper.models.partition import Plan, split_model
from clicooper.provenance import verify_run
from clicooper.provenance.delivered import load_segments
from clicooper.runs import model_file
from clicooper.training import Session, train

torch.set_num_threads(1)
runner = CliRunner()
CFG = {"dataset": "digits", "model": "digits-mlp", "trainers": 2, "epochs": 2, "provenance": True}


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prov") / "run"
    train(CFG, out=out)
    return out


def copy_run(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("checkpoints"))
    return dst


def test_run_files_and_plan(run: Path) -> None:
    for name in ("DO", "T1", "T2"):
        assert (run / "keys" / f"{name}.key").stat().st_mode & 0o777 == 0o600
    plan = rundir.read_json(run / rundir.PLAN)
    wm = plan["extra"]["watermark"]
    assert sorted(wm) == ["0", "1", "2", "3"]
    assert wm["1"]["enabled"] and not wm["3"]["enabled"]  # 650-weight tail: too small for a mark


def test_verify_accepts_trained_run(run: Path) -> None:
    segs = load_segments(run)
    report = verify_run(run / rundir.LEDGER, segs)
    assert report.ok, report.failures
    assert report.closed and report.rounds_completed == 2
    assert all(c.stages_verified == c.stages_committed > 0 for c in report.credit.values())
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    res = cli("verify", run, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["ok"] and out["failures"] == []
    assert before == {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}  # verify modifies nothing


def test_final_round_ber_zero_and_accuracy(run: Path) -> None:
    m = rundir.read_json(run / rundir.METRICS)
    last = m["epochs"][-1]["provenance"]
    for pos, rec in last.items():
        assert rec["ber"] in (0.0, None), (pos, rec)
        assert rec["bits"] > 0 or pos == "3"
    assert m["final_test_acc"] >= 0.85


def _verify_fails(run: Path, check: str) -> None:
    res = cli("verify", run, "--json")
    assert res.exit_code != 0
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert not out["ok"]
    assert check in {f["check"] for f in out["failures"]}, out["failures"]


def test_tampered_entry_detected(run: Path, tmp_path: Path) -> None:
    r = copy_run(run, tmp_path)
    lines = (r / rundir.LEDGER).read_bytes().split(b"\n")
    line = bytearray(lines[3])
    i = line.index(b'"end":"') + 8
    line[i] = ord("0") if line[i] != ord("0") else ord("1")  # one hex digit of an end commitment
    lines[3] = bytes(line)
    (r / rundir.LEDGER).write_bytes(b"\n".join(lines))
    _verify_fails(r, "entry-signature")


def test_deleted_closing_detected(run: Path, tmp_path: Path) -> None:
    r = copy_run(run, tmp_path)
    lines = (r / rundir.LEDGER).read_bytes().rstrip(b"\n").split(b"\n")
    (r / rundir.LEDGER).write_bytes(b"\n".join(lines[:-1]) + b"\n")
    _verify_fails(r, "closing-missing")


def test_swapped_segment_detected(run: Path, tmp_path: Path) -> None:
    r = copy_run(run, tmp_path)
    t1, t2 = r / "model" / model_file("T1"), r / "model" / model_file("T2")
    a, b = t1.read_bytes(), t2.read_bytes()
    t1.write_bytes(b)
    t2.write_bytes(a)
    res = cli("verify", r)
    assert res.exit_code != 0
    assert "segment-commitment" in res.output


def test_reveal_and_prove(run: Path, tmp_path: Path) -> None:
    rev = tmp_path / "t1.reveal.json"
    res = cli("reveal", run, "--party", "T1", "--stages", "all", "--out", rev)
    assert res.exit_code == 0, res.output
    res = cli("verify", run, "--reveal", rev, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert [r["ber"] for r in out["reveals"]] == [0.0, 0.0]
    res = cli("prove", run, "--party", "T1", "--model", run / "model", "--json")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout.strip().splitlines()[-1])
    assert rep["verdict"] and rep["wrong_bits"] == 0 and rep["n_bits"] == 256 and rep["tau"] == 56
    # a freshly initialised model of the same architecture is not T1's
    plan = Plan.from_dict(rundir.read_json(run / rundir.PLAN))
    model = zoo.build("digits-mlp", tuple(plan.input_shape), 10, seed=12345)
    fresh = tmp_path / "fresh"
    for pp in plan.parties:
        rundir.save_tensors(fresh / model_file(pp.party), split_model(model, plan)[pp.party].state_dict())
    res = cli("prove", run, "--party", "T1", "--model", fresh, "--json")
    assert res.exit_code != 0
    rep = json.loads(res.stdout.strip().splitlines()[-1])
    assert not rep["verdict"] and rep["wrong_bits"] > rep["tau"]


def test_keygen(tmp_path: Path) -> None:
    res = cli("keygen", "--out", tmp_path / "p.key", "--json")
    assert res.exit_code == 0
    assert len(json.loads(res.stdout.strip().splitlines()[-1])["party_id"]) == 32
    assert (tmp_path / "p.key").stat().st_mode & 0o777 == 0o600
    res = cli("keygen", "--out", tmp_path / "p.key")  # never overwritten
    assert res.exit_code != 0 and "already exists" in res.output


def test_interrupted_run_resumes_with_valid_ledger(tmp_path: Path) -> None:
    out = tmp_path / "run"

    def stop(epoch: int, step: int, steps: int) -> None:
        if epoch == 2 and step == 3:
            raise KeyboardInterrupt

    with pytest.raises(InterruptedRun):
        train(CFG, out=out, progress=stop)
    train(resume=out)
    report = verify_run(out / rundir.LEDGER, load_segments(out))
    assert report.ok, report.failures


def test_crash_between_ledger_commit_and_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Round 1's entries are committed, its checkpoint is not: the redone round appends nothing new."""
    out = tmp_path / "run"
    original = Session.save_checkpoint

    def crash(self: Session, r: int) -> None:
        if r == 1:
            raise KeyboardInterrupt
        original(self, r)

    monkeypatch.setattr(Session, "save_checkpoint", crash)
    with pytest.raises(InterruptedRun):
        train(CFG, out=out)
    committed = (out / rundir.LEDGER).read_bytes()
    assert committed.count(b"\n") == 1 + 2 * 4  # genesis + two full rounds, no closing
    monkeypatch.setattr(Session, "save_checkpoint", original)
    train(resume=out)
    final = (out / rundir.LEDGER).read_bytes()
    assert final.startswith(committed) and final.count(b"\n") == committed.count(b"\n") + 1  # + closing
    m = rundir.read_json(out / rundir.METRICS)
    assert all(not rec["committed"] for rec in m["epochs"][-1]["provenance"].values())  # identical redo
    report = verify_run(out / rundir.LEDGER, load_segments(out))
    assert report.ok, report.failures
