"""Issue 15: malicious trainers, the DO's live detection, a clean stop on detection and its resume.

Digits runs with the thorough detection settings (BASE) (1,438 training rows, batch 16: 90 steps an epoch). Each
behaviour is caught either live (the run stops with a "detection" record) or by the audit
(tests/test_audit.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from clicooper import rundir
from clicooper.cli.app import app
from clicooper.config import make_config
from clicooper.errors import ConfigError
from clicooper.parties.guard.scrutinizer import label_gap
from clicooper.parties.guard.splitguard import SplitGuard, _Running, sg_score
from clicooper.provenance.verify import verify_run
from clicooper.training import train

# SplitGuard's warm-up at 60 of digits' 90 steps: on batches of 16 its early honest scores are noisy (an
# honest digits run with the default 20 raised a false alarm; docs/malicious.md). The gradient test and the
# validation run at the thorough settings (every 2nd step on 64 rows; every 10 steps on 256 rows): the
# defaults' (every 8th; every 40) give too few decisions in 90 steps
BASE = {"dataset": "digits", "model": "digits-mlp", "trainers": 2, "epochs": 1,
        "detection": {"enabled": True, "splitguard": {"warmup_steps": 60}, "scrutinizer": {"every": 2, "rows": 64},
                      "validation": {"every": 10, "rows": 256}}}


@pytest.fixture(autouse=True)
def _fixed_guard_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The DO's fake-batch key (RUN/secrets/guard_key) fixed, so which steps are fake is the same each run."""
    monkeypatch.setattr("clicooper.core.security.os.urandom", lambda n: bytes((7 * i + 3) % 256 for i in range(n)))


def _run(tmp_path: Path, name: str, **extra: object) -> tuple[Path, dict]:
    out = tmp_path / name
    train(BASE | extra, out=out)
    return out, rundir.read_json(out / rundir.METRICS)


def test_adversary_is_never_a_default_and_is_checked() -> None:
    c = make_config()
    assert c.adversary is None and not c.detection.enabled and not c.audit.enabled
    with pytest.raises(ConfigError, match="FSHA is run by T1"):
        make_config(adversary={"behaviour": "fsha", "party": "T2"})
    with pytest.raises(ConfigError, match="not a trainer"):
        make_config(trainers=2, adversary={"behaviour": "lazy", "party": "T3"})
    assert make_config(trainers=3, adversary={"behaviour": "backdoor"}).adversary.party_for(3) == "T3"


def test_sg_score_tells_label_dependent_gradients_from_label_free_ones() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(50, generator=g, dtype=torch.float64)

    def running(vectors: list[torch.Tensor]) -> _Running:
        r = _Running()
        for v in vectors:
            r.add(v)
        return r

    regular = [base + 0.05 * torch.randn(50, generator=g, dtype=torch.float64) for _ in range(10)]
    r1, r2 = running(regular[::2]), running(regular[1::2])
    honest_fakes = running([3 * torch.randn(50, generator=g, dtype=torch.float64) for _ in range(4)])
    hijacked_fakes = running([base + 0.05 * torch.randn(50, generator=g, dtype=torch.float64) for _ in range(4)])
    assert sg_score(honest_fakes, r1, r2, mult=5, exp=2) > 0.9
    assert sg_score(hijacked_fakes, r1, r2, mult=5, exp=2) < 0.5


def test_fake_batches_are_keyed_and_relabel_every_row() -> None:
    cfg = make_config(detection={"enabled": True}).detection.splitguard
    a, b = SplitGuard(cfg, 10, b"k" * 32), SplitGuard(cfg, 10, b"k" * 32)
    a.steps_seen = b.steps_seen = 100
    assert [a.is_fake(0, s) for s in range(200)] == [b.is_fake(0, s) for s in range(200)]
    y = torch.arange(10)
    assert bool((a.fake_labels(0, 3, 0, y) != y).all())


def test_label_gap_is_positive_for_label_aligned_gradients_only() -> None:
    g = torch.Generator().manual_seed(1)
    y = torch.arange(32) % 4
    centres = torch.randn(4, 20, generator=g)
    aligned = centres[y] + 0.3 * torch.randn(32, 20, generator=g)
    assert label_gap(aligned, y) > 0.3
    assert abs(label_gap(torch.randn(32, 20, generator=g), y)) < 0.1


def test_honest_run_raises_no_alarm(tmp_path: Path) -> None:
    out, m = _run(tmp_path, "honest")
    assert "stopped" not in m
    det = m["epochs"][-1]["detection"]
    assert det["alarm"] is None and det["fake_steps"] > 0 and det["scrutinizer"]["tests"] > 0
    assert len(det["validation"]) >= 8


@pytest.mark.parametrize("behaviour", ["fsha", "lazy"])
def test_label_free_gradients_are_detected_live(tmp_path: Path, behaviour: str) -> None:
    out, m = _run(tmp_path, behaviour, adversary={"behaviour": behaviour})
    st = m["stopped"]
    assert st["reason"] == "detection" and st["completed_epochs"] == 0
    assert st["detector"] in ("splitguard", "scrutinizer") and st["suspects"] == ["T1"]
    assert rundir.read_json(out / rundir.STATE)["completed_rounds"] == 0
    active = rundir.read_json(out / rundir.ATTACKS / "active.json")
    assert active["trainer"]["behaviour"] == behaviour and active["trainer"]["deviated_steps"] > 0


def test_sign_flip_is_caught_by_validation(tmp_path: Path) -> None:
    cfg = {"detection": BASE["detection"] | {"splitguard": {"enabled": False}, "scrutinizer": {"enabled": False}},
           "adversary": {"behaviour": "sign-flip"}}
    _, m = _run(tmp_path, "flip", **cfg)
    assert m["stopped"]["detector"] == "validation" and m["stopped"]["suspects"] == ["T1", "T2"]


@pytest.mark.slow  # three (two-epoch) trainings
def test_detection_stops_cleanly_and_resumes(tmp_path: Path) -> None:
    """An attack from round 1: round 0 is saved, the alarm stops round 1, resuming flags it again (training
    is deterministic; the checks' warm-up starts again, so maybe at another step), and a resume that
    dismisses the alarm completes the run."""
    extra = {"epochs": 2, "adversary": {"behaviour": "lazy", "start_round": 1}}
    out, m = _run(tmp_path, "stop", **extra)
    assert m["stopped"]["reason"] == "detection" and m["stopped"]["round"] == 1
    assert rundir.read_json(out / rundir.STATE)["completed_rounds"] == 1 and len(m["epochs"]) == 1
    report = verify_run(out / rundir.LEDGER)  # the DO's signed accusation, shown by verify
    assert [a["detector"] for a in report.accusations] == [m["stopped"]["detector"]]
    assert report.accusations[0]["suspects"][0]["name"] == "T1" and m["stopped"]["ledger_entry"]
    assert report.checks_failed() == {"closing-missing"}  # stopped mid-run: saved, not closed
    train(resume=out)
    again = rundir.read_json(out / rundir.METRICS)["stopped"]
    # the guard's key (fake-batch schedule) is drawn per run from the OS CSPRNG and the warm-up starts again on
    # resume, so another check may be the first to fire: what must hold is that round 1 is stopped again, T1 named
    assert again["reason"] == "detection" and again["round"] == 1 and "T1" in again["suspects"]
    run = train(resume=out, dismiss_detection=True)
    done = rundir.read_json(out / rundir.METRICS)
    assert "stopped" not in done and len(done["epochs"]) == 2
    assert rundir.read_json(out / rundir.STATE)["completed_rounds"] == 2 and run.segments
    res = CliRunner().invoke(app, ["verify", str(out), "--json"])
    final = json.loads(res.output.strip().splitlines()[-1])
    assert res.exit_code == 0 and final["ok"] and len(final["accusations"]) == 2  # both stops, one per invocation
