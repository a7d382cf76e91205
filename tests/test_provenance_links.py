"""The two holes of issue 16 on real training runs: transcripts dropped and re-signed by the parties
involved, and config.json edited after the run; and the links an honest run legitimately lacks (open tail:
no T_K → DO transcript; U-shape K = 1: the DO's two links to T1 are one party link)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from clicooper import rundir
from clicooper.provenance.delivered import verify_delivered
from clicooper.provenance.entries import Closing, StageEntry, entry_bytes, entry_hash, sign_multi
from clicooper.provenance.identity import load_identity
from clicooper.provenance.ledger import read_ledger
from clicooper.training import train

pytestmark = pytest.mark.slow
torch.set_num_threads(1)
TINY = {"dataset": "digits", "model": "digits-mlp", "epochs": 1, "train_range": (0, 160)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("links")
    out = {"open3": root / "open3", "u1": root / "u1"}
    train({**TINY, "trainers": 3, "topology": "open-tail"}, out=out["open3"])
    train({**TINY, "trainers": 1}, out=out["u1"])
    return out


def _stages(run: Path) -> list[StageEntry]:
    return [e for e in read_ledger(run / rundir.LEDGER)[0] if isinstance(e, StageEntry)]


def test_honest_runs_with_legitimately_absent_links_verify(runs: dict[str, Path]) -> None:
    for run in runs.values():
        report, _ = verify_delivered(run)
        assert report.ok, [str(f) for f in report.failures]
    do, *_, t3 = _stages(runs["open3"])
    assert "T3:sent" in do.transcripts and "T3:recv" not in do.transcripts  # labels go out, loss reports
    assert "DO:recv" in t3.transcripts and "DO:sent" not in t3.transcripts  # are control messages
    head, t1, tail = _stages(runs["u1"])
    assert set(head.transcripts) == set(tail.transcripts) == {"T1:sent", "T1:recv"}


def _resign(run: Path, edit: dict[int, dict[str, str]]) -> None:
    """Give stage entries (by ledger index) new transcripts, re-signed by their own parties (every key is in
    RUN/keys in a single-process run), and rechain the rest of the ledger as a consistent forger would."""
    entries, _ = read_ledger(run / rundir.LEDGER)
    keys = {i.party_id: i for i in (load_identity(f) for f in sorted((run / rundir.KEYS).glob("*.key")))}
    for i in range(1, len(entries)):
        e, prev = entries[i], entry_hash(entries[i - 1])
        if isinstance(e, StageEntry):
            tr = edit.get(i, e.transcripts)
            entries[i] = dataclasses.replace(e, prev=prev, transcripts=tr).signed(keys[e.party_id])
        elif isinstance(e, Closing):
            c = dataclasses.replace(e, prev=prev, signatures=())
            entries[i] = c.with_signatures([sign_multi(k, c) for k in keys.values()])
    (run / rundir.LEDGER).write_bytes(b"".join(entry_bytes(e) + b"\n" for e in entries))


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / run.name
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("checkpoints"))
    return dst


def test_a_link_dropped_at_both_ends_and_resigned_fails_naming_it(runs: dict[str, Path], tmp_path: Path) -> None:
    run = _copy(runs["u1"], tmp_path)
    head, t1, tail = _stages(run)
    drop_do = {k: v for k, v in head.transcripts.items() if k != "T1:recv"}
    _resign(run, {1: drop_do, 2: {k: v for k, v in t1.transcripts.items() if k != "DO:sent"}, 3: drop_do})
    report, _ = verify_delivered(run)
    assert report.checks_failed() == {"transcript"}
    assert report.cause is not None and "link T1 → DO: no transcript at either end" in report.cause.message


def test_every_transcript_emptied_and_resigned_fails(runs: dict[str, Path], tmp_path: Path) -> None:
    run = _copy(runs["open3"], tmp_path)
    _resign(run, {i: {} for i in range(1, 5)})
    report, _ = verify_delivered(run)
    assert report.checks_failed() == {"transcript"}
    assert len(report.failures) == 7  # 0→1, 0→3, 1→0, 1→2, 2→1, 2→3, 3→2
    assert report.cause is not None and "link position 0 → position 1" in report.cause.message


def test_config_edited_after_the_run_fails(runs: dict[str, Path], tmp_path: Path) -> None:
    run = _copy(runs["open3"], tmp_path)
    cfg = json.loads((run / rundir.CONFIG).read_text())
    (run / rundir.CONFIG).write_text(json.dumps({**cfg, "lr": cfg["lr"] * 2}, indent=2))
    report, _ = verify_delivered(run)
    assert [(f.index, f.check) for f in report.failures] == [(0, "config-hash")]  # lr: same architecture
    cfg2 = {**cfg, "model_spec": None, "model": "digits-cnn"}  # another model: both bindings fail
    (run / rundir.CONFIG).write_text(json.dumps(cfg2))
    report, _ = verify_delivered(run)
    assert report.cause is not None and report.cause.check == "config-hash"
    assert all(f.consequential for f in report.failures[1:])
    (run / rundir.CONFIG).write_text(json.dumps(cfg))  # re-indented, same value: still bound, still ok
    assert verify_delivered(run)[0].ok
