"""Issue 15: audits from the ledger — an honest trainer passes, a deviating one fails with evidence.

Digits, 240 training rows (15 steps of 16), a checkpoint every 5 steps; the audit replays every interval.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clicooper import rundir
from clicooper.cli.app import app
from clicooper.core.audit import audit_run, keys_from_identity
from clicooper.core.audit_log import round_dir
from clicooper.provenance.identity import load_identity
from clicooper.training import train

BASE = {"dataset": "digits", "model": "digits-mlp", "trainers": 2, "epochs": 1, "train_range": (0, 240),
        "audit": {"enabled": True, "interval": 5}}


def _audit(out: Path, party: str, **kw: object) -> object:
    keys = keys_from_identity(load_identity(out / "keys" / f"{party}.key"), out)
    return audit_run(out, party, keys=keys, fraction=1.0, **kw)


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("audit") / "honest"
    train(BASE | {"epochs": 2, "audit": {"enabled": True, "interval": 5, "retain_rounds": 1}}, out=out)
    return out


def test_honest_trainers_pass_their_audit(honest: Path) -> None:
    for party in ("T1", "T2"):
        rep = _audit(honest, party, stages=[(1, int(party[1]))])
        assert rep.ok, rep.to_json()
        st = rep.stages[0]
        assert st.checks["intervals_replayed"] == st.checks["intervals_total"] == 3
        assert all(i["status"] in ("exact", "tolerance") and i["max_message_error"] < 1e-6 for i in st.intervals)


def test_logs_are_committed_kept_for_the_retained_rounds_and_sized(honest: Path) -> None:
    assert not round_dir(honest, "T1", 0).exists() and round_dir(honest, "T1", 1).is_dir()  # retain_rounds = 1
    index = rundir.read_json(round_dir(honest, "T1", 1) / "index.json")
    assert index["steps"] == 15 and [c[0] for c in index["checkpoints"]] == [0, 5, 10, 15] and index["bytes"] > 0
    entries = [json.loads(x) for x in (honest / rundir.LEDGER).read_text().splitlines()]
    entry = next(e for e in entries if e["type"] == "stage" and (e["round"], e["position"]) == (1, 1))
    assert entry["metrics"]["audit"]["checkpoints"] == index["checkpoints"]
    assert not _audit(honest, "T1", stages=[(0, 1)]).ok  # round 0's log is gone: that stage cannot be audited


def test_a_tampered_log_fails_the_transcript_check(honest: Path, tmp_path: Path) -> None:
    f = round_dir(honest, "T2", 1) / "step_7.safetensors"
    backup = f.read_bytes()
    tensors, meta = rundir.load_tensors(f)
    first = min(tensors, key=int)
    tensors[first] = tensors[first] + 1e-3
    rundir.save_tensors(f, tensors, meta)
    try:
        rep = _audit(honest, "T2", stages=[(1, 2)])
    finally:
        f.write_bytes(backup)
    assert not rep.ok and any("transcript" in x for x in rep.stages[0].failures)


@pytest.mark.parametrize(("behaviour", "party", "kind"), [
    ("lazy", "T1", "Activations"), ("scale", "T1", "Gradients"), ("backdoor", "T2", "Activations"),
    ("sign-flip", "T2", "Gradients"), ("fsha", "T1", "Gradients"),
])
def test_a_deviating_trainer_fails_its_audit(tmp_path: Path, behaviour: str, party: str, kind: str) -> None:
    out = tmp_path / behaviour
    train(BASE | {"adversary": {"behaviour": behaviour, "party": party, "start_step": 6}}, out=out)
    bad = _audit(out, party)
    assert not bad.ok
    fails = [i for i in bad.stages[0].intervals if i["status"] == "fail"]
    assert [i["from"] for i in bad.stages[0].intervals if i["status"] != "fail"] == [0]  # honest before step 6
    assert fails and fails[0]["first_mismatch"]["kind"] == kind and fails[0]["first_mismatch"]["step"] >= 6
    other = "T2" if party == "T1" else "T1"
    assert _audit(out, other).ok  # the honest neighbour passes on the same run


def test_cli_audit_exit_codes(honest: Path) -> None:
    res = CliRunner().invoke(app, ["audit", str(honest), "--party", "T1", "--stages", "1:1", "--fraction", "0.5",
                                   "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output.strip().splitlines()[-1])
    assert rep["ok"] and rep["stages"][0]["checks"]["intervals_replayed"] == 2
    res = CliRunner().invoke(app, ["audit", str(honest), "--party", "T1", "--stages", "0:1"])
    assert res.exit_code == 1


@pytest.mark.slow  # a two-epoch training
def test_backdoor_success_is_measured(tmp_path: Path) -> None:
    out = tmp_path / "bd"
    cfg = {"dataset": "digits", "model": "digits-mlp", "trainers": 2, "epochs": 2,
           "adversary": {"behaviour": "backdoor", "poison_rate": 1.0, "trigger_scale": 3.0}}
    train(cfg, out=out)
    trainer = rundir.read_json(out / rundir.ATTACKS / "active.json")["trainer"]
    assert trainer["poisoned_rows"] > 100 and len(trainer["trigger"]) == 64
    last = trainer["success"][-1]
    assert last["rows"] > 300 and last["attack_success"] > last["clean_target_rate"] + 0.5
