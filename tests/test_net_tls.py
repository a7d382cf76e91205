"""Pinned mutual TLS: the right certificates connect; a wrong one, either way, is refused by name."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest
import torch

from clicooper.errors import ConfigError, WireError
from clicooper.net import (
    GrpcTransport,
    TlsConfig,
    cert_fingerprint,
    fingerprints,
    generate_party_cert,
    generate_party_certs,
    load_party_cert,
    save_party_cert,
)
from clicooper.net.certs import party_dns_name
from clicooper.net.proto import clicooper_pb2 as pb
from clicooper.net.serde import message_to_bytes
from clicooper.protocol.messages import Activations, Header
from support.net import RawLinkClient, loopback_mesh

torch.set_num_threads(1)
RUN = "tls-run"


@pytest.fixture(scope="module")
def certs():
    return generate_party_certs(["DO", "T1", "T2"])


def _tls_pair(do_tls: TlsConfig, t1_tls: TlsConfig, timeout: float = 1.5) -> tuple[GrpcTransport, GrpcTransport]:
    t1 = GrpcTransport("T1", run_id=RUN, listen="127.0.0.1:0", peers={"DO": ""}, tls=t1_tls).start()
    do = GrpcTransport("DO", run_id=RUN, listen="127.0.0.1:0", peers={"T1": t1.address}, tls=do_tls,
                       connect_timeout_s=timeout).start()
    return do, t1


def test_certificates_are_self_signed_pinnable_and_persist(certs, tmp_path):
    fps = fingerprints(certs)
    assert len(set(fps.values())) == 3 and all(len(f) == 64 for f in fps.values())
    _, key = save_party_cert(certs["T1"], tmp_path)
    assert (key.stat().st_mode & 0o777) == 0o600
    back = load_party_cert(tmp_path, "T1")
    assert back == certs["T1"] and back.fingerprint == fps["T1"]
    assert "BEGIN" not in repr(back)  # the key is never printed
    from cryptography import x509
    cert = x509.load_pem_x509_certificate(certs["T1"].cert_pem)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert party_dns_name("T1") in cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def test_pinned_tls_delivers(certs):
    mesh = loopback_mesh(["DO", "T1", "T2"], certs=certs, run_id=RUN)
    try:
        x = torch.randn(8, 4)
        mesh["DO"].send(Activations(Header("DO", "T1", 0, 0), x))
        mesh["T2"].send(Activations(Header("T2", "T1", 0, 0), x + 1))
        got = {m.header.sender: m.tensor for m in (mesh["T1"].recv(timeout=10), mesh["T1"].recv(timeout=10))}
        assert torch.equal(got["DO"], x) and torch.equal(got["T2"], x + 1)
    finally:
        for t in mesh.values():
            t.close()


def test_client_rejects_a_server_whose_certificate_is_not_pinned(certs):
    rogue = generate_party_cert("T1")  # same name, another key: an impostor listening at T1's address
    do_tls = TlsConfig.from_certs(certs["DO"], {"T1": certs["T1"]})
    t1_tls = TlsConfig.from_certs(rogue, {"DO": certs["DO"]})
    do, t1 = _tls_pair(do_tls, t1_tls)
    try:
        with pytest.raises(WireError, match=r"certificate mismatch: peer T1 at 127\.0\.0\.1:\d+ presents "
                                            f"certificate {rogue.fingerprint[:16]}"):
            do.wait_for_peers(timeout=1.5)
        assert t1.recv(timeout=0.05) is None
    finally:
        do.close(grace=0)
        t1.close(grace=0)


def test_server_rejects_a_client_whose_certificate_is_not_pinned(certs):
    rogue = generate_party_cert("DO")
    do_tls = TlsConfig.from_certs(rogue, {"T1": certs["T1"]})  # T1 pins the real DO, not this one
    t1_tls = TlsConfig.from_certs(certs["T1"], {"DO": certs["DO"]})
    do, t1 = _tls_pair(do_tls, t1_tls)
    try:
        do.send(Activations(Header("DO", "T1", 0, 0), torch.ones(2)))
        with pytest.raises(WireError, match=r"T1 at .* presents its pinned certificate but refuses ours"):
            do.recv(timeout=10)
        assert t1.recv(timeout=0.05) is None
    finally:
        do.close(grace=0)
        t1.close(grace=0)


def test_a_pinned_peer_cannot_claim_another_name(certs):
    t1 = GrpcTransport("T1", run_id=RUN, listen="127.0.0.1:0", peers={"DO": "", "T2": ""},
                       tls=TlsConfig.from_certs(certs["T1"], certs)).start()
    creds = grpc.ssl_channel_credentials(certs["T1"].cert_pem, certs["T2"].key_pem, certs["T2"].cert_pem)
    try:
        with pytest.raises(grpc.RpcError) as e:  # T2's certificate, claiming to be DO
            RawLinkClient(t1.address, sender="DO", run_id=RUN, credentials=creds,
                          options=[("grpc.ssl_target_name_override", party_dns_name("T1"))])
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "belongs to T2" in e.value.details()
        with RawLinkClient(t1.address, sender="T2", run_id=RUN, credentials=creds,
                           options=[("grpc.ssl_target_name_override", party_dns_name("T1"))]) as c:
            env = message_to_bytes(Activations(Header("T2", "T1", 0, 0, run_id=RUN, seq=1), torch.ones(1)))
            assert c.send_bytes(env).status == pb.Ack.ACCEPTED
    finally:
        t1.close(grace=0)


def test_tls_config_checks_certificates_against_the_genesis_pins(certs):
    pinned = fingerprints(certs)
    TlsConfig.from_certs(certs["DO"], certs, pinned=pinned)  # consistent
    swapped = {**pinned, "T1": cert_fingerprint(certs["T2"].cert_pem)}
    with pytest.raises(ConfigError, match="certificate file of T1 has fingerprint"):
        TlsConfig.from_certs(certs["DO"], certs, pinned=swapped)
    with pytest.raises(ConfigError, match="not the one the genesis pins for DO"):
        TlsConfig.from_certs(generate_party_cert("DO"), certs, pinned=pinned)
    with pytest.raises(ConfigError, match="pinned certificate"):
        GrpcTransport("DO", run_id=RUN, listen="127.0.0.1:0", peers={"T3": ""},
                      tls=TlsConfig.from_certs(certs["DO"], certs))


# ---------------------------------------------------------------------------------- network namespaces


def _netns_ok() -> str | None:
    if sys.platform != "linux" or shutil.which("ip") is None:
        return "no `ip` tool"
    probe = f"cc-probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        return f"`ip netns add` not permitted: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


def test_two_namespaces_over_veth_with_pinned_tls(certs, tmp_path):
    """DO and T1 in two network namespaces joined by a veth pair (a real, non-loopback link)."""
    why = _netns_ok()
    if why:
        print(f"skipping netns test: {why}")
        pytest.skip(why)
    tag = uuid.uuid4().hex[:6]
    ns = [f"cc-a-{tag}", f"cc-b-{tag}"]
    va, vb = f"cca{tag}", f"ccb{tag}"
    ips = ["10.213.7.1", "10.213.7.2"]

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)

    for n in ("DO", "T1"):
        save_party_cert(certs[n], tmp_path)
    procs: list[subprocess.Popen[str]] = []
    try:
        for n in ns:
            ip("netns", "add", n)
        ip("link", "add", va, "type", "veth", "peer", "name", vb)
        for n, v, addr in zip(ns, (va, vb), ips, strict=True):
            ip("link", "set", v, "netns", n)
            ip("-n", n, "addr", "add", f"{addr}/24", "dev", v)
            ip("-n", n, "link", "set", v, "up")
            ip("-n", n, "link", "set", "lo", "up")
        here = Path(__file__).resolve().parent  # tests/: the children run support.chain_node
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent / "src"), str(here)])}
        for n, name, addr in zip(ns, ("DO", "T1"), ips, strict=True):
            cmd = ["ip", "netns", "exec", n, sys.executable, "-m", "support.chain_node", "--name", name,
                   "--parties", "DO,T1", "--certs", str(tmp_path), "--listen", f"{addr}:0", "--run-id", RUN,
                   "--steps", "3", "--deadline", "30"]
            procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, env=env))
        hellos = [json.loads(p.stdout.readline()) for p in procs]
        table = json.dumps({h["name"]: h["address"] for h in hellos})
        assert all(h["address"].startswith("10.213.7.") for h in hellos)
        for p in procs:
            p.stdin.write(table + "\n")
            p.stdin.flush()
        results = [json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1]) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [p.stderr for p in procs]
        assert results[0]["reason"] == "shutdown" and results[0]["outputs"] == [2.0, 4.0, 6.0]
        assert results[0]["grads"] == [2.0, 2.0, 2.0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        for n in ns:
            subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=10)
