"""Back-pressure on a link (net/outbound.py): what waits for a slow or stalled peer stays bounded."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from clicooper.errors import WireError
from clicooper.net import WireLimits
from clicooper.protocol.messages import Activations, Header
from support.net import loopback_mesh

torch.set_num_threads(1)
LIMITS = WireLimits(max_tensor_bytes=1 << 20)
PAYLOAD = torch.ones(64, 1024)  # 256 KiB a message


def _act(step: int) -> Activations:
    return Activations(Header("DO", "T1", 0, step), PAYLOAD * step)


def test_sender_blocks_at_the_bound_and_resumes_when_the_peer_drains() -> None:
    # prepare: T1 takes 2 messages into its inbox and then stops acknowledging; DO may hold 4 unacknowledged
    bound = 4 * 270_000
    mesh = loopback_mesh(["DO", "T1"], limits=LIMITS, inbound_capacity=2, max_pending_bytes=bound)
    try:
        sent: list[int] = []

        def produce() -> None:
            for i in range(40):
                mesh["DO"].send(_act(i))
                sent.append(i)

        th = threading.Thread(target=produce, daemon=True)
        # execute: the producer runs ahead until the link holds the bound, then waits
        th.start()
        time.sleep(1.5)
        link = mesh["DO"]._out["T1"]
        held = len(sent)
        assert th.is_alive() and held < 40
        assert link.stats["peak_pending_bytes"] <= bound
        # the receiver drains: everything arrives, in order, nothing lost
        got = [mesh["T1"].recv(timeout=10) for _ in range(40)]
        th.join(10)
        # assert
        assert [m.header.step for m in got] == list(range(40)) and not th.is_alive()
        assert link.stats["peak_pending_bytes"] <= bound
    finally:
        for t in mesh.values():
            t.close(grace=0)


def test_a_peer_that_never_acknowledges_fails_the_sender_with_a_clear_error() -> None:
    mesh = loopback_mesh(["DO", "T1"], limits=LIMITS, inbound_capacity=1, max_pending_bytes=600_000,
                         connect_timeout_s=2.0)
    try:
        with pytest.raises(WireError, match="acknowledged nothing for 2 s"):
            for i in range(20):
                mesh["DO"].send(_act(i))
    finally:
        for t in mesh.values():
            t.close(grace=0)
