"""The deployment drill of docs/deployment-drill.md, as three organisations run it: the DO, T1 and T2 each in
its own network namespace (the wide-area bed) with its own working directory; each makes its own keys there,
only public files (cards, certificates, the assembled set, the run config) and fingerprints cross; every node
starts from its own directory on its own key; a defended run with provenance, then `verify --trusted-keys`.
Live detection, the ε budget, `report` and `audit` run where nodes support them (see ``NODE_RUN_LOOP``).
Afterwards no party's private key — by name or by its bytes, in any encoding — lies in another's directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from clicooper.net.node_base import NodeOptions
from clicooper.net.wan.netns import PROFILES, WanBed, netns_unavailable
from clicooper.provenance.identity import load_identity

PARTIES = ("DO", "T1", "T2")
REASON = netns_unavailable()
needs_netns = pytest.mark.skipif(REASON is not None, reason=f"the drill needs network namespaces: {REASON}")
#: the DO node honours --max-epsilon, runs live detection and the trainers keep audit logs and observations
#: only once nodes drive the core run loop; before that those parts of the drill skip, saying so
NODE_RUN_LOOP = "max_epsilon" in NodeOptions.__dataclass_fields__
NO_RUN_LOOP = "nodes do not drive the core run loop yet (no --max-epsilon, live detection, audit logs or " \
              "observations on a node)"
MAX_EPSILON = 50.0


# ---------------------------------------------------------------------------------------- the key scan
def secret_forms(own_dir: Path, party: str) -> dict[str, bytes]:
    """Every form in which ``party``'s private keys could be copied: each key file's bytes, the TLS key's
    DER (PKCS#8), the Ed25519 seed raw and in hex (lower and upper case)."""
    tls_pem = (own_dir / f"{party}.key").read_bytes()
    led_pem = (own_dir / f"{party}.ledger.key").read_bytes()
    tls = serialization.load_pem_private_key(tls_pem, password=None)
    der = tls.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    seed = load_identity(own_dir / f"{party}.ledger.key").private_bytes()
    return {f"{party}.key": tls_pem, f"{party}.key (DER)": der, f"{party}.ledger.key": led_pem,
            f"{party}'s ledger seed": seed, f"{party}'s ledger seed (hex)": seed.hex().encode(),
            f"{party}'s ledger seed (HEX)": seed.hex().upper().encode()}


def foreign_keys(workdirs: dict[str, Path], secrets: dict[str, dict[str, bytes]]) -> list[str]:
    """Where a party's private key (a file named like it, or its bytes in any file) lies in ANOTHER party's
    working directory; one line per finding, empty when every key stayed home."""
    found = []
    for owner, d in workdirs.items():
        for f in sorted(p for p in d.rglob("*") if p.is_file() and not p.is_symlink()):
            data = f.read_bytes()
            for party, forms in secrets.items():
                if party == owner:
                    continue
                if f.name in (f"{party}.key", f"{party}.ledger.key"):
                    found.append(f"{f}: named like {party}'s private key, in {owner}'s directory")
                found += [f"{f}: holds {what}, in {owner}'s directory" for what, b in forms.items() if b in data]
    return found


def test_the_key_scan_finds_a_foreign_key_by_name_or_by_its_bytes(tmp_path: Path) -> None:
    from clicooper.net.certs import write_own_party

    dirs = {p: tmp_path / p.lower() for p in ("DO", "T1")}
    for p, d in dirs.items():
        write_own_party(p, d / "own")
    secrets = {p: secret_forms(d / "own", p) for p, d in dirs.items()}
    assert foreign_keys(dirs, secrets) == []
    # act: T1's ledger seed, in hex inside a JSON file, and T1's TLS key under another name, on the DO's side
    (dirs["DO"] / "notes.json").write_text(json.dumps({"x": secrets["T1"]["T1's ledger seed (hex)"].decode()}))
    shutil.copy(dirs["T1"] / "own" / "T1.key", dirs["DO"] / "innocent.pem")
    (dirs["DO"] / "T1.ledger.key").write_text("not even a key")
    found = foreign_keys(dirs, secrets)
    # assert
    assert any("notes.json: holds T1's ledger seed (hex)" in f for f in found), found
    assert any("innocent.pem: holds T1.key" in f for f in found), found
    assert any("T1.ledger.key: named like T1's private key" in f for f in found), found
    assert all("in DO's directory" in f for f in found)


# ---------------------------------------------------------------------------------------- the drill
def _cli(*args: str) -> list[str]:
    """``clicooper ARGS`` with this interpreter (the same sources as the test)."""
    return [sys.executable, "-m", "clicooper.cli", *args]


def _run(bed: WanBed, party: str, cwd: Path, *args: str, timeout: float = 120) -> str:
    """One command of ``party``, in its namespace and its own directory; its stdout (fails with stderr)."""
    r = subprocess.run(bed.wrap(party, _cli(*args)), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200"))
    assert r.returncode == 0, f"{party} `clicooper {' '.join(args)}` exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _last_json(text: str) -> Any:
    return json.loads(text.strip().splitlines()[-1])


def _copy_public(src: Path, dst: Path) -> None:
    """The out-of-band transfer: one public file, copied explicitly (never a folder that could hold keys)."""
    assert not src.name.endswith(".key"), f"{src} is a private key file: it never crosses"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def drill_config() -> dict[str, Any]:
    """The drill's run: tiny digits, two trainers, the clicooper defense, provenance; with node-side run
    loops also live detection, trainers' audit logs and observations (for `report`)."""
    cfg: dict[str, Any] = {"dataset": "digits", "model": "digits-mlp", "trainers": 2, "epochs": 1,
                           "train_range": [0, 160], "defense": "clicooper", "provenance": True}
    if NODE_RUN_LOOP:
        cfg |= {"detection": {"enabled": True, "splitguard": {"warmup_steps": 2}, "validation": {"enabled": False}},
                "audit": {"enabled": True, "interval": 2}, "record_observations": True}
    return cfg


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the whole drill once; what the tests below check."""
    if REASON is not None:
        pytest.skip(f"the drill needs network namespaces: {REASON}")
    base = tmp_path_factory.mktemp("drill")
    work = {p: base / p.lower() for p in PARTIES}
    for d in work.values():
        d.mkdir(mode=0o700)
    cfg = drill_config()
    times: dict[str, float] = {}
    t0 = time.monotonic()
    # the config only decides which links the bed draws; every node reads its own copy of run.json
    from clicooper.config import make_config

    with WanBed.for_config(make_config(**cfg), PROFILES["lan"], workdir=base / "bed") as bed:
        # 1. each party, in its own namespace and directory: its own keys; it tells the DO its fingerprint and
        #    ledger public key over another channel (here: the JSON the command printed)
        told = {p: _last_json(_run(bed, p, work[p], "certs", "--party", p, "--out", "own", "--json"))
                for p in PARTIES}
        times["keys"] = time.monotonic() - t0
        # 2. out of band: each trainer's card to the DO
        for p in ("T1", "T2"):
            _copy_public(work[p] / "own" / f"{p}.party.json", work["DO"] / "inbox" / f"{p}.party.json")
        # 3. the DO assembles the public set, checking each card against the fingerprint it was told
        _run(bed, "DO", work["DO"], "certs", "assemble", "--out", "set", "own/DO.party.json",
             "inbox/T1.party.json", "inbox/T2.party.json",
             *[a for p in ("T1", "T2") for a in ("--fingerprint", f"{p}={told[p]['fingerprint']}")], "--json")
        (work["DO"] / "run.json").write_text(json.dumps(cfg, indent=2) + "\n")
        # 4. out of band: the set and the run config to every trainer
        for p in ("T1", "T2"):
            for f in sorted((work["DO"] / "set").iterdir()):
                _copy_public(f, work[p] / "set" / f.name)
            _copy_public(work["DO"] / "run.json", work[p] / "run.json")
        t_nodes = time.monotonic()
        # 5. every node from its own directory, on its own keys, listening in its namespace
        procs = {}
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        for p in PARTIES:
            peers = ",".join(f"{q}={bed.peer_address(p, q)}" for q in bed.peers(p))
            args = ["node", "--config", "run.json", "--party", p, "--run-dir", "run", "--certs", "set",
                    "--key", f"own/{p}.key", "--identity", f"own/{p}.ledger.key", "--listen", bed.listen(p),
                    "--peers", peers, "--connect-timeout", "60", "--idle-timeout", "120"]
            if p == "DO" and NODE_RUN_LOOP:
                args += ["--max-epsilon", str(MAX_EPSILON)]
            log = open(work[p] / "node.log", "w", encoding="utf-8")  # noqa: SIM115 - the child owns it
            procs[p] = subprocess.Popen(bed.wrap(p, _cli(*args)), cwd=work[p], stdout=log, stderr=subprocess.STDOUT,
                                        env=env)
            log.close()
        try:
            codes = {p: pr.wait(timeout=240) for p, pr in procs.items()}
        finally:
            for pr in procs.values():
                if pr.poll() is None:
                    pr.kill()
                    pr.wait(5)
        times["nodes"] = time.monotonic() - t_nodes
        logs = {p: (work[p] / "node.log").read_text("utf-8", errors="replace") for p in PARTIES}
        assert all(c == 0 for c in codes.values()), f"node exit codes {codes}:\n" + "\n".join(
            f"--- {p}\n{logs[p][-3000:]}" for p in PARTIES)
        # 6. out of band: the ledger public keys each party told, gathered by the verifier (here the DO)
        (work["DO"] / "trusted-keys.json").write_text(
            json.dumps({p: told[p]["ledger_public_key"] for p in PARTIES}, indent=2) + "\n")
        t_v = time.monotonic()
        verdict = _last_json(_run(bed, "DO", work["DO"], "verify", "run", "--trusted-keys", "trusted-keys.json",
                                  "--json"))
        times["verify"] = time.monotonic() - t_v
        times["total"] = time.monotonic() - t0
    secrets = {p: secret_forms(work[p] / "own", p) for p in PARTIES}
    return {"work": work, "told": told, "verdict": verdict, "logs": logs, "secrets": secrets, "times": times,
            "bed": bed}


@needs_netns
@pytest.mark.slow
def test_drill_no_private_key_of_one_party_lies_in_another_partys_directory(drill: dict[str, Any]) -> None:
    work, secrets = drill["work"], drill["secrets"]
    assert foreign_keys(work, secrets) == []
    for p in PARTIES:  # each party's own keys are where it made them, and nowhere else in its directory
        mine = sorted(str(f.relative_to(work[p])) for f in work[p].rglob("*.key"))
        assert mine == [f"own/{p}.key", f"own/{p}.ledger.key"], (p, mine)
    assert all(not f.name.endswith(".key") for f in (work["DO"] / "set").iterdir())


@needs_netns
@pytest.mark.slow
def test_drill_nodes_ran_on_their_own_keys_and_verify_pins_the_keys_told(drill: dict[str, Any]) -> None:
    verdict, told, work = drill["verdict"], drill["told"], drill["work"]
    assert verdict["ok"] is True, verdict
    assert any("trusted-keys.json" in n for n in verdict["notes"]), verdict["notes"]
    pinned = json.loads((work["DO"] / "set" / "ledger-keys.json").read_text())
    assert pinned == {p: told[p]["ledger_public_key"] for p in PARTIES}
    for p in PARTIES:  # each node finished in its own run directory with its own ledger copy
        assert (work[p] / "run" / "ledger.jsonl").is_file(), p
    copies = {(work[p] / "run" / "ledger.jsonl").read_bytes() for p in PARTIES}
    assert len(copies) == 1  # byte-identical ledger copies
    print(json.dumps({"times_s": {k: round(v, 1) for k, v in drill["times"].items()}}))
