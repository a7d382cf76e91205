"""Ledger across nodes (docs/design/protocol.md#transport; docs/network.md "Ledger across nodes").

Unit level: three :class:`NodeLedger` s (DO, T1, T2), each with its own key and its own ledger file, agree on
the genesis and exchange stage entries as ``Control`` records; a forged, re-signed or garbled entry on a
link is refused by the receiving party and nothing is appended. End to end: ``launch --local`` with
provenance gives byte-identical copies and ``clicooper verify RUN`` exits 0.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clicooper.cli import app
from clicooper.config import make_config
from clicooper.data import load_dataset
from clicooper.errors import LedgerError
from clicooper.models.blueprint import blueprint_for
from clicooper.net.builder import node_party
from clicooper.net.node_ledger import ENTRY, NodeLedger, wire_entry
from clicooper.protocol.messages import Control, Header
from clicooper.provenance.canonical import canonical_json
from clicooper.provenance.entries import entry_bytes

TINY = {"dataset": "digits", "model": "digits-mlp", "train_range": (0, 320), "provenance": True,
        "trainers": 2, "epochs": 1}


def entry_msg(sender: str, receiver: str, text: str) -> Control:
    return Control(Header(sender, receiver, 0, 0), ENTRY, {"entry": text})


@pytest.fixture()
def three(tmp_path: Path) -> dict[str, NodeLedger]:
    """DO, T1, T2 with a signed genesis in each copy (the DO proposes, every party signs)."""
    ds = load_dataset("digits")
    cfg = make_config(**TINY).resolved(320)
    built = {n: node_party(cfg, n, blueprint_for(cfg, ds.input_shape, ds.num_classes), dataset=ds if n == "DO" else None)
             for n in ("DO", "T1", "T2")}
    nl = {n: NodeLedger(n, cfg, b.plan, b.modules, b.party, tmp_path / n) for n, b in built.items()}
    body = nl["DO"].propose_genesis({n: nl[n].identity.public_key for n in ("T1", "T2")}, ds,
                                    ds.train_ids(cfg.train_range), built["DO"].model)
    sigs = {n: nl[n].sign_genesis(json.dumps(body.to_json())) for n in ("T1", "T2")}
    genesis = nl["DO"].assemble_genesis(body, sigs)
    for n in nl.values():
        n.create(genesis)
        n.round_start(0)
    return nl


def test_entries_relayed_and_forgeries_refused(three: dict[str, NodeLedger]) -> None:
    # prepare: position 0 (the DO's) travels to both trainers; T1 drafts position 1
    do, t1, t2 = three["DO"], three["T1"], three["T2"]
    e0, _ = do.own_stage(0, 0)
    for t in (t1, t2):
        assert t.accept(entry_msg("DO", t.name, wire_entry(e0)))
    e1, _ = t1.own_stage(0, 1)
    good = wire_entry(e1)
    obj = json.loads(good)
    tampered = canonical_json(obj | {"end": "00" * 32}).decode()  # forged end commitment, T1's old signature
    # T2 signs an entry for T1's position (Entry.signed refuses that, so sign the bytes directly)
    resigned = wire_entry(dataclasses.replace(e1, signature=t2.identity.sign(e1.signing_bytes())))
    skipped = canonical_json(obj | {"position": 2}).decode()
    before = do.path.read_bytes()
    # execute + assert: each forgery refused by the receiver, its copy unchanged
    for text, why in ((tampered, "signature"), (resigned, "signature"), (skipped, "asked for")):
        with pytest.raises(LedgerError, match=why):
            do.accept(entry_msg("T1", "DO", text), expect=(0, 1))
    with pytest.raises(LedgerError, match="canonical|JSON"):
        do.accept(entry_msg("T1", "DO", good.replace(",", ", ", 1)))
    with pytest.raises(LedgerError, match="no entry"):
        do.accept(Control(Header("T1", "DO", 0, 0), ENTRY, {}))
    assert do.path.read_bytes() == before
    # the genuine entry is accepted, and an exact resend is a no-op
    assert do.accept(entry_msg("T1", "DO", good), expect=(0, 1))
    assert not do.accept(entry_msg("T1", "DO", good), expect=(0, 1))
    assert t2.accept(entry_msg("DO", "T2", good))
    assert entry_bytes(do.ledger.entries[-1]) == entry_bytes(t2.ledger.entries[-1]) == good.encode()


def test_genesis_proposal_with_wrong_key_refused(three: dict[str, NodeLedger]) -> None:
    # prepare: a body that puts T2's key where T1's belongs
    do, t1, t2 = three["DO"], three["T1"], three["T2"]
    g = do.ledger.genesis
    obj = g.to_json() | {"signatures": []}
    obj["parties"] = [p | {"public_key": t2.identity.public_key.hex()} if p["name"] == "T1" else p
                      for p in obj["parties"]]
    # execute + assert: T1 refuses to sign it
    with pytest.raises(LedgerError):
        t1.sign_genesis(json.dumps(obj))


@pytest.mark.slow
def test_launch_with_provenance_identical_copies_verify(tmp_path: Path) -> None:
    # prepare
    cfg_file = tmp_path / "run.json"
    cfg_file.write_text(json.dumps(TINY | {"epochs": 2, "train_range": [0, 320]}))
    run = tmp_path / "run"
    runner = CliRunner()
    # execute
    r = runner.invoke(app, ["launch", str(cfg_file), "--local", "--out", str(run), "--json"])
    v = runner.invoke(app, ["verify", str(run)])
    # assert
    assert r.exit_code == 0, r.output
    copies = {p: (run / "nodes" / p / "ledger.jsonl").read_bytes() for p in ("DO", "T1", "T2")}
    assert len(set(copies.values())) == 1
    assert (run / "ledger.jsonl").read_bytes() == copies["DO"]
    assert len(copies["DO"].splitlines()) == 1 + 2 * 4 + 1  # genesis, 2 rounds × 4 positions, closing
    assert not (run / "nodes" / "T1" / "keys" / "DO.key").exists()  # each party holds only its own key
    assert v.exit_code == 0, v.output
