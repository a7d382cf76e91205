"""GrpcTransport on 127.0.0.1: delivery, every rejection rule live, fuzzing, resend, failures."""

from __future__ import annotations

import math
import socket
import time

import grpc
import pytest
import torch
from hypothesis import HealthCheck, given, settings

from clicooper.errors import ConfigError, WireError
from clicooper.net import GrpcTransport, WireLimits
from clicooper.net.proto import clicooper_pb2 as pb
from clicooper.net.serde import message_to_bytes, message_to_proto
from clicooper.protocol.messages import Activations, Control, Gradients, Header
from support.net import RawLinkClient, loopback_mesh, malformed_envelope_strategy

torch.set_num_threads(1)
RUN = "test-run"
SMALL = WireLimits(max_tensor_bytes=1 << 16, max_control_bytes=1 << 12)


def _act(step: int, t: torch.Tensor | None = None, *, seq: int = 0, run_id: str = RUN, sender: str = "DO",
         receiver: str = "T1") -> Activations:
    return Activations(Header(sender, receiver, 0, step, run_id=run_id, seq=seq),
                       torch.ones(2, 3) * step if t is None else t)


@pytest.fixture
def receiver():
    """T1 alone, listening in plaintext on loopback, expecting (B, 3) activations from DO."""
    t = GrpcTransport("T1", run_id=RUN, listen="127.0.0.1:0", peers={"DO": "", "T2": ""},
                      insecure_loopback=True, limits=SMALL, expected_shapes={("DO", "activations"): (None, 3)},
                      max_rejections=None).start()
    yield t
    t.close(grace=0)


def test_delivery_in_order_and_self_send():
    mesh = loopback_mesh(["DO", "T1"])
    try:
        for i in range(30):
            mesh["DO"].send(_act(i))
        got = [mesh["T1"].recv(timeout=5) for _ in range(30)]
        assert [m.header.step for m in got] == list(range(30))
        assert [m.header.seq for m in got] == list(range(1, 31))
        assert all(m.header.run_id == RUN for m in got)
        mesh["DO"].send(_act(99, receiver="DO"))  # DO head → DO tail stays local
        assert mesh["DO"].recv(timeout=1).header.step == 99
        mesh["DO"].run_until_idle(timeout=5)
        assert mesh["T1"].recv(timeout=0.05) is None
    finally:
        for t in mesh.values():
            t.close()


def test_each_rejection_rule_live_and_run_continues(receiver):
    with RawLinkClient(receiver.address, sender="DO", run_id=RUN) as c:
        assert c.hello.status == pb.Ack.HELLO and c.hello.seq == 0
        first = message_to_bytes(_act(1, seq=1))
        assert c.send_bytes(first).status == pb.Ack.ACCEPTED
        assert receiver.recv(timeout=2).header.seq == 1
        cases = {
            "duplicate": (first, pb.Ack.DUPLICATE, ""),
            "replay": (message_to_bytes(_act(2, seq=1)), pb.Ack.REJECTED, "replayed or stale"),
            "wrong run": (message_to_bytes(_act(2, seq=2, run_id="other")), pb.Ack.REJECTED, "wrong run id"),
            "oversized": (message_to_bytes(_act(2, torch.ones(SMALL.max_tensor_bytes // 12 + 1, 3), seq=3)),
                          pb.Ack.REJECTED, "max_tensor_bytes"),
            "wrong shape": (message_to_bytes(_act(2, torch.ones(2, 4), seq=4)), pb.Ack.REJECTED, "plan expects"),
            "nan": (message_to_bytes(_act(2, torch.tensor([[1.0, math.nan, 0.0]]), seq=5)), pb.Ack.REJECTED,
                    "NaN"),
            "impostor": (message_to_bytes(_act(2, seq=6, sender="T2")), pb.Ack.REJECTED, "on the link of DO"),
            "misrouted": (message_to_bytes(_act(2, seq=7, receiver="T2")), pb.Ack.REJECTED, "addressed to"),
            "garbage": (b"\xff\xff\xff", pb.Ack.REJECTED, "not a valid Envelope"),
        }
        for name, (data, status, reason) in cases.items():
            ack = c.send_bytes(data)
            assert ack.status == status, name
            assert reason in ack.reason, (name, ack.reason)
        assert c.send_bytes(message_to_bytes(_act(3, seq=8))).status == pb.Ack.ACCEPTED
    msg = receiver.recv(timeout=2)
    assert (msg.header.step, msg.header.seq) == (3, 8)  # nothing rejected got through, order kept
    assert receiver.recv(timeout=0.05) is None
    assert receiver.stats == {"accepted": 2, "duplicates": 1, "rejected": 8}
    assert len(receiver.rejections) == 8


def test_stream_level_refusals(receiver):
    with pytest.raises(grpc.RpcError) as e:
        RawLinkClient(receiver.address, sender="DO", run_id="another-run")
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "same genesis" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        RawLinkClient(receiver.address, sender="Mallory", run_id=RUN)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # beyond gRPC's own limit the stream is cut; the transport keeps serving other streams
    with RawLinkClient(receiver.address, sender="DO", run_id=RUN) as c, pytest.raises(grpc.RpcError) as e:
        c.send_bytes(b"\0" * (SMALL.max_message_bytes + 10))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with RawLinkClient(receiver.address, sender="DO", run_id=RUN) as c:
        assert c.send_bytes(message_to_bytes(_act(1, seq=1))).status == pb.Ack.ACCEPTED


def test_fuzz_live_receiver_rejects_every_malformed_envelope(receiver):
    client = RawLinkClient(receiver.address, sender="DO", run_id=RUN)
    statuses: list[int] = []

    @settings(max_examples=1000, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=malformed_envelope_strategy(RUN, "DO", "T1"))
    def fuzz(data: bytes) -> None:
        ack = client.send_bytes(data)  # bounded: the receiver answers every request on the stream
        statuses.append(ack.status)
        assert ack.status == pb.Ack.REJECTED and ack.reason

    try:
        t0 = time.monotonic()
        fuzz()
        # the link is still alive and in order afterwards
        assert client.send_bytes(message_to_bytes(_act(1, seq=1))).status == pb.Ack.ACCEPTED
    finally:
        client.close()
    assert len(statuses) >= 1000 and time.monotonic() - t0 < 60
    assert receiver.recv(timeout=2).header.seq == 1
    assert receiver.stats["rejected"] == len(statuses)


def test_too_many_rejections_stop_the_receiver_cleanly():
    t = GrpcTransport("T1", run_id=RUN, listen="127.0.0.1:0", peers={"DO": ""}, insecure_loopback=True,
                      max_rejections=3).start()
    try:
        with RawLinkClient(t.address, sender="DO", run_id=RUN) as c:
            for _ in range(4):
                c.send_bytes(b"junk")
        with pytest.raises(WireError, match="more than 3 rejected messages"):
            t.recv(timeout=2)
    finally:
        t.close(grace=0)


def test_restarted_sender_exact_resend_is_deduplicated(receiver):
    # prepare: a DO that sent three messages, then "crashed"
    do = GrpcTransport("DO", run_id=RUN, listen="127.0.0.1:0", peers={"T1": receiver.address},
                       insecure_loopback=True, limits=SMALL).start()
    for i in range(3):
        do.send(_act(i))
    do.run_until_idle(timeout=5)
    do.close()
    # execute: a fresh DO resends its last message, then continues
    do2 = GrpcTransport("DO", run_id=RUN, listen="127.0.0.1:0", peers={"T1": receiver.address},
                        insecure_loopback=True, limits=SMALL).start()
    try:
        do2.send(_act(2))  # byte-identical resend of seq 3
        do2.send(_act(3))
        do2.run_until_idle(timeout=5)
    finally:
        do2.close()
    # assert
    got = [receiver.recv(timeout=2) for _ in range(4)]
    assert [(m.header.step, m.header.seq) for m in got] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert receiver.stats["duplicates"] == 1 and receiver.stats["rejected"] == 0


def test_sender_reconnects_to_a_restarted_receiver():
    t1 = GrpcTransport("T1", run_id=RUN, listen="127.0.0.1:0", peers={"DO": ""}, insecure_loopback=True).start()
    port = t1.port
    do = GrpcTransport("DO", run_id=RUN, listen="127.0.0.1:0", peers={"T1": t1.address},
                       insecure_loopback=True, connect_timeout_s=10).start()
    try:
        do.send(_act(0))
        assert t1.recv(timeout=5).header.step == 0
        do.run_until_idle(timeout=5)  # else the restarted T1 (no link state) would get step 0 again
        t1.close(grace=0)
        t1 = GrpcTransport("T1", run_id=RUN, listen=f"127.0.0.1:{port}", peers={"DO": ""},
                           insecure_loopback=True).start()
        do.send(_act(1))
        msg = t1.recv(timeout=10)
        assert msg is not None and msg.header.step == 1
    finally:
        do.close()
        t1.close(grace=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_peer_error_names_the_peer():
    do = GrpcTransport("DO", run_id=RUN, listen="127.0.0.1:0", peers={"T1": f"127.0.0.1:{_free_port()}"},
                       insecure_loopback=True, connect_timeout_s=1.0).start()
    try:
        with pytest.raises(WireError, match=r"peer T1 is unreachable at 127\.0\.0\.1:\d+ after 1 s"):
            do.wait_for_peers(timeout=1.0)
        do.send(Control(Header("DO", "T1", 0, 0), kind="hello"))
        t0 = time.monotonic()
        with pytest.raises(WireError, match=r"peer T1 is unreachable.*clicooper node"):
            do.recv(timeout=10)
        assert time.monotonic() - t0 < 5
        with pytest.raises(WireError, match="T1"):
            do.send(Control(Header("DO", "T1", 0, 1), kind="hello"))
    finally:
        do.close(grace=0)


def test_port_in_use_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        t = GrpcTransport("T1", run_id=RUN, listen=f"127.0.0.1:{port}", peers={"DO": ""}, insecure_loopback=True)
        with pytest.raises(WireError, match=f"cannot listen on 127.0.0.1:{port}: the port is in use"):
            t.start()


def test_configuration_errors():
    with pytest.raises(ConfigError, match="not a loopback address"):
        GrpcTransport("T1", run_id=RUN, listen="0.0.0.0:0", peers={}, insecure_loopback=True)
    with pytest.raises(ConfigError, match="not a loopback address"):
        GrpcTransport("T1", run_id=RUN, listen="127.0.0.1:0", peers={"DO": "10.0.0.1:7000"},
                      insecure_loopback=True)
    with pytest.raises(ConfigError, match="exactly one"):
        GrpcTransport("T1", run_id=RUN, listen="127.0.0.1:0", peers={})
    with pytest.raises(ConfigError, match="host:port"):
        GrpcTransport("T1", run_id=RUN, listen="localhost", peers={}, insecure_loopback=True)
    t = GrpcTransport("T1", run_id=RUN, listen="[::1]:0", peers={"DO": ""}, insecure_loopback=True)
    with pytest.raises(WireError, match="no peer 'T9'"):
        t.send(_act(0, sender="T1", receiver="T9"))
    with pytest.raises(WireError, match="sender is 'DO'"):
        t.send(_act(0))


def test_sender_refuses_oversized_and_large_tensors_pass_with_plan_limits():
    shape = (256, 32, 14, 14)  # 6.4 MB: above gRPC's 4 MiB default
    limits = WireLimits.for_shapes([shape])
    mesh = loopback_mesh(["DO", "T1"], limits=limits)
    try:
        x = torch.randn(shape)
        mesh["DO"].send(Gradients(Header("DO", "T1", 0, 0), x))
        assert torch.equal(mesh["T1"].recv(timeout=10).tensor, x)
        with pytest.raises(WireError, match="max_tensor_bytes"):
            mesh["DO"].send(Gradients(Header("DO", "T1", 0, 1), torch.zeros(2, *shape)))
    finally:
        for t in mesh.values():
            t.close()
    assert message_to_proto(Gradients(Header("DO", "T1", 0, 0), x)).ByteSize() > 4 * 1024 * 1024


def test_a_tensor_too_big_to_index_is_a_counted_rejection():
    # prepare: a gradient of shape [0, 2**62] (no bytes, so the byte count matches) once made NumPy raise a
    # ValueError that aborted the stream with UNKNOWN, outside the max_rejections count
    t = GrpcTransport("T1", run_id=RUN, listen="127.0.0.1:0", peers={"DO": ""}, insecure_loopback=True,
                      limits=SMALL, max_rejections=1).start()
    env = message_to_proto(Gradients(Header("DO", "T1", 0, 0, run_id=RUN, seq=1), torch.zeros(0, 2)))
    env.tensor.ClearField("shape")
    env.tensor.shape.extend([0, 2**62])
    try:
        with RawLinkClient(t.address, sender="DO", run_id=RUN) as c:
            # execute
            first = c.send_bytes(env.SerializeToString())
            env.seq = 2
            second = c.send_bytes(env.SerializeToString())
        # assert
        assert first.status == second.status == pb.Ack.REJECTED
        assert "above" in first.reason
        assert t.stats["rejected"] == 2
        with pytest.raises(WireError, match="more than 1 rejected messages"):
            t.recv(timeout=2)
    finally:
        t.close(grace=0)
