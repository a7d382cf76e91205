"""Bad input to `clicooper node`: unreachable peer, wrong certificate, port in use, wrong key, bad flags.

Each must fail with one clear line naming the peer (or file) and what to do, and a non-zero exit code.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clicooper.cli import app
from clicooper.errors import ConfigError, WireError
from clicooper.net import GrpcTransport, TlsConfig, load_party_cert
from clicooper.net.certs import write_cert_set
from clicooper.net.node import NodeOptions, parse_peers, run_node

CFG = {"dataset": "digits", "model": "digits-mlp", "trainers": 2, "epochs": 1, "provenance": False}


@pytest.fixture()
def cfg_file(tmp_path: Path) -> Path:
    f = tmp_path / "run.json"
    f.write_text(json.dumps(CFG))
    return f


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_peer_names_it(cfg_file: Path, tmp_path: Path) -> None:
    # prepare: T1 whose DO (and T2) are not running
    port = closed_port()
    args = ["node", "--config", str(cfg_file), "--party", "T1", "--run-dir", str(tmp_path / "t1"),
            "--listen", "127.0.0.1:0", "--peers", f"DO=127.0.0.1:{port},T2=127.0.0.1:{port}",
            "--insecure-loopback", "--connect-timeout", "1.5"]
    # execute
    r = CliRunner().invoke(app, args)
    # assert
    assert r.exit_code != 0
    assert "peer DO is unreachable" in r.output and "clicooper node" in r.output
    assert "Traceback" not in r.output


def test_port_in_use(cfg_file: Path, tmp_path: Path) -> None:
    # prepare
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        opts = NodeOptions(config=cfg_file, party="T2", run_dir=tmp_path / "t2", listen=f"127.0.0.1:{port}",
                           peers={"DO": "127.0.0.1:1", "T1": "127.0.0.1:2"}, insecure_loopback=True)
        # execute / assert
        with pytest.raises(WireError, match=r"T2 cannot listen on 127.0.0.1:\d+: the port is in use"):
            run_node(opts)
    finally:
        busy.close()


def test_wrong_key(cfg_file: Path, tmp_path: Path) -> None:
    # prepare
    write_cert_set(["DO", "T1", "T2"], tmp_path / "certs")
    args = ["node", "--config", str(cfg_file), "--party", "T1", "--run-dir", str(tmp_path / "t1"),
            "--listen", "127.0.0.1:0", "--peers", "DO=127.0.0.1:1,T2=127.0.0.1:2",
            "--certs", str(tmp_path / "certs"), "--key", str(tmp_path / "certs" / "T2.key")]
    # execute
    r = CliRunner().invoke(app, args)
    # assert
    assert r.exit_code != 0
    assert "wrong key" in r.output and "T1" in r.output and "--key" in r.output


def test_wrong_certificate_at_peer_address(cfg_file: Path, tmp_path: Path) -> None:
    # prepare: a "DO" listening with a certificate from ANOTHER set than T1 pins
    write_cert_set(["DO", "T1", "T2"], tmp_path / "ours")
    write_cert_set(["DO", "T1", "T2"], tmp_path / "theirs")
    theirs = {n: load_party_cert(tmp_path / "theirs", n) for n in ("DO", "T1", "T2")}
    impostor = GrpcTransport("DO", run_id="x", listen="127.0.0.1:0", peers={"T1": "", "T2": ""},
                             tls=TlsConfig.from_certs(theirs["DO"], theirs)).start()
    try:
        opts = NodeOptions(config=cfg_file, party="T1", run_dir=tmp_path / "t1", listen="127.0.0.1:0",
                           peers={"DO": impostor.address, "T2": f"127.0.0.1:{closed_port()}"},
                           certs=tmp_path / "ours", connect_timeout_s=2.0)
        # execute / assert
        with pytest.raises(WireError, match="certificate mismatch: peer DO"):
            run_node(opts)
    finally:
        impostor.close(grace=0)


def test_swapped_certificate_file_and_bad_flags(cfg_file: Path, tmp_path: Path) -> None:
    # prepare: T2.crt replaced by another set's file → the pin table no longer matches it
    write_cert_set(["DO", "T1", "T2"], tmp_path / "certs")
    write_cert_set(["DO", "T1", "T2"], tmp_path / "other")
    (tmp_path / "certs" / "T2.crt").write_bytes((tmp_path / "other" / "T2.crt").read_bytes())
    base = dict(config=cfg_file, party="T1", run_dir=tmp_path / "t1", listen="127.0.0.1:0",
                peers={"DO": "127.0.0.1:1", "T2": "127.0.0.1:2"})
    # execute / assert
    with pytest.raises(ConfigError, match="certificate file of T2 has fingerprint"):
        run_node(NodeOptions(**base, certs=tmp_path / "certs"))
    with pytest.raises(ConfigError, match="--certs DIR is required"):
        run_node(NodeOptions(**base))
    with pytest.raises(ConfigError, match="--peers lacks T2"):
        run_node(NodeOptions(**(base | {"peers": {"DO": "127.0.0.1:1"}}), insecure_loopback=True))
    with pytest.raises(ConfigError, match="not a party of this run"):
        run_node(NodeOptions(**(base | {"party": "T7"}), insecure_loopback=True))
    with pytest.raises(ConfigError, match="only allowed on 127.0.0.1"):
        run_node(NodeOptions(**(base | {"listen": "0.0.0.0:0"}), insecure_loopback=True))
    with pytest.raises(ConfigError, match="not name=host:port"):
        parse_peers("T1:7001")
