"""Ledger forgery and tampering: each attack of docs/design/metrics.md is rejected by ``verify_run`` with its reason."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from clicooper.provenance.canonical import canonical_json
from clicooper.provenance.entries import (
    Closing,
    Entry,
    StageEntry,
    entry_from_json,
    entry_hash,
    sign_multi,
)
from clicooper.provenance.identity import Identity
from clicooper.provenance.simulate import SimRun, simulate_run
from clicooper.provenance.verify import VerifyReport, verify_run

torch.set_num_threads(1)

K = 2  # trainers; positions 0 (DO head), 1 (T1), 2 (T2), 3 (DO tail)


def _segments() -> list[nn.Module]:
    torch.manual_seed(1)
    return [nn.Sequential(nn.Linear(4, 8)),
            nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 8)),
            nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 8)),
            nn.Sequential(nn.Linear(8, 2))]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimRun:
    return simulate_run(tmp_path_factory.mktemp("run") / "ledger.jsonl", _segments(), rounds=2)


def _lines(sim: SimRun) -> list[bytes]:
    return Path(sim.ledger.path).read_bytes().rstrip(b"\n").split(b"\n")


def _segs(sim: SimRun) -> dict[int, Any]:
    return {p: m.state_dict() for p, m in sim.segments.items()}


def _verify(tmp_path: Path, lines: list[bytes], segments: dict[int, Any] | None = None,
            **kw: Any) -> VerifyReport:
    path = tmp_path / "tampered.jsonl"
    path.write_bytes(b"".join(x + b"\n" for x in lines))
    return verify_run(path, segments, **kw)


def _line(e: Entry) -> bytes:
    return canonical_json(e.to_json())


def _rechain(sim: SimRun, entries: list[Entry]) -> list[Entry]:
    """Re-link and re-sign everything after a change, with every rightful key (isolates one check)."""
    out: list[Entry] = [entries[0]]
    for e in entries[1:]:
        if isinstance(e, StageEntry):
            e = dataclasses.replace(e, prev=entry_hash(out[-1])).signed(sim.identities[sim.owners[e.position]])
        elif isinstance(e, Closing):
            e = dataclasses.replace(e, prev=entry_hash(out[-1]), signatures=())
            e = e.with_signatures([sign_multi(i, e) for i in sim.identities.values()])
        out.append(e)
    return out


def _entries(sim: SimRun) -> list[Entry]:
    return list(sim.ledger.entries)


# stage (r, p) is at line index 1 + r * 4 + p; the closing is the last line
def _idx(r: int, p: int) -> int:
    return 1 + r * (K + 2) + p


def test_genuine_ledger_passes(tmp_path: Path, sim: SimRun) -> None:
    report = _verify(tmp_path, _lines(sim), _segs(sim))
    assert report.ok and report.failures == []
    t1 = report.credit[sim.identities["T1"].party_id]
    assert (t1.stages_committed, t1.stages_verified, t1.samples, t1.flops) == (2, 2, 200, 4000)


def test_forged_signature(tmp_path: Path, sim: SimRun) -> None:
    lines = _lines(sim)
    i = _idx(0, 1)
    e = entry_from_json(json.loads(lines[i]))
    sig = bytearray(e.signature)  # type: ignore[union-attr]
    sig[5] ^= 0x40
    lines[i] = _line(dataclasses.replace(e, signature=bytes(sig)))  # type: ignore[type-var]
    report = _verify(tmp_path, lines)
    assert [(f.index, f.check) for f in report.failures if f.check == "entry-signature"] == [(i, "entry-signature")]
    t1 = report.credit[sim.identities["T1"].party_id]
    assert t1.stages_verified == 1  # the forged stage earns no credit


def test_reordered_entries(tmp_path: Path, sim: SimRun) -> None:
    lines = _lines(sim)
    a, b = _idx(0, 1), _idx(0, 2)
    lines[a], lines[b] = lines[b], lines[a]
    report = _verify(tmp_path, lines)
    assert {"prev-chain", "order"} <= report.checks_failed()
    order = {f.index: f.message for f in report.failures if f.check == "order"}
    assert "skipped" in order[a] and "reordered" in order[b]


def test_substituted_entry_unsigned_and_resigned(tmp_path: Path, sim: SimRun) -> None:
    lines = _lines(sim)
    i = _idx(1, 1)
    e = sim.ledger.entries[i]
    assert isinstance(e, StageEntry)
    inflated = dataclasses.replace(e, metrics={**e.metrics, "samples": 10**6})
    lines[i] = _line(inflated)  # another party substitutes it: the signature no longer matches
    assert "entry-signature" in _verify(tmp_path, lines).checks_failed()
    lines[i] = _line(inflated.signed(sim.identities["T1"]))  # T1 itself rewrites its past entry
    report = _verify(tmp_path, lines)
    assert [(f.index, f.check) for f in report.failures] == [(i + 1, "prev-chain")]


def test_skipped_entry(tmp_path: Path, sim: SimRun) -> None:
    lines = _lines(sim)
    del lines[_idx(0, 2)]
    report = _verify(tmp_path, lines)
    assert any(f.check == "order" and "skipped" in f.message for f in report.failures)
    assert "prev-chain" in report.checks_failed()
    # even when re-chained by all parties, the hole stays visible
    entries = _entries(sim)
    del entries[_idx(0, 2)]
    report = _verify(tmp_path, [_line(e) for e in _rechain(sim, entries)])
    assert any(f.check == "order" and "skipped" in f.message for f in report.failures)


def test_replayed_entry(tmp_path: Path, sim: SimRun) -> None:
    lines = _lines(sim)
    lines.insert(_idx(1, 0), lines[_idx(0, 3)])  # replay the last entry of round 0
    report = _verify(tmp_path, lines)
    assert "duplicate-stage" in report.checks_failed()
    entries = _entries(sim)  # replayed and re-chained: still a duplicate stage
    entries.insert(_idx(1, 0), entries[_idx(0, 3)])
    assert "duplicate-stage" in _verify(tmp_path, [_line(e) for e in _rechain(sim, entries)]).checks_failed()


def test_replay_from_another_run(tmp_path: Path, sim: SimRun) -> None:
    other = simulate_run(tmp_path / "other.jsonl", _segments(), rounds=2, identities=sim.identities)
    lines = _lines(sim)
    lines[_idx(1, 2)] = _lines(other)[_idx(1, 2)]  # same keys, same stage, different run (nonce)
    report = _verify(tmp_path, lines)
    assert {"run-id", "prev-chain"} <= report.checks_failed()


@pytest.mark.parametrize("cut", [1, 3])
def test_truncated_ledger(tmp_path: Path, sim: SimRun, cut: int) -> None:
    report = _verify(tmp_path, _lines(sim)[:-cut], _segs(sim))
    assert "closing-missing" in report.checks_failed()
    assert not report.closed


def test_entry_after_closing(tmp_path: Path, sim: SimRun) -> None:
    lines = _lines(sim)
    lines.append(lines[_idx(1, 3)])
    assert {"after-closing", "duplicate-stage"} <= _verify(tmp_path, lines).checks_failed()


def test_closing_missing_a_party_signature(tmp_path: Path, sim: SimRun) -> None:
    lines = _lines(sim)
    closing = sim.ledger.entries[-1]
    assert isinstance(closing, Closing)
    lines[-1] = _line(closing.with_signatures(closing.signatures[:-1]))
    report = _verify(tmp_path, lines)
    assert [f.check for f in report.failures] == ["closing-signature"]
    assert "missing signature of T2" in report.failures[0].message


def test_swapped_segment_files(tmp_path: Path, sim: SimRun) -> None:
    segs = _segs(sim)
    segs[1], segs[2] = segs[2], segs[1]
    report = _verify(tmp_path, _lines(sim), segs)
    assert [f.check for f in report.failures] == ["segment-commitment", "segment-commitment"]
    altered = _segs(sim)
    altered[2] = {k: v.clone() for k, v in altered[2].items()}
    altered[2]["0.bias"][0] += 1e-6  # one weight nudged
    assert _verify(tmp_path, _lines(sim), altered).checks_failed() == {"segment-commitment"}
    assert _verify(tmp_path, _lines(sim), {7: segs[1]}).checks_failed() == {"segment-unknown"}


def test_trainer_claims_another_trainers_stage(tmp_path: Path, sim: SimRun) -> None:
    i = _idx(1, 1)  # T1's stage in round 1
    e = sim.ledger.entries[i]
    assert isinstance(e, StageEntry)
    t2 = sim.identities["T2"]
    lines = _lines(sim)
    lines[i] = _line(dataclasses.replace(e, party_id=t2.party_id).signed(t2))  # as itself
    report = _verify(tmp_path, lines)
    assert {"position-owner", "entry-signature"} <= report.checks_failed()
    assert any("T2 claims position 1" in f.message for f in report.failures)
    # the claimed stage is not credited (nor T2's next own stage, whose prev no longer chains)
    assert report.credit[t2.party_id].stages_committed == 3
    assert report.credit[t2.party_id].stages_verified == 1
    forged = dataclasses.replace(e, signature=t2.sign(e.signing_bytes()))  # in T1's name
    lines[i] = _line(forged)
    assert "entry-signature" in _verify(tmp_path, lines).checks_failed()


def test_data_owner_forges_a_trainer_stage(tmp_path: Path, sim: SimRun) -> None:
    i = _idx(0, 2)
    e = sim.ledger.entries[i]
    assert isinstance(e, StageEntry)
    lines = _lines(sim)
    lines[i] = _line(dataclasses.replace(e, end="00" * 32, signature=sim.identities["DO"].sign(e.signing_bytes())))
    assert "entry-signature" in _verify(tmp_path, lines).checks_failed()


def test_data_owner_writes_ledger_with_made_up_trainer(tmp_path: Path, sim: SimRun) -> None:
    # (a) the DO lists the real T1 but cannot make T1 sign: the genesis lacks T1's signature
    g = sim.ledger.genesis
    fake_sig = dataclasses.replace(sign_multi(sim.identities["DO"], g), party_id=sim.identities["T1"].party_id)
    forged_g = g.with_signatures([s for s in g.signatures if s.party_id != fake_sig.party_id] + [fake_sig])
    lines = _lines(sim)
    lines[0] = _line(forged_g)
    report = _verify(tmp_path, lines)
    assert any(f.check == "genesis-signature" and "invalid signature of T1" in f.message for f in report.failures)
    # (b) the DO invents a whole run with a T1 key it made itself: consistent on its own, so the
    # verifier must pin the trainers' real keys
    fake_ids = {**sim.identities, "T1": Identity.generate()}
    fake = simulate_run(tmp_path / "fake.jsonl", _segments(), rounds=2, identities=fake_ids)
    assert verify_run(fake.ledger.path).ok
    trusted = {n: i.public_key for n, i in sim.identities.items()}
    report = verify_run(fake.ledger.path, trusted_keys=trusted)
    assert [f.check for f in report.failures] == ["trusted-key"]
    assert "T1" in report.failures[0].message
    assert verify_run(sim.ledger.path, trusted_keys=trusted).ok


def test_unknown_party_in_genesis_signatures(tmp_path: Path, sim: SimRun) -> None:
    g = sim.ledger.genesis
    stranger = Identity.generate()
    lines = _lines(sim)
    lines[0] = _line(g.with_signatures(list(g.signatures) + [sign_multi(stranger, g)]))
    report = _verify(tmp_path, lines)
    assert any(f.check == "genesis-signature" and "not a party" in f.message for f in report.failures)


def test_transcript_mismatch_names_the_link(tmp_path: Path, sim: SimRun) -> None:
    entries = _entries(sim)
    i = _idx(1, 1)
    e = entries[i]
    assert isinstance(e, StageEntry)
    entries[i] = dataclasses.replace(e, transcripts={**e.transcripts, "2:sent": "ab" * 32})
    report = _verify(tmp_path, [_line(x) for x in _rechain(sim, entries)])
    assert [(f.index, f.check) for f in report.failures] == [(i, "transcript")]
    assert "position 1 sent to 2 in round 1" in report.failures[0].message
    hidden = dict(e.transcripts)
    del hidden["2:sent"]  # a party that omits a link is caught by its neighbour's record
    entries[i] = dataclasses.replace(e, transcripts=hidden)
    report = _verify(tmp_path, [_line(x) for x in _rechain(sim, entries)])
    assert report.checks_failed() == {"transcript"}


def test_start_commitment_must_continue_previous_round(tmp_path: Path, sim: SimRun) -> None:
    entries = _entries(sim)
    i = _idx(1, 2)
    entries[i] = dataclasses.replace(entries[i], start="ee" * 32)  # type: ignore[type-var]
    report = _verify(tmp_path, [_line(x) for x in _rechain(sim, entries)])
    assert [(f.index, f.check) for f in report.failures] == [(i, "start-commitment")]


def test_closing_with_wrong_final_commitments(tmp_path: Path, sim: SimRun) -> None:
    entries = _entries(sim)
    c = entries[-1]
    assert isinstance(c, Closing)
    entries[-1] = dataclasses.replace(c, final_commitments={**c.final_commitments, "1": "00" * 32})
    report = _verify(tmp_path, [_line(x) for x in _rechain(sim, entries)])
    assert [f.check for f in report.failures] == ["closing"]


TAMPERS: dict[str, Callable[[list[bytes]], list[bytes]]] = {
    "drop genesis": lambda ls: ls[1:],
    "duplicate genesis": lambda ls: ls[:1] + ls,
    "empty stage line": lambda ls: ls[:2] + [b"{}"] + ls[3:],
    "flip a hex digit": lambda ls: ls[:3] + [_flip_end_digit(ls[3])] + ls[4:],
    "whitespace added": lambda ls: ls[:3] + [ls[3].replace(b",", b", ", 1)] + ls[4:],
}


def _flip_end_digit(line: bytes) -> bytes:
    at = line.index(b'"end":"') + len(b'"end":"')
    digit = b"0" if line[at:at + 1] != b"0" else b"1"
    return line[:at] + digit + line[at + 1:]


@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_any_tamper_fails(tmp_path: Path, sim: SimRun, name: str) -> None:
    lines = TAMPERS[name](_lines(sim))
    assert not _verify(tmp_path, lines).ok


def test_party_name_keyed_transcripts(tmp_path: Path) -> None:
    # K = 1: the DO talks to T1 from both its positions; its two entries carry the same merged digests
    torch.manual_seed(3)
    segs = [nn.Sequential(nn.Linear(4, 8)), nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 8)),
            nn.Sequential(nn.Linear(8, 2))]
    sim = simulate_run(tmp_path / "named.jsonl", segs, rounds=1, transcript_keys="name")
    entries = _entries(sim)
    assert set(entries[1].transcripts) == {"T1:sent", "T1:recv"}  # type: ignore[union-attr]
    assert verify_run(sim.ledger.path).ok
    t1 = entries[2]
    assert isinstance(t1, StageEntry)
    entries[2] = dataclasses.replace(t1, transcripts={**t1.transcripts, "DO:recv": "ab" * 32})
    report = _verify(tmp_path, [_line(x) for x in _rechain(sim, entries)])
    assert report.checks_failed() == {"transcript"}
    assert any("DO sent to T1 in round 0 is not what T1 received" in f.message for f in report.failures)
    do_tail = entries[3]
    assert isinstance(do_tail, StageEntry)
    entries[2] = t1
    entries[3] = dataclasses.replace(do_tail, transcripts={**do_tail.transcripts, "T1:sent": "cd" * 32})
    report = _verify(tmp_path, [_line(x) for x in _rechain(sim, entries)])
    assert any("two different digests" in f.message for f in report.failures)
