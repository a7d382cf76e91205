"""The accusation entry (docs/ledger-format.md §5.5): appended by the DO on detection, accepted, shown and
checked by verify, never credited; the stage chain goes on through it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from clicooper.errors import LedgerError
from clicooper.provenance.accusation import Accusation, draft_accusation
from clicooper.provenance.entries import Genesis, PartyRecord, entry_bytes, entry_hash, sign_multi
from clicooper.provenance.identity import Identity
from clicooper.provenance.ledger import Ledger, read_ledger
from clicooper.provenance.schema import check_entry
from clicooper.provenance.verify import verify_run


def _ledger(tmp_path: Path) -> tuple[Ledger, dict[str, Identity]]:
    ids = {"DO": Identity.generate(), "T1": Identity.generate()}
    g = Genesis(config_hash="11" * 32, dataset_commitment="22" * 32, architecture_hash="33" * 32,
                planned_rounds=1, parties=(PartyRecord("DO", ids["DO"].public_key, (0, 2)),
                                           PartyRecord("T1", ids["T1"].public_key, (1,))))
    return Ledger.create(tmp_path / "ledger.jsonl", g.with_signatures([sign_multi(i, g) for i in ids.values()])), ids


def _accuse(ledger: Ledger, ids: dict[str, Identity]) -> Accusation:
    return draft_accusation(ledger, ids["DO"], round=0, step=24, suspects=["T1"], detector="scrutinizer",
                            evidence={"summary": "mean label gap 0.011 < 0.02", "mean": 0.011024184525, "gaps": [0.1]})


def test_an_accusation_is_appended_shown_and_the_chain_goes_on(tmp_path: Path) -> None:
    ledger, ids = _ledger(tmp_path)
    acc = _accuse(ledger, ids)
    assert ledger.append(acc) and ledger.next_stage() == (0, 0)  # it changes no stage order
    check_entry(json.loads(entry_bytes(acc)))  # the schema accepts it
    h = {k: k * 64 for k in "1234"}  # the four link digests, equal at both ends
    tx = {0: {"1:sent": h["1"], "1:recv": h["2"]}, 1: {"0:recv": h["1"], "0:sent": h["2"], "2:sent": h["3"],
                                                      "2:recv": h["4"]}, 2: {"1:recv": h["3"], "1:sent": h["4"]}}
    for p, owner in ((0, "DO"), (1, "T1"), (2, "DO")):
        ledger.append(ledger.draft_stage(round=0, position=p, start="aa" * 32, end="aa" * 32,
                                         transcripts=tx[p]).signed(ids[owner]))
    assert ledger.stage(0, 0).prev == entry_hash(acc)
    ledger.close([sign_multi(i, ledger.closing_body()) for i in ids.values()])
    entries, _ = read_ledger(ledger.path)
    assert entries[1] == acc and acc.evidence["mean"] == 0.0110242  # 6 significant digits: canonical JSON safe
    rep = verify_run(ledger.path)
    assert rep.ok, rep.failures
    assert rep.accusations[0]["detector"] == "scrutinizer" and rep.accusations[0]["suspects"][0]["name"] == "T1"
    assert any("accusation by DO against T1 at round 0 step 24" in n for n in rep.notes)
    assert rep.to_json()["accusations"][0]["index"] == 1
    assert rep.credit[ids["T1"].party_id].stages_verified == 1  # an accusation takes no credit away


def test_a_forged_or_malformed_accusation_fails(tmp_path: Path) -> None:
    ledger, ids = _ledger(tmp_path)
    acc = _accuse(ledger, ids)
    forged = dataclasses.replace(acc, signature=ids["T1"].sign(acc.signing_bytes()))  # T1 signs as the DO
    stranger = dataclasses.replace(acc, suspects=(("T9", "ab" * 16),)).signed(ids["DO"])
    for bad, check in ((forged, "entry-signature"), (stranger, "accusation")):
        with pytest.raises(LedgerError, match=check):
            ledger.append(bad)
    path = Path(ledger.path)
    path.write_bytes(path.read_bytes() + entry_bytes(forged) + b"\n")
    assert "entry-signature" in verify_run(path).checks_failed()
    with pytest.raises(LedgerError, match="not parties"):
        draft_accusation(ledger, ids["DO"], round=0, step=1, suspects=["T7"], detector="x", evidence={})
