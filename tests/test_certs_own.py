"""Each organisation makes its own keys: key files created O_EXCL|O_NOFOLLOW 0600 (never overwritten or
re-permissioned, a symlink refused); `clicooper certs --party` writes one party's material only;
`clicooper certs assemble` makes the public set from the cards; nodes run on per-party material and pin the
ledger keys of the set; `launch --local` keeps every party's private keys in its own directory."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clicooper.cli import app
from clicooper.errors import ConfigError, KeyFileError, LedgerError
from clicooper.net.certs import (
    assemble_set,
    generate_party_cert,
    read_ledger_keys,
    save_party_cert,
    write_own_party,
)

runner = CliRunner()


def test_an_existing_key_file_is_refused_and_kept_as_it_was(tmp_path: Path) -> None:
    key = tmp_path / "T1.key"
    key.write_bytes(b"old")
    key.chmod(0o644)
    # act / assert
    with pytest.raises(KeyFileError, match="already exists"):
        save_party_cert(generate_party_cert("T1"), tmp_path)
    assert key.read_bytes() == b"old" and stat.S_IMODE(key.stat().st_mode) == 0o644
    assert not (tmp_path / "T1.crt").exists()


def test_a_symlinked_key_file_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious")
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "T1.key").symlink_to(target)
    # act / assert
    with pytest.raises(KeyFileError, match="already exists"):
        save_party_cert(generate_party_cert("T1"), tmp_path / "certs")
    assert target.read_bytes() == b"precious"


def test_a_new_key_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        _, key = save_party_cert(generate_party_cert("T1"), tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_certs_party_writes_only_that_partys_material(tmp_path: Path) -> None:
    # act
    r = runner.invoke(app, ["certs", "--party", "T1", "--out", str(tmp_path / "mine"), "--json"])
    again = runner.invoke(app, ["certs", "--party", "T1", "--out", str(tmp_path / "mine")])
    # assert
    assert r.exit_code == 0, r.output
    got = json.loads(r.output.strip().splitlines()[-1])
    d = tmp_path / "mine"
    assert _files(d) == ["T1.crt", "T1.key", "T1.ledger.key", "T1.party.json", "T1.pub"]
    assert all(stat.S_IMODE((d / f).stat().st_mode) == 0o600 for f in ("T1.key", "T1.ledger.key"))
    card = json.loads((d / "T1.party.json").read_text())
    assert card["fingerprint"] == got["fingerprint"] and "PRIVATE" not in json.dumps(card)
    assert (d / "T1.pub").read_text().strip() == got["ledger_public_key"] == card["ledger_public_key"]
    assert again.exit_code == 2 and "never overwritten" in again.output


def test_certs_without_party_or_local_refuses_to_mint_everyones_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"dataset": "digits", "model": "digits-mlp", "trainers": 2}))
    # act
    r = runner.invoke(app, ["certs", str(cfg), "--out", str(tmp_path / "set")])
    wrote = (tmp_path / "set").exists()
    local = runner.invoke(app, ["certs", str(cfg), "--local", "--out", str(tmp_path / "set")])
    # assert
    assert r.exit_code == 2 and "--party" in r.output and not wrote
    assert local.exit_code == 0, local.output
    assert "LOCAL: every party's private key is in this one folder" in " ".join(local.output.split())
    assert sorted(p.name for p in (tmp_path / "set").glob("*.key")) == ["DO.key", "T1.key", "T2.key"]


def _three_parties(tmp_path: Path) -> dict[str, Path]:
    return {n: write_own_party(n, tmp_path / n).card for n in ("DO", "T1", "T2")}


def test_assemble_makes_a_public_set_from_the_cards(tmp_path: Path) -> None:
    cards = _three_parties(tmp_path)
    fp_t1 = json.loads(cards["T1"].read_text())["fingerprint"]
    # act
    r = runner.invoke(app, ["certs", "assemble", "--out", str(tmp_path / "set"), *map(str, cards.values()),
                            "--fingerprint", f"T1={fp_t1}", "--json"])
    # assert
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert _files(tmp_path / "set") == ["DO.crt", "T1.crt", "T2.crt", "fingerprints.json", "ledger-keys.json"]
    assert out["fingerprints"]["T1"] == fp_t1
    keys = read_ledger_keys(tmp_path / "set")
    assert keys is not None and keys["T2"].hex() == (tmp_path / "T2" / "T2.pub").read_text().strip()


def test_assemble_refuses_a_card_whose_fingerprint_is_not_the_one_told(tmp_path: Path) -> None:
    cards = _three_parties(tmp_path)
    with pytest.raises(ConfigError, match="not the .* T1 told you"):
        assemble_set(cards.values(), tmp_path / "set", expect={"T1": "0" * 64})
    forged = json.loads(cards["T2"].read_text()) | {"party": "T1"}  # T2's certificate under T1's name
    (tmp_path / "forged.party.json").write_text(json.dumps(forged))
    with pytest.raises(ConfigError, match="names \\['T2'\\], not T1"):
        assemble_set([cards["DO"], tmp_path / "forged.party.json"], tmp_path / "set2")


def test_a_node_ledger_refuses_a_genesis_key_its_set_did_not_pin(tmp_path: Path) -> None:
    from clicooper.config import make_config
    from clicooper.models.blueprint import blueprint_for
    from clicooper.net.node_ledger import NodeLedger
    from clicooper.provenance.identity import Identity, load_identity

    cards = _three_parties(tmp_path)
    assemble_set(cards.values(), tmp_path / "set")
    pinned = read_ledger_keys(tmp_path / "set")
    assert pinned is not None
    cfg = make_config(dataset="digits", model="digits-mlp", trainers=2, provenance=True, epochs=1)
    bp = blueprint_for(cfg, input_shape=(1, 8, 8), num_classes=10)
    mods = bp.modules()
    # act / assert: T1 with its own key is fine; a key other than its card's is refused at start
    NodeLedger("T1", cfg, bp.plan, mods, None, tmp_path / "t1", tmp_path / "T1" / "T1.ledger.key",
               pinned_keys=pinned)
    with pytest.raises(LedgerError, match="not the one its card pinned"):
        NodeLedger("T2", cfg, bp.plan, mods, None, tmp_path / "t2", tmp_path / "T1" / "T1.ledger.key",
                   pinned_keys=pinned)
    do = NodeLedger("DO", cfg, bp.plan, mods, None, tmp_path / "do", tmp_path / "DO" / "DO.ledger.key",
                    pinned_keys=pinned)
    impostor = Identity.generate().public_key
    with pytest.raises(LedgerError, match="ledger key of T2 is not the one its card pinned"):
        do._check_pinned({"T1": load_identity(tmp_path / "T1" / "T1.ledger.key").public_key, "T2": impostor},
                         "the trainers' node-hello")


@pytest.mark.slow
def test_launch_local_keeps_each_partys_keys_in_its_own_directory_and_verifies(tmp_path: Path) -> None:
    from clicooper.net.launch import launch_local

    cfg = {"dataset": "digits", "model": "digits-mlp", "train_range": (0, 192), "trainers": 2, "epochs": 1,
           "provenance": True}
    run = tmp_path / "run"
    # act: pinned TLS, each node on its own key and ledger identity
    launch_local(cfg, run, max_restarts=0, timeout_s=240)
    v = runner.invoke(app, ["verify", str(run), "--trusted-keys", str(run / "certs" / "ledger-keys.json"), "--json"])
    # assert: the shared set is public; no party's private key lies in another party's directory
    assert list((run / "certs").glob("*.key")) == []
    for party_dir in (run / "nodes").iterdir():
        keys = [p.name for p in party_dir.rglob("*.key")]
        assert keys and all(k.startswith(f"{party_dir.name}.") for k in keys), (party_dir.name, keys)
    assert v.exit_code == 0, v.output
    assert any("ledger-keys.json" in n for n in json.loads(v.output.strip().splitlines()[-1])["notes"])
