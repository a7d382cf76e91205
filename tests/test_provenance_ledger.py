"""The ledger file: atomic append, checks on append, crash recovery, corruption (docs/design/ledger.md#the-ledger)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from clicooper.errors import LedgerError
from clicooper.protocol.messages import Activations, Header, canonical_bytes
from clicooper.provenance.entries import Genesis, PartyRecord, StageEntry, entry_bytes, entry_hash, sign_multi
from clicooper.provenance.identity import Identity
from clicooper.provenance.ledger import Ledger, read_ledger
from clicooper.provenance.simulate import SimRun, simulate_run
from clicooper.provenance.transcript import TranscriptHasher
from clicooper.provenance.verify import verify_run

torch.set_num_threads(1)


def _segments() -> list[nn.Module]:
    torch.manual_seed(0)
    return [nn.Sequential(nn.Linear(4, 8)), nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 8)),
            nn.Sequential(nn.Linear(8, 2))]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimRun:
    return simulate_run(tmp_path_factory.mktemp("run") / "ledger.jsonl", _segments(), rounds=2)


def _two_party_genesis(rounds: int = 2) -> tuple[dict[str, Identity], Genesis]:
    ids = {"DO": Identity.generate(), "T1": Identity.generate()}
    g = Genesis(config_hash="11" * 32, dataset_commitment="22" * 32, architecture_hash="33" * 32,
                planned_rounds=rounds, parties=(PartyRecord("DO", ids["DO"].public_key, (0, 2)),
                                                PartyRecord("T1", ids["T1"].public_key, (1,))))
    return ids, g.with_signatures([sign_multi(i, g) for i in ids.values()])


def _stage(ledger: Ledger, ids: dict[str, Identity], r: int, p: int, **kw: object) -> StageEntry:
    owner = "T1" if p == 1 else "DO"
    d = ledger.draft_stage(round=r, position=p, start=kw.pop("start", "aa" * 32),  # type: ignore[arg-type]
                           end=kw.pop("end", "aa" * 32), **kw)  # type: ignore[arg-type]
    return d.signed(ids[owner])


def test_simulated_run_verifies_and_reopens(sim: SimRun) -> None:
    report = verify_run(sim.ledger.path, {p: m.state_dict() for p, m in sim.segments.items()})
    assert report.ok, report.failures
    assert verify_run(sim.ledger).to_json() == verify_run(list(sim.ledger.entries)).to_json()
    assert report.closed and report.rounds_completed == 2
    reopened = Ledger.open(sim.ledger.path)
    assert reopened.cut_tail is None and reopened.closed and reopened.next_stage() is None
    assert [entry_bytes(e) for e in reopened.entries] == [entry_bytes(e) for e in sim.ledger.entries]
    # anchors: genesis for round 0, last entry of round 0 for round 1
    assert reopened.anchor(0) == entry_hash(reopened.entries[0])
    assert reopened.anchor(1) == entry_hash(reopened.entries[3])  # positions 0..2 of round 0
    with pytest.raises(LedgerError, match="not fully committed"):
        reopened.anchor(3)


def test_lines_are_canonical_and_appended_in_position_order(sim: SimRun) -> None:
    raw = Path(sim.ledger.path).read_bytes()
    assert raw.endswith(b"\n")
    entries, torn = read_ledger(sim.ledger.path)
    assert torn is None
    assert [(e.round, e.position) for e in entries if isinstance(e, StageEntry)] == [
        (r, p) for r in range(2) for p in range(3)]
    for prev, e in zip(entries, entries[1:], strict=False):
        assert e.prev == entry_hash(prev)  # type: ignore[union-attr]


def test_append_checks_and_refusals(tmp_path: Path) -> None:
    ids, g = _two_party_genesis()
    ledger = Ledger.create(tmp_path / "l.jsonl", g)
    assert ledger.next_stage() == (0, 0)
    size = os.path.getsize(ledger.path)
    with pytest.raises(LedgerError, match="order"):  # position 1 before position 0
        ledger.append(_stage(ledger, ids, 0, 1))
    wrong_signer = dataclasses.replace(ledger.draft_stage(round=0, position=0, start="aa" * 32,
                                                          end="aa" * 32), party_id=ids["T1"].party_id)
    with pytest.raises(LedgerError, match="position-owner"):
        ledger.append(wrong_signer.signed(ids["T1"]))
    with pytest.raises(LedgerError, match="prev-chain"):
        ledger.append(dataclasses.replace(_stage(ledger, ids, 0, 0), prev="00" * 32))
    assert os.path.getsize(ledger.path) == size  # nothing written by a refused append
    e0 = _stage(ledger, ids, 0, 0)
    assert ledger.append(e0) is True
    assert ledger.append(e0, allow_identical=True) is False  # a redone round-end commit is a no-op
    with pytest.raises(LedgerError, match="duplicate-stage"):
        ledger.append(dataclasses.replace(e0, prev=ledger.head).signed(ids["DO"]))
    with pytest.raises(LedgerError, match="incomplete"):
        ledger.closing_body()
    with pytest.raises(LedgerError, match="already exists"):
        Ledger.create(ledger.path, g)


def test_create_refuses_genesis_missing_a_signature(tmp_path: Path) -> None:
    ids, g = _two_party_genesis()
    only_do = g.with_signatures([sign_multi(ids["DO"], g)])
    with pytest.raises(LedgerError, match="missing signature of T1"):
        Ledger.create(tmp_path / "l.jsonl", only_do)
    assert not (tmp_path / "l.jsonl").exists()


def test_start_must_equal_previous_end(tmp_path: Path) -> None:
    ids, g = _two_party_genesis()
    ledger = Ledger.create(tmp_path / "l.jsonl", g)
    for p in range(3):
        ledger.append(_stage(ledger, ids, 0, p, end=f"{p + 1:02d}" * 32))
    with pytest.raises(LedgerError, match="start-commitment"):
        ledger.append(_stage(ledger, ids, 1, 0, start="ff" * 32))
    ledger.append(_stage(ledger, ids, 1, 0, start="01" * 32))


@pytest.mark.parametrize("tail", [b'{"type":"stage","run_id":"ab', b'{"type":"closing"}\n', b"\xff\xfe"])
def test_torn_last_line_is_cut_off_and_reported(tmp_path: Path, tail: bytes) -> None:
    ids, g = _two_party_genesis()
    ledger = Ledger.create(tmp_path / "l.jsonl", g)
    ledger.append(_stage(ledger, ids, 0, 0))
    good = Path(ledger.path).read_bytes()
    with open(ledger.path, "ab") as f:  # a crash in the middle of the next append
        f.write(tail)
    entries, torn = read_ledger(ledger.path)
    assert torn == tail and len(entries) == 2
    report = verify_run(ledger.path)
    assert any("torn last line" in n for n in report.notes)
    assert report.checks_failed() == {"closing-missing"}
    assert Path(ledger.path).read_bytes() == good + tail  # reading does not modify the file
    untouched = Ledger.open(ledger.path, repair=False)
    assert untouched.cut_tail == tail and Path(ledger.path).read_bytes() == good + tail
    reopened = Ledger.open(ledger.path)
    assert reopened.cut_tail == tail
    assert Path(ledger.path).read_bytes() == good  # cut off on disk
    assert reopened.next_stage() == (0, 1)  # the torn entry was never committed
    reopened.append(_stage(reopened, ids, 0, 1))
    assert Ledger.open(ledger.path).next_stage() == (0, 2)


def test_corrupt_middle_lines_name_the_line(tmp_path: Path, sim: SimRun) -> None:
    lines = Path(sim.ledger.path).read_bytes().split(b"\n")
    cases = {
        "not valid UTF-8": lines[:2] + [b"\xff\xfe\x00garbage"] + lines[3:],
        "not valid JSON": lines[:2] + [b"{not json"] + lines[3:],
        "not in canonical form": lines[:2] + [lines[2].replace(b'","', b'", "', 1)] + lines[3:],
        "unknown entry type": lines[:2] + [b'{"type":"bogus"}'] + lines[3:],
    }
    for reason, bad in cases.items():
        path = tmp_path / "bad.jsonl"
        path.write_bytes(b"\n".join(bad))
        with pytest.raises(LedgerError, match=f"line 3.*{reason}|line 3: {reason}"):
            Ledger.open(path)
        report = verify_run(path)
        assert any(f.check == "parse" and f.index == 2 for f in report.failures), reason
        assert "prev-chain" in report.checks_failed()  # the entry after it no longer chains


def test_open_refuses_ledger_that_fails_checks(tmp_path: Path, sim: SimRun) -> None:
    lines = Path(sim.ledger.path).read_bytes().split(b"\n")
    path = tmp_path / "swapped.jsonl"
    path.write_bytes(b"\n".join([lines[0], lines[2], lines[1]] + lines[3:]))
    with pytest.raises(LedgerError, match="prev-chain"):
        Ledger.open(path)


def test_transcript_hasher_matches_across_a_link() -> None:
    msg = Activations(Header("DO", "T1", epoch=0, step=0), torch.ones(2, 3))
    do, t1 = TranscriptHasher(), TranscriptHasher()
    do.sent(1, msg)
    t1.received(0, canonical_bytes(msg))
    assert do.digests()["1:sent"] == t1.digests()["0:recv"]
    t1.received(0, msg)  # a second message changes the running hash
    assert do.digests()["1:sent"] != t1.digests()["0:recv"]
    t1.reset()
    assert t1.digests() == {}
