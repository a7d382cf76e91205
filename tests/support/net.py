"""Network-layer scaffolding: loopback meshes, toy chain parties, a raw Link client, malformed envelopes.

The toy parties speak the real records over the real transport, so a ``DO → T1 → … → TK → DO`` forward
and the reverse backward run exactly as a split-learning step moves bytes, without any model.
``python -m support.chain_node`` runs one of them in its own process.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import grpc
import torch
from hypothesis import strategies as st

from benchmarks.loopback import loopback_mesh
from clicooper.net.outbound import LINK_METHOD
from clicooper.net.proto import clicooper_pb2 as pb
from clicooper.net.serde import message_to_proto
from clicooper.net.serve import SHUTDOWN
from clicooper.protocol.messages import Activations, Control, Gradients, Header, Message

__all__ = ["ChainDataOwner", "ChainTrainer", "RawLinkClient", "loopback_mesh", "malformed_envelope_strategy"]


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


#: The ways :func:`malformed_envelope_strategy` breaks an otherwise acceptable envelope.
BREAKS = ("dtype", "short", "long", "negshape", "nan", "kind", "epoch", "micro", "nobody", "runid", "sender",
          "receiver", "bigdim")


def _break(env: pb.Envelope, how: str, junk: str, *, run_id: str, sender: str, receiver: str) -> bytes:
    """``env`` serialized with the one defect ``how`` (``junk``: arbitrary text some defects use)."""
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


def malformed_envelope_strategy(run_id: str, sender: str, receiver: str) -> st.SearchStrategy[bytes]:
    """Hypothesis strategy of serialized envelopes, each broken in one way (or raw garbage/truncation).

    Each would be *accepted* by a receiver but for the one defect, so a fuzz test can demand that every
    example is rejected.
    """
    base = st.builds(
        lambda shape, seed: message_to_proto(Activations(
            Header(sender, receiver, 0, 0, run_id=run_id, seq=10_000 + seed), torch.full(shape, 0.5))),
        st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple), st.integers(0, 10**6),
    )
    structured = st.builds(
        lambda env, how, junk: _break(env, how, junk, run_id=run_id, sender=sender, receiver=receiver),
        base, st.sampled_from(BREAKS), st.text(max_size=8))
    garbage = st.binary(max_size=300)
    truncated = base.map(lambda e: e.SerializeToString()[: max(1, e.ByteSize() // 2)])
    return st.one_of(structured, garbage, truncated)
