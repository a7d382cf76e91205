"""Helpers for tests and demos of the network layer: loopback meshes, toy chain parties, a raw client.

Not used by training code. The toy parties speak the real records over the real transport, so a
``DO → T1 → … → TK → DO`` forward and the reverse backward run exactly as a split-learning step moves
bytes, without any model.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import grpc
import torch

from clicooper.net.proto import clicooper_pb2 as pb
from clicooper.net.certs import PartyCert, generate_party_certs, load_party_cert
from clicooper.net.grpc_transport import GrpcTransport
from clicooper.net.outbound import LINK_METHOD
from clicooper.net.serve import SHUTDOWN, serve_party
from clicooper.net.tls import TlsConfig
from clicooper.protocol.messages import Activations, Control, Gradients, Header, Message


def loopback_mesh(
    names: Sequence[str], *, run_id: str = "test-run", certs: dict[str, PartyCert] | None = None,
    tls: bool = False, **kwargs: object,
) -> dict[str, GrpcTransport]:
    """Started transports for ``names`` on 127.0.0.1 ephemeral ports, each knowing every other's address.

    ``tls=True`` (or ``certs``) uses pinned mutual TLS; otherwise plaintext ``insecure_loopback``.
    """
    if tls and certs is None:
        certs = generate_party_certs(names)
    out: dict[str, GrpcTransport] = {}
    for n in names:
        peers = {p: "" for p in names if p != n}
        sec: dict[str, object] = (
            {"tls": TlsConfig.from_certs(certs[n], certs)} if certs else {"insecure_loopback": True}
        )
        out[n] = GrpcTransport(n, run_id=run_id, listen="127.0.0.1:0", peers=peers, **sec, **kwargs).start()
    for n, t in out.items():
        for p in names:
            if p != n:
                t.set_peer_address(p, out[p].address)
    return out


class RawLinkClient:
    """Speaks the Link stream with raw bytes (to send malformed envelopes). Context manager."""

    def __init__(self, address: str, *, sender: str, run_id: str, credentials: grpc.ChannelCredentials | None = None,
                 options: Sequence[tuple[str, object]] = ()) -> None:
        opts = [("grpc.use_local_subchannel_pool", 1), *options]
        self._channel = (grpc.secure_channel(address, credentials, options=opts) if credentials
                         else grpc.insecure_channel(address, options=opts))
        method = self._channel.stream_stream(LINK_METHOD, request_serializer=None,
                                             response_deserializer=pb.Ack.FromString)
        self._q: queue.Queue[bytes | None] = queue.Queue()
        self._call = method(self._requests(), metadata=(("clicooper-sender", sender),
                                                        ("clicooper-run-id", run_id)))
        self._acks = iter(self._call)
        self.hello: pb.Ack = next(self._acks)

    def _requests(self) -> Iterator[bytes]:
        while (item := self._q.get()) is not None:
            yield item

    def send_bytes(self, data: bytes) -> pb.Ack:
        """Send one raw request and return the receiver's Ack for it."""
        self._q.put(data)
        return next(self._acks)

    def close(self) -> None:
        """End the stream and close the channel."""
        self._q.put(None)
        self._call.cancel()
        self._channel.close()

    def __enter__(self) -> RawLinkClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class ChainTrainer:
    """Toy trainer: forward ``y = 2x`` to ``next``, backward ``g_in = 2 g_out`` to ``prev``."""

    name: str
    prev: str
    next: str
    seen: list[str] = field(default_factory=list)

    def handle(self, msg: Message) -> list[Message]:
        """Relay activations forward and gradients backward; ignore shutdown."""
        h = msg.header
        self.seen.append(f"{type(msg).__name__}:{h.epoch}:{h.step}")
        if isinstance(msg, Activations):
            out = Header(self.name, self.next, h.epoch, h.step, h.micro, h.n_micro)
            return [Activations(out, msg.tensor * 2, mode=msg.mode)]
        if isinstance(msg, Gradients):
            out = Header(self.name, self.prev, h.epoch, h.step, h.micro, h.n_micro)
            return [Gradients(out, msg.tensor * 2)]
        return []


@dataclass
class ChainDataOwner:
    """Toy data owner: ``steps`` forward/backward round trips through ``trainers``, then shutdown."""

    trainers: Sequence[str]
    steps: int
    shape: tuple[int, ...] = (4, 3)
    name: str = "DO"
    outputs: list[torch.Tensor] = field(default_factory=list)
    grads: list[torch.Tensor] = field(default_factory=list)

    def batch(self, step: int) -> torch.Tensor:
        """Deterministic input of ``step``."""
        return torch.full(self.shape, float(step + 1))

    def start(self) -> list[Message]:
        """The first activations (``serve_party(initial=...)``)."""
        return [Activations(Header(self.name, self.trainers[0], 0, 0), self.batch(0))]

    def handle(self, msg: Message) -> list[Message]:
        """Tail: send the output back as gradient; head: start the next step or shut everyone down."""
        h = msg.header
        if isinstance(msg, Activations):
            self.outputs.append(msg.tensor)
            return [Gradients(Header(self.name, self.trainers[-1], h.epoch, h.step), torch.ones_like(msg.tensor))]
        if isinstance(msg, Gradients):
            self.grads.append(msg.tensor)
            if h.step + 1 < self.steps:
                return [Activations(Header(self.name, self.trainers[0], 0, h.step + 1), self.batch(h.step + 1))]
            return [Control(Header(self.name, t, 0, h.step), kind=SHUTDOWN) for t in self.trainers]
        return []


def malformed_envelope_strategy(run_id: str, sender: str, receiver: str):
    """Hypothesis strategy of serialized envelopes, each broken in one way (or raw garbage/truncation).

    Each would be *accepted* by a receiver but for the one defect, so a fuzz test can demand that every
    example is rejected. Needs ``hypothesis`` (a test dependency).
    """
    from hypothesis import strategies as st

    from clicooper.net.serde import message_to_proto

    base = st.builds(
        lambda shape, seed: message_to_proto(Activations(
            Header(sender, receiver, 0, 0, run_id=run_id, seq=10_000 + seed), torch.full(shape, 0.5))),
        st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple), st.integers(0, 10**6),
    )

    def breaker(env: pb.Envelope, how: str, junk: str) -> bytes:
        if how == "dtype":
            env.tensor.dtype = junk or "float128"
        elif how == "short":
            env.tensor.data = env.tensor.data[:-1]
        elif how == "long":
            env.tensor.data = env.tensor.data + b"\0"
        elif how == "negshape":
            env.tensor.shape.append(-1)
        elif how == "nan":
            env.tensor.data = b"\x00\x00\xc0\x7f" * (len(env.tensor.data) // 4)
        elif how == "kind":
            env.kind = junk + "!"
        elif how == "epoch":
            env.epoch = -1 - len(junk)
        elif how == "micro":
            env.micro, env.n_micro = 3, 2
        elif how == "nobody":
            env.ClearField("tensor")
        elif how == "runid":
            env.run_id = run_id + "x" + junk
        elif how == "sender":
            env.sender = "?" + junk
        elif how == "receiver":
            env.receiver = sender if receiver != sender else receiver + "x"
        elif how == "bigdim":
            env.tensor.shape.extend([2**40, 2**40])
        return env.SerializeToString()

    hows = st.sampled_from(["dtype", "short", "long", "negshape", "nan", "kind", "epoch", "micro", "nobody",
                            "runid", "sender", "receiver", "bigdim"])
    structured = st.builds(breaker, base, hows, st.text(max_size=8))
    garbage = st.binary(max_size=300)
    truncated = base.map(lambda e: e.SerializeToString()[: max(1, e.ByteSize() // 2)])
    return st.one_of(structured, garbage, truncated)


def child_main(argv: Sequence[str] | None = None) -> int:
    """One party of a toy chain in its own process (tests, and a sketch of ``clicooper node``).

    Protocol with the parent: print ``{"name", "address"}`` once listening; read one JSON line
    ``{peer: address}``; serve; print ``{"reason", "handled", "sent", ...}``.
    """
    ap = argparse.ArgumentParser(prog="python -m clicooper.net.testing")
    ap.add_argument("--name", required=True)
    ap.add_argument("--parties", required=True, help="comma-separated chain, DO first")
    ap.add_argument("--certs", required=True, help="directory with NAME.crt / own NAME.key")
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--run-id", default="test-run")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--deadline", type=float, default=30.0)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    names = a.parties.split(",")
    me = load_party_cert(a.certs, a.name)
    peers = {n: load_party_cert(a.certs, n, with_key=False) for n in names if n != a.name}
    t = GrpcTransport(a.name, run_id=a.run_id, listen=a.listen, peers={n: "" for n in peers},
                      tls=TlsConfig.from_certs(me, peers), connect_timeout_s=10.0)
    with t.start():
        print(json.dumps({"name": a.name, "address": t.address}), flush=True)
        for peer, address in json.loads(sys.stdin.readline()).items():
            if peer != a.name:
                t.set_peer_address(peer, address)
        trainers = names[1:]
        if a.name == names[0]:
            party: ChainDataOwner | ChainTrainer = ChainDataOwner(trainers, steps=a.steps, name=a.name)
            result = serve_party(party, t, initial=party.start(), deadline_s=a.deadline)
            extra = {"outputs": [float(o.mean()) for o in party.outputs],
                     "grads": [float(g.mean()) for g in party.grads]}
        else:
            i = trainers.index(a.name)
            prev = names[0] if i == 0 else trainers[i - 1]
            nxt = names[0] if i == len(trainers) - 1 else trainers[i + 1]
            party = ChainTrainer(a.name, prev=prev, next=nxt)
            result = serve_party(party, t, deadline_s=a.deadline)
            extra = {}
    print(json.dumps({"reason": result.reason, "handled": result.handled, "sent": result.sent, **extra}),
          flush=True)
    return 0 if result.reason == "shutdown" else 1


if __name__ == "__main__":  # pragma: no cover
    code = child_main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter finalization: with peers exiting at the same moment, gRPC's native shutdown
    # has been seen to take ~3 s here, which only slows the tests that spawn these processes.
    import os

    os._exit(code)
