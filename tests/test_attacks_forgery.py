"""Ledger forgery attack (issue 6): every tampered copy of an honest trained run is rejected by verify,
with the failing check named; the honest run is never modified."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from clicooper.attacks import get, names
from clicooper.attacks.forgery import ALL_CASES, ForgeryAttack
from clicooper.errors import AttackError
from clicooper.training import train

torch.set_num_threads(1)
CFG = {"dataset": "digits", "model": "digits-mlp", "trainers": 2, "epochs": 2, "provenance": True}

EXPECTED = {  # case → a check that must be among the failures
    "forged-signature": "entry-signature", "reordered": "order", "substituted": "entry-signature",
    "substituted-resigned": "prev-chain", "skipped": "order", "replayed": "duplicate-stage",
    "replayed-other-run": "run-id", "truncated-closing": "closing-missing",
    "truncated-round": "closing-missing", "swapped-segments": "segment-commitment",
    "altered-segment": "segment-commitment", "claims-another-stage": "position-owner",
    "do-forges-genesis-signature": "genesis-signature", "do-made-up-trainer": "trusted-key",
    "non-utf8-line": "parse", "half-written-closing": "closing-missing",
}


def _digest(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("forgery") / "run"
    train(CFG, out=out)
    return out


@pytest.fixture(scope="module")
def result(run: Path) -> tuple[dict, dict[str, str], dict[str, str]]:
    before = _digest(run)
    res = get("forgery")().run(run).to_json()
    return res, before, _digest(run)


def test_registered_and_validated() -> None:
    assert "forgery" in names() and get("forgery") is ForgeryAttack
    with pytest.raises(AttackError):
        ForgeryAttack(cases=["nope"])


def test_honest_run_accepted_and_never_modified(result: tuple) -> None:
    res, before, after = result
    assert res["info"]["honest_ok"] and res["info"]["honest_ledger_unchanged"]
    assert before == after  # every file of the honest run is byte-identical


@pytest.mark.parametrize("case", ALL_CASES)
def test_each_case_rejected(result: tuple, case: str) -> None:
    res = result[0]
    row = next(r for r in res["info"]["cases"] if r["case"] == case)
    assert row["rejected"], row
    assert EXPECTED[case] in row["checks"], row["checks"]
    assert row["cli_exit"] == 1, row  # the exit status `clicooper verify` gives on the tampered copy: 1, no traceback


def test_share_and_caveats(result: tuple) -> None:
    res = result[0]
    assert res["levels"]["verify"]["score"] == 1.0
    assert res["info"]["rejected"] == res["info"]["total"] == len(ALL_CASES)
    made_up = next(r for r in res["info"]["cases"] if r["case"] == "do-made-up-trainer")
    assert made_up["rejected_without_trusted_keys"] is False  # only trusted keys catch it
    benign = next(r for r in res["info"]["cases"] if r["case"] == "benign-torn-after-closing")
    assert not benign["rejected"] and any("torn" in n for n in benign["notes"])
