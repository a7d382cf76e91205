"""The wide-area bed (testbed/): namespaces + shaped veth links + relays. Skips, with the reason, only where
network namespaces cannot be made (not root, no iproute2, not permitted)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from clicooper.config import make_config
from clicooper.net.launch import launch_local
from clicooper.runs import load_run
from clicooper.training import train
from testbed.netns import PREFIX, Profile, WanBed, netns_unavailable

REASON = netns_unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no network namespaces here: {REASON}")

_SINK = r"""
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 7000)); s.listen()
c, _ = s.accept()
c.sendall(c.recv(1))
n = 0
while (d := c.recv(1 << 20)):
    n += len(d)
c.sendall(str(n).encode()); c.close()
"""
_SOURCE = r"""
import socket, sys, time
c = socket.create_connection(sys.argv[1].split(":")[0:1] + [int(sys.argv[1].split(":")[1])])
t = time.monotonic(); c.sendall(b"x"); c.recv(1); rtt = time.monotonic() - t
data = b"y" * int(sys.argv[2]); t = time.monotonic(); c.sendall(data); c.shutdown(socket.SHUT_WR)
n = int(c.recv(100)); dt = time.monotonic() - t
print(rtt, n, dt)
"""


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_shaped_link_holds_bandwidth_and_latency_and_leaves_nothing_behind() -> None:
    prof = Profile("test", rate_mbit=20.0, rtt_ms=30.0)
    with WanBed(["A", "B"], [("A", "B")], prof) as bed:
        token = bed.token
        assert f"{PREFIX}-{token}-A" in _namespaces()
        sink = subprocess.Popen(bed.wrap("B", [sys.executable, "-c", _SINK]))
        time.sleep(0.3)
        out = subprocess.run(bed.wrap("A", [sys.executable, "-c", _SOURCE, bed.peer_address("A", "B"), "3000000"]),
                             capture_output=True, text=True, timeout=60, check=True).stdout.split()
        sink.wait(10)
        rtt, n, dt = float(out[0]), int(out[1]), float(out[2])
        moved = bed.link_bytes()
    assert n == 3_000_000 and moved["A->B"] == 3_000_001
    assert rtt >= 0.030  # 2 × 15 ms through the relays
    rate = n * 8 / dt / 1e6
    assert 0.7 * 20 <= rate <= 1.02 * 20, rate  # tbf: at most the link's rate (TCP/IP headers ride on it too)
    assert token not in _namespaces()  # namespaces, veths and relays are gone


@pytest.mark.slow
def test_digits_over_the_wan_profile_with_resets_and_a_stall_ends_with_uninterrupted_weights(tmp_path: Path) -> None:
    """Pinned TLS, each node in its own namespace (100 Mbit/s, 40 ms RTT), int8 on the wire; connection
    resets and a stall mid-round: the links reconnect, resend what was not acknowledged, nothing restarts."""
    cfg = make_config(dataset="digits", model="digits-mlp", trainers=2, epochs=1, train_range=(0, 160),
                      provenance=False, wire_dtype="int8")
    ref = train(cfg.model_dump(), out=tmp_path / "inproc")
    faults = {2: lambda bed: bed.reset("DO", "T1"), 4: lambda bed: bed.stall("T1", "T2", 2.0),
              6: lambda bed: bed.reset("T1", "T2")}
    with WanBed.for_config(cfg, Profile("wan", 100.0, 40.0)) as bed:
        def on_event(ev: dict) -> None:
            if ev.get("event") == "step" and ev.get("party") == "DO" and ev.get("step") in faults:
                faults.pop(ev["step"])(bed)

        res = launch_local(cfg, tmp_path / "wan", placement=bed, on_event=on_event, max_restarts=0,
                           connect_timeout_s=30, idle_timeout_s=60, timeout_s=240)
        stats = bed.stats()
    assert not faults and res.restarts == 0
    assert stats["DO->T1"]["resets"] + stats["T1->DO"]["resets"] >= 1 and stats["T1->T2"]["stalls"] == 1
    a, b = load_run(ref.path), load_run(tmp_path / "wan")
    for k, mod in a.modules.items():
        for n, v in mod.state_dict().items():
            assert (v - b.modules[k].state_dict()[n]).abs().max() < 1e-5, (k, n)
