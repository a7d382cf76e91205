"""In-band delivery of the trainers' segments to the DO, expired certificates, closed runs (docs/network.md).

End to end: ``launch --local`` (provenance on, plaintext loopback): the segments the DO received over the wire
equal the trainers' own files byte for byte and the ledger's final commitments; ``RUN/model`` holds the DO's
copies; a node started again on the finished run directory stops with "the run is closed" and changes nothing.
Unit level: the DO's reassembly and checks refuse a tampered or mis-shaped segment, naming the trainer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
import torch
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from clicooper.config import make_config
from clicooper.core.checkpoint import model_file_metadata
from clicooper.data import load_dataset
from clicooper.errors import ConfigError, LedgerError, RunDirError, WireError
from clicooper.models.blueprint import blueprint_for
from clicooper.net import TlsConfig, generate_party_certs, save_party_cert
from clicooper.net.builder import node_party
from clicooper.net.certs import PartyCert, party_dns_name
from clicooper.net.delivery import (
    SEGMENT,
    SEGMENT_END,
    ExpectedSegment,
    SegmentInbox,
    check_segment,
    segment_payloads,
)
from clicooper.net.launch import launch_local
from clicooper.net.node import NodeOptions, load_tls, make_node
from clicooper.protocol.messages import Control, Header
from clicooper.provenance.commitments import segment_commitment
from clicooper.provenance.ledger import Ledger

torch.set_num_threads(1)
TINY = {
    "dataset": "digits",
    "model": "digits-mlp",
    "trainers": 2,
    "epochs": 1,
    "train_range": (0, 160),
    "provenance": True,
}


# ------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("delivery") / "run"
    res = launch_local(TINY, run, insecure_loopback=True, max_restarts=0, timeout_s=180)
    assert res.restarts == 0
    return run


def test_delivered_segments_equal_trainer_files_and_ledger(launched: Path) -> None:
    # prepare
    closing = Ledger.open(launched / "ledger.jsonl", repair=False).entries[-1]
    final = dict(closing.final_commitments)
    # execute / assert: per trainer, DO's received copy == trainer's own file == RUN/model, and == the ledger
    for t, pos in (("T1", 1), ("T2", 2)):
        name = f"seg_{t[1:]}.safetensors"
        got = (launched / "nodes" / "DO" / "model" / name).read_bytes()
        assert got == (launched / "nodes" / t / "model" / name).read_bytes()
        assert got == (launched / "model" / name).read_bytes()
        assert segment_commitment(st_load(got)) == final[str(pos)]
    for p in ("DO", "T1", "T2"):
        assert json.loads((launched / "nodes" / p / "state.json").read_text())["finished"] is True
    log = (launched / "nodes" / "DO" / "node.log").read_text()
    assert "error" not in log
    assert json.loads((launched / "metrics.json").read_text())["final_test_acc"] > 0.1


def _tree(d: Path) -> dict[str, tuple[int, str]]:
    return {
        str(f.relative_to(d)): (f.stat().st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest())
        for f in sorted(d.rglob("*"))
        if f.is_file()
    }


@pytest.mark.parametrize("party", ["DO", "T1"])
def test_node_on_a_closed_run_stops_and_changes_nothing(launched: Path, party: str) -> None:
    # prepare
    node_dir = launched / "nodes" / party
    before = _tree(node_dir)
    peers = {
        "DO": {"T1": "127.0.0.1:1", "T2": "127.0.0.1:2"},
        "T1": {"DO": "127.0.0.1:1", "T2": "127.0.0.1:2"},
    }
    opts = NodeOptions(
        config=launched / "config.json",
        party=party,
        run_dir=node_dir,
        listen="127.0.0.1:0",
        peers=peers[party],
        insecure_loopback=True,
    )
    # execute / assert
    with pytest.raises(
        RunDirError, match=rf"{party}: the run in .* is closed .*closing entry.*nothing to resume"
    ):
        make_node(opts)
    assert _tree(node_dir) == before


# ------------------------------------------------------------------------------------------- unit level
@pytest.fixture(scope="module")
def t1_segment() -> tuple[ExpectedSegment, dict[str, torch.Tensor], dict[str, str]]:
    """The DO's expectation of T1's segment and a genuine T1 segment (trained a little: not the initial one)."""
    cfg = make_config(**TINY).resolved(160)
    ds = load_dataset("digits")
    do = node_party(cfg, "DO", blueprint_for(cfg, ds.input_shape, ds.num_classes), dataset=ds)
    state = {k: v + 0.01 for k, v in do.modules["T1"].state_dict().items()}
    meta = model_file_metadata(cfg, do.plan, "T1", cfg.epochs)
    exp = ExpectedSegment.of_state(
        "T1", 1, "seg_1.safetensors", do.modules["T1"].state_dict(), meta, segment_commitment(state)
    )
    return exp, state, meta


def _records(data: bytes, chunk: int) -> list[Control]:
    return [
        Control(Header("T1", "DO", 1, 0), kind, payload)
        for kind, payload in segment_payloads(data, position=1, file="seg_1.safetensors", chunk=chunk)
    ]


def test_inbox_reassembles_and_ignores_exact_resends(t1_segment) -> None:
    # prepare
    exp, state, meta = t1_segment
    data = st_save(state, metadata=meta)
    recs = _records(data, chunk=4096)
    assert len(recs) > 3 and recs[-1].kind == SEGMENT_END
    inbox = SegmentInbox([exp], max_chunk=4096)
    # execute: chunks, an exact resend of the first two (a restarted trainer), the rest, the end
    results = [inbox.feed(m) for m in recs[:3] + recs[:2] + recs[3:]]
    # assert
    assert inbox.done and results[-1] is not None
    got_exp, got_data, tensors = results[-1]
    assert got_exp is exp and got_data == data and set(tensors) == set(state)
    assert inbox.feed(recs[-1]) is None  # the end record resent: nothing new


def test_tampered_weight_is_refused_naming_the_trainer(t1_segment) -> None:
    # prepare: one weight changed after the commitment
    exp, state, meta = t1_segment
    bad = dict(state)
    k = next(iter(bad))
    bad[k] = bad[k].clone()
    bad[k].view(-1)[0] += 1e-3
    # execute / assert: the shapes are fine, the ledger's commitment is not
    with pytest.raises(LedgerError, match=r"delivered by T1 \(position 1.*ledger's final commitment"):
        check_segment(exp, st_save(bad, metadata=meta))
    inbox = SegmentInbox([exp], max_chunk=4096)
    with pytest.raises(LedgerError, match="T1"):
        for m in _records(st_save(bad, metadata=meta), chunk=4096):
            inbox.feed(m)
    assert not inbox.done and inbox.missing == ["T1 (position 1)"]


def test_wrong_shape_names_or_metadata_refused(t1_segment) -> None:
    # prepare
    exp, state, meta = t1_segment
    k = next(iter(state))
    wrong_shape = dict(state) | {k: torch.zeros(3, 3)}
    extra = dict(state) | {"x": torch.zeros(1)}
    # execute / assert
    with pytest.raises(WireError, match=rf"delivered by T1.*tensor {k} has shape \(3, 3\)"):
        check_segment(exp, st_save(wrong_shape, metadata=meta))
    with pytest.raises(WireError, match="T1.*holds tensors"):
        check_segment(exp, st_save(extra, metadata=meta))
    with pytest.raises(WireError, match="T1.*metadata"):
        check_segment(exp, st_save(state, metadata=meta | {"epoch": "0"}))
    with pytest.raises(WireError, match="T1.*not a valid safetensors"):
        check_segment(exp, b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    nan = dict(state) | {k: torch.full_like(state[k], float("nan"))}
    with pytest.raises(WireError, match="T1.*NaN"):
        check_segment(
            ExpectedSegment(exp.trainer, 1, exp.file, exp.shapes, meta), st_save(nan, metadata=meta)
        )


def test_altered_or_unasked_chunks_refused(t1_segment) -> None:
    # prepare
    exp, state, meta = t1_segment
    recs = _records(st_save(state, metadata=meta), chunk=4096)
    changed = Control(recs[0].header, SEGMENT, recs[0].payload | {"data": recs[1].payload["data"]})
    # execute / assert: a chunk index reused with other bytes; a skipped chunk; a wrong digest; a stranger
    inbox = SegmentInbox([exp], max_chunk=4096)
    inbox.feed(recs[0])
    with pytest.raises(WireError, match="chunk 0 from T1.*other bytes"):
        inbox.feed(changed)
    with pytest.raises(WireError, match="chunk 2 from T1.*out of order"):
        inbox.feed(recs[2])
    inbox = SegmentInbox([exp], max_chunk=4096)
    for m in recs[:-1]:
        inbox.feed(m)
    with pytest.raises(WireError, match="from T1 .*incomplete or altered"):
        inbox.feed(Control(recs[-1].header, SEGMENT_END, recs[-1].payload | {"sha256": "0" * 64}))
    stranger = Control(Header("T2", "DO", 1, 0), SEGMENT, recs[0].payload)
    with pytest.raises(WireError, match="T2 sent a segment for position 1"):
        inbox.feed(stranger)
    with pytest.raises(WireError, match="above 4096"):
        SegmentInbox([exp], max_chunk=4096).feed(_records(st_save(state, metadata=meta), chunk=8192)[0])


# ------------------------------------------------------------------------------------------- certificates
def _cert(name: str, before: dt.datetime, after: dt.datetime) -> PartyCert:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(before)
        .not_valid_after(after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(party_dns_name(name))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return PartyCert(
        name,
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


NOW = dt.datetime.now(dt.UTC)
EXPIRED = (NOW - dt.timedelta(days=400), NOW - dt.timedelta(days=35))
FUTURE = (NOW + dt.timedelta(days=30), NOW + dt.timedelta(days=400))


def test_expired_or_future_certificates_refused() -> None:
    # prepare
    good = generate_party_certs(["DO", "T1"])
    old_t1 = _cert("T1", *EXPIRED)
    day = EXPIRED[1].strftime("%Y-%m-%d")
    # execute / assert: own certificate, a peer's, one not valid yet
    with pytest.raises(
        ConfigError, match=rf"this party T1 expired on {day}.*clicooper certs RUN_CONFIG.*mid-run"
    ):
        TlsConfig.from_certs(old_t1, {"DO": good["DO"]})
    with pytest.raises(ConfigError, match=rf"peer T1 expired on {day}.*new certificate set"):
        TlsConfig.from_certs(good["DO"], {"T1": old_t1})
    with pytest.raises(ConfigError, match=rf"peer T1 is not valid before {FUTURE[0]:%Y-%m-%d}.*clock"):
        TlsConfig.from_certs(good["DO"], {"T1": _cert("T1", *FUTURE)})


def test_node_refuses_an_expired_pinned_certificate(tmp_path: Path) -> None:
    # prepare: a certificate set whose DO certificate has expired (pinned in fingerprints.json as made)
    certs = generate_party_certs(["T1", "T2"]) | {"DO": _cert("DO", *EXPIRED)}
    for c in certs.values():
        save_party_cert(c, tmp_path)
    (tmp_path / "fingerprints.json").write_text(json.dumps({n: c.fingerprint for n, c in certs.items()}))
    # execute / assert
    with pytest.raises(ConfigError, match=r"certificate of peer DO expired on .*clicooper certs"):
        load_tls(tmp_path, "T1", None, ["DO", "T2"])


# ------------------------------------------------------------------------------------------- resumed delivery
def _run_nodes(run: Path, timeout: float = 90.0) -> dict[str, int]:
    """Start every node of ``run`` again (as ``launch`` does) and wait for them; returns exit codes."""
    import queue
    import time

    from clicooper.net.builder import load_run_config
    from clicooper.net.launch import NodeSetup, _start_nodes

    procs = _start_nodes(run, load_run_config(run / "config.json"), NodeSetup(insecure=True, idle_timeout_s=30),
                         queue.Queue())
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end and any(p.popen.poll() is None for p in procs.values()):
            if procs["DO"].popen.poll() not in (None, 0):
                break
            time.sleep(0.2)
    finally:
        for p in procs.values():
            p.stop()
    return {n: p.popen.returncode for n, p in procs.items()}


def test_delivery_cut_short_resumes(launched: Path, tmp_path: Path) -> None:
    """Ledger closed, delivery not done (as after a crash in it): the nodes start again, resume and deliver
    (a closed ledger alone is not a finished run). Refusals are tested on the DO's check function above."""
    import shutil

    # prepare: a copy of the finished run, put back to "closed but not delivered"
    run = tmp_path / "run"
    shutil.copytree(launched, run)
    ledger = (run / "ledger.jsonl").read_bytes()
    for p in ("DO", "T1", "T2"):
        (run / "nodes" / p / "state.json").write_text(json.dumps({"completed_rounds": 1}))
    for f in ("seg_1.safetensors", "seg_2.safetensors"):
        (run / "nodes" / "DO" / "model" / f).unlink()
    # execute
    codes = _run_nodes(run)
    # assert
    assert codes == {"DO": 0, "T1": 0, "T2": 0}, (run / "nodes" / "DO" / "node.log").read_text()[-2000:]
    for t in ("T1", "T2"):
        name = f"seg_{t[1:]}.safetensors"
        assert (run / "nodes" / "DO" / "model" / name).read_bytes() == (
            run / "nodes" / t / "model" / name
        ).read_bytes()
        assert json.loads((run / "nodes" / t / "state.json").read_text())["finished"] is True
    assert (run / "ledger.jsonl").read_bytes() == ledger  # nothing appended: the closing stays the last entry
