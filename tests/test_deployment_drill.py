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
from clicooper.provenance.identity import load_identity
from testbed.netns import PROFILES, WanBed, netns_unavailable

PARTIES = ("DO", "T1", "T2")
REASON = netns_unavailable()
needs_netns = pytest.mark.skipif(REASON is not None, reason=f"the drill needs network namespaces: {REASON}")
#: the DO node honours --max-epsilon, runs live detection and the trainers keep audit logs and observations
#: only once nodes drive the core run loop; before that those parts of the drill skip, saying so
NODE_RUN_LOOP = "max_epsilon" in NodeOptions.__dataclass_fields__
NO_RUN_LOOP = "nodes do not drive the core run loop yet (no --max-epsilon, live detection, audit logs or " \
              "observations on a node)"
MAX_EPSILON = 10.0


# ---------------------------------------------------------------------------------------- the key scan
def secret_forms(own_dir: Path, party: str, run_secrets: Path | None = None) -> dict[str, bytes]:
    """Every form in which ``party``'s private keys could be copied: each key file's bytes, the TLS key's
    DER (PKCS#8), the Ed25519 seed raw and in hex (lower and upper case); and each file of its run's
    ``secrets/`` (the DO's label, noise and guard keys), raw and in hex."""
    tls_pem = (own_dir / f"{party}.key").read_bytes()
    led_pem = (own_dir / f"{party}.ledger.key").read_bytes()
    tls = serialization.load_pem_private_key(tls_pem, password=None)
    der = tls.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    seed = load_identity(own_dir / f"{party}.ledger.key").private_bytes()
    return {f"{party}.key": tls_pem, f"{party}.key (DER)": der, f"{party}.ledger.key": led_pem,
            f"{party}'s ledger seed": seed, f"{party}'s ledger seed (hex)": seed.hex().encode(),
            f"{party}'s ledger seed (HEX)": seed.hex().upper().encode()} | _run_secrets(run_secrets, party)


def _run_secrets(d: Path | None, party: str) -> dict[str, bytes]:
    if d is None or not d.is_dir():
        return {}
    out = {}
    for f in sorted(x for x in d.rglob("*") if x.is_file()):
        data = f.read_bytes()
        if len(data) >= 16:  # shorter files are no key (a match would be chance)
            out[f"{party}'s secret {f.name}"] = data
            out[f"{party}'s secret {f.name} (hex)"] = data.hex().encode()
    return out


def foreign_keys(workdirs: dict[str, Path], secrets: dict[str, dict[str, bytes]]) -> list[str]:
    """Where a party's private key material (its key files' bytes, in any file, in any of the forms of
    :func:`secret_forms`) lies in ANOTHER party's working directory; one line per finding."""
    found = []
    for owner, d in workdirs.items():
        for f in sorted(p for p in d.rglob("*") if p.is_file() and not p.is_symlink()):
            data = f.read_bytes()
            found += [f"{f}: holds {what}, in {owner}'s directory" for party, forms in secrets.items()
                      if party != owner for what, b in forms.items() if b in data]
    return found


def lookalikes(workdirs: dict[str, Path]) -> list[Path]:
    """Files in a party's directory named like ANOTHER party's key file (``T1.key``, ``T1.ledger.key``)."""
    return [f for owner, d in workdirs.items() for f in sorted(d.rglob("*.key"))
            if any(f.name in (f"{p}.key", f"{p}.ledger.key") for p in workdirs if p != owner)]


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
    assert all("in DO's directory" in f for f in found) and len(found) == 2, found
    assert lookalikes(dirs) == [dirs["DO"] / "T1.ledger.key"]


# ---------------------------------------------------------------------------------------- the drill
def _cli(*args: str) -> list[str]:
    """``clicooper ARGS`` with this interpreter (the same sources as the test)."""
    return [sys.executable, "-m", "clicooper.cli", *args]


def _start(bed: WanBed, party: str, cwd: Path, *args: str) -> subprocess.Popen[str]:
    """``clicooper ARGS`` of ``party``, in its namespace and its own working directory."""
    return subprocess.Popen(bed.wrap(party, _cli(*args)), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200"))


def _finish(proc: subprocess.Popen[str], party: str, timeout: float = 180) -> str:
    """Its stdout once it exited 0 (the test fails with its output otherwise)."""
    try:
        out, errs = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, f"{party} `{' '.join(proc.args[-12:])}` exited {proc.returncode}:\n{out}\n{errs}"
    return out


def _run(bed: WanBed, party: str, cwd: Path, *args: str) -> str:
    """One command of ``party`` in its namespace and directory; its stdout."""
    return _finish(_start(bed, party, cwd, *args), party)


def _last_json(text: str) -> Any:
    return json.loads(text.strip().splitlines()[-1])


def _copy_public(src: Path, dst: Path) -> None:
    """The out-of-band transfer: one public file, copied explicitly (never a folder that could hold keys)."""
    assert not src.name.endswith(".key"), f"{src} is a private key file: it never crosses"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def drill_config() -> dict[str, Any]:
    """The drill's run: tiny digits, two trainers, the clicooper defense (σ for ε = 8 after its one epoch),
    provenance; with node-side run loops also live detection, the trainers' audit logs and observations."""
    cfg: dict[str, Any] = {"dataset": "digits", "model": "digits-mlp", "trainers": 2, "epochs": 1,
                           "train_range": [0, 160], "defense": "clicooper", "dp": {"target_epsilon": 8.0},
                           "provenance": True}
    if NODE_RUN_LOOP:
        # ten steps: fake batches and gradient tests run live, but too few for a decision (min_fakes, window),
        # so an honest run is never stopped by chance; tests/test_node_runloop.py checks a decisive stop
        cfg |= {"detection": {"enabled": True, "splitguard": {"warmup_steps": 2, "p_fake": 0.4, "min_fakes": 10},
                              "scrutinizer": {"every": 2, "warmup_steps": 2, "rows": 16},
                              "validation": {"enabled": False}},
                "audit": {"enabled": True, "interval": 2}, "record_observations": True}
    return cfg


def _copy_tree_public(src: Path, dst: Path) -> None:
    """A trainer's records for the DO (its observations, its audit log), file by file, keys refused."""
    for f in sorted(x for x in src.rglob("*") if x.is_file()):
        _copy_public(f, dst / f.relative_to(src))


def _node_args(bed: WanBed, p: str) -> list[str]:
    peers = ",".join(f"{q}={bed.peer_address(p, q)}" for q in bed.peers(p))
    args = ["node", "--config", "run.json", "--party", p, "--run-dir", "run", "--certs", "set", "--key",
            f"own/{p}.key", "--identity", f"own/{p}.ledger.key", "--listen", bed.listen(p), "--peers", peers,
            "--connect-timeout", "60", "--idle-timeout", "120"]
    return args + (["--max-epsilon", str(MAX_EPSILON)] if p == "DO" and NODE_RUN_LOOP else [])


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the whole drill once (docs/deployment-drill.md, step by step); what the tests below check."""
    if REASON is not None:
        pytest.skip(f"the drill needs network namespaces: {REASON}")
    from clicooper.config import make_config

    base = tmp_path_factory.mktemp("drill")
    work = {p: base / p.lower() for p in PARTIES}
    for d in work.values():
        d.mkdir(mode=0o700)
    cfg = drill_config()
    times: dict[str, float] = {}
    res: dict[str, Any] = {"work": work, "times": times}
    t0 = time.monotonic()
    with WanBed.for_config(make_config(**cfg), PROFILES["lan"], workdir=base / "bed") as bed:
        # 1. each party, in its own namespace and directory, at the same time: its own keys; it tells the DO
        #    its fingerprint and ledger public key over another channel (here: the JSON the command printed)
        gen = {p: _start(bed, p, work[p], "certs", "--party", p, "--out", "own", "--json") for p in PARTIES}
        told = res["told"] = {p: _last_json(_finish(gen[p], p)) for p in PARTIES}
        times["keys"] = time.monotonic() - t0
        # 2. out of band: each trainer's card to the DO
        for p in ("T1", "T2"):
            _copy_public(work[p] / "own" / f"{p}.party.json", work["DO"] / "inbox" / f"{p}.party.json")
        # 3. the DO assembles the public set, checking each card against the fingerprint it was told
        _run(bed, "DO", work["DO"], "certs", "assemble", "--out", "set", "own/DO.party.json",
             "inbox/T1.party.json", "inbox/T2.party.json",
             *[a for p in ("T1", "T2") for a in ("--fingerprint", f"{p}={told[p]['fingerprint']}")], "--json")
        (work["DO"] / "run.json").write_text(json.dumps(cfg, indent=2) + "\n")
        # 4. out of band: the public set and the run config to every trainer
        for p in ("T1", "T2"):
            for f in sorted((work["DO"] / "set").iterdir()):
                _copy_public(f, work[p] / "set" / f.name)
            _copy_public(work["DO"] / "run.json", work[p] / "run.json")
        # 5. every node from its own directory, on its own keys, in its own namespace
        t = time.monotonic()
        nodes = {p: _start(bed, p, work[p], *_node_args(bed, p)) for p in PARTIES}
        res["events"] = {p: [json.loads(x) for x in _finish(nodes[p], p, timeout=300).splitlines()
                             if x.startswith("{")] for p in PARTIES}
        times["nodes"] = time.monotonic() - t
        # 6. out of band: the ledger public keys each party told, gathered by the verifier (here the DO)
        (work["DO"] / "trusted-keys.json").write_text(
            json.dumps({p: told[p]["ledger_public_key"] for p in PARTIES}, indent=2) + "\n")
        t = time.monotonic()
        res["verdict"] = _last_json(_run(bed, "DO", work["DO"], "verify", "run", "--trusted-keys",
                                         "trusted-keys.json", "--json"))
        times["verify"] = time.monotonic() - t
        if NODE_RUN_LOOP:
            # 7. T1 reveals its watermark signatures with its own key, on its side; each trainer sends its
            #    observations and its audit log (records, no keys); the DO imports, reports and audits T1
            t = time.monotonic()
            _run(bed, "T1", work["T1"], "reveal", "run", "--party", "T1", "--key", "own/T1.ledger.key",
                 "--out", "T1.reveal.json")
            _copy_public(work["T1"] / "T1.reveal.json", work["DO"] / "inbox" / "T1.reveal.json")
            for p in ("T1", "T2"):
                _copy_tree_public(work[p] / "run" / "observations" / p, work["DO"] / "inbox" / "observations" / p)
                _copy_tree_public(work[p] / "run" / "audit" / p, work["DO"] / "run" / "audit" / p)
            _run(bed, "DO", work["DO"], "observations", "import", "run", "--from", "inbox")
            audit = _start(bed, "DO", work["DO"], "audit", "run", "--party", "T1", "--reveal",
                           "inbox/T1.reveal.json", "--json")
            res["report"] = _last_json(_run(bed, "DO", work["DO"], "report", "run", "--out", "report", "--budget",
                                            "smoke", "--no-do-alone", "--attack", "gradient-leak", "--json"))
            res["audit"] = _last_json(_finish(audit, "DO"))
            times["reveal+import+report+audit"] = time.monotonic() - t
        times["total"] = time.monotonic() - t0
    res["secrets"] = {p: secret_forms(work[p] / "own", p, work[p] / "run" / "secrets") for p in PARTIES}
    print(json.dumps({"drill_times_s": {k: round(v, 1) for k, v in times.items()}}))
    return res


@needs_netns
@pytest.mark.slow
def test_drill_no_private_key_of_one_party_lies_in_another_partys_directory(drill: dict[str, Any]) -> None:
    work, secrets = drill["work"], drill["secrets"]
    assert foreign_keys(work, secrets) == []
    # `report` trains its undefended baseline in-process on the DO's machine, and that simulation makes its own
    # key for every party (report/baseline/keys/T1.key …): a name only — none is T1's or T2's (the scan above)
    assert all(f.parent == work["DO"] / "report" / "baseline" / "keys" for f in lookalikes(work)), lookalikes(work)
    for p in PARTIES:  # each party's own keys are where it made them, and nowhere else in its directory
        mine = sorted(str(f.relative_to(work[p])) for f in work[p].rglob("*.key") if "report" not in f.parts)
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
    assert (work["DO"] / "run" / "model").is_dir() and not (work["DO"] / "run" / "keys").exists()


needs_run_loop = pytest.mark.skipif(not NODE_RUN_LOOP, reason=NO_RUN_LOOP)


@needs_netns
@needs_run_loop
@pytest.mark.slow
def test_drill_the_do_node_kept_the_epsilon_budget_and_ran_live_detection(drill: dict[str, Any]) -> None:
    run = drill["work"]["DO"] / "run"
    privacy = json.loads((run / "privacy.json").read_text())
    eps = [r["epsilon"] for r in privacy["reports"]]
    assert eps and max(eps) <= MAX_EPSILON and privacy["epochs_accounted"] == 1, privacy["reports"]
    assert "stopped" not in json.loads((run / "metrics.json").read_text())
    det = json.loads((run / "attacks" / "active.json").read_text())["detection"]
    assert det["alarm"] is None and det["scrutinizer"]["tests"] > 0, det  # honest: checked live, no alarm


@needs_netns
@needs_run_loop
@pytest.mark.slow
def test_drill_report_and_the_audit_of_t1_by_its_own_reveal(drill: dict[str, Any]) -> None:
    audit, report = drill["audit"], drill["report"]
    assert audit["ok"] is True and audit["stages"] and all(s["ok"] for s in audit["stages"]), audit
    assert report["budget"] == "smoke" and (drill["work"]["DO"] / report["report"]).is_file(), report
