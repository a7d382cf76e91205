"""Sender side of one link: an ordered queue drained by one gRPC stream, with acks and reconnection.

One background thread per outbound link. It connects lazily (when something is queued), waits for the
receiver's HELLO, resends what was not acknowledged, then streams the queue in order. If the stream
breaks it reconnects with bounded backoff; if the peer stays unreachable past ``connect_timeout_s``
(counted from the first attempt, or from when a working stream broke) the link fails with a
:class:`WireError` naming the peer and what to do, and the transport surfaces it on the next call.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from clicooper.errors import WireError
from clicooper.net.link import align_resend, message_digest
from clicooper.net.proto import clicooper_pb2 as pb
from clicooper.net.serde import Outgoing, WireLimits, message_to_outgoing
from clicooper.net.tls import TlsConfig, probe_certificate
from clicooper.protocol.messages import Message, with_stamp

log = logging.getLogger("clicooper.net")

#: gRPC status codes after which retrying cannot help: the receiver refused this link.
_FATAL_CODES = {
    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED,
}
_MAX_BACKOFF_S = 1.0
#: The one RPC of ``service Link`` in clicooper.proto.
LINK_METHOD = "/clicooper.v1.Link/Stream"


def channel_options(limits: WireLimits) -> list[tuple[str, int]]:
    """Options shared by channels and the server: message limits, bounded reconnect, keepalive."""
    n = limits.max_message_bytes
    return [
        ("grpc.max_send_message_length", n),
        ("grpc.max_receive_message_length", n),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.use_local_subchannel_pool", 1),  # no connection sharing between transports/credentials
        ("grpc.enable_retries", 0),  # ordering and resends are ours
    ]


@dataclass
class _Item:
    out: Outgoing  # the envelope without its tensor bytes + a view of them: serialized when streamed
    msg: Message
    size: int = 0


def default_pending_bytes(limits: WireLimits) -> int:
    """The default bound on a link's unacknowledged bytes: 4 of the largest messages, at least 64 MiB."""
    return max(64 << 20, 4 * limits.max_message_bytes)


class OutboundLink:
    """Queue, stream and acknowledgement state of the link ``owner → peer``."""

    def __init__(
        self, *, owner: str, peer: str, address: str, run_id: str, limits: WireLimits,
        tls: TlsConfig | None, connect_timeout_s: float, on_fatal: Callable[[WireError], None],
        max_pending_bytes: int | None = None,
    ) -> None:
        self.owner, self.peer, self.address = owner, peer, address
        self._run_id, self._limits, self._tls = run_id, limits, tls
        self._timeout = connect_timeout_s
        self._on_fatal = on_fatal
        self._cv = threading.Condition()
        self._queue: deque[_Item] = deque()  # not yet written on the current stream
        self._unacked: OrderedDict[int, _Item] = OrderedDict()  # written, waiting for an ack
        # queue + unacked together hold at most this many bytes (one message always fits): back-pressure
        self._max_pending = max_pending_bytes or default_pending_bytes(limits)
        self._pending = 0
        self._next_seq = 1
        self._acked_any = False
        self._gen = 0  # stream generation; a request generator stops when it is stale
        self._ready_gen = -1
        self._closed = False
        self.error: WireError | None = None
        self.stats = {"sent": 0, "acked": 0, "duplicates": 0, "rejected_by_peer": 0, "bytes": 0,
                      "reconnects": 0, "peak_pending_bytes": 0}
        self._channel: grpc.Channel | None = None
        self._call: grpc.Call | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ caller side (serve thread)

    def put(self, msg: Message) -> None:
        """Stamp, encode and queue ``msg``; raises the link's error if it has failed.

        Blocks while the link already holds ``max_pending_bytes`` not yet acknowledged (back-pressure on
        the caller instead of an unbounded queue), and raises a :class:`WireError` when the peer
        acknowledges nothing for ``connect_timeout_s`` meanwhile.
        """
        with self._cv:
            self._check_open()
            stamped = with_stamp(msg, run_id=self._run_id, seq=self._next_seq)
            out = message_to_outgoing(stamped, limits=self._limits)
            size = out.size
            if size > self._limits.max_message_bytes:
                raise WireError(f"message to {self.peer} is {size} bytes, above max_message_bytes="
                                f"{self._limits.max_message_bytes}; raise WireLimits on every party")
            self._wait_room(size)
            self._next_seq += 1
            self._queue.append(_Item(out, stamped, size))
            self._pending += size
            self.stats["peak_pending_bytes"] = max(self.stats["peak_pending_bytes"], self._pending)
            self.stats["sent"] += 1
            self.stats["bytes"] += size
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"link-{self.owner}-{self.peer}",
                                                daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def _check_open(self) -> None:
        if self.error is not None:
            raise self.error
        if self._closed:
            raise WireError(f"link {self.owner}→{self.peer} is closed")

    def _wait_room(self, size: int) -> None:
        """Wait (lock held) until ``size`` more bytes fit under ``max_pending_bytes``; a deadline restarts
        at every acknowledgement, so only a link that makes no progress fails."""
        pending, deadline = self._pending, time.monotonic() + self._timeout
        while self._pending and self._pending + size > self._max_pending:
            self._check_open()
            if self._pending < pending:
                pending, deadline = self._pending, time.monotonic() + self._timeout
            if time.monotonic() > deadline:
                raise WireError(
                    f"{self.peer} at {self.address} acknowledged nothing for {self._timeout:g} s while "
                    f"{self._pending} bytes to it wait (the bound is {self._max_pending}): the link is stalled "
                    f"or {self.peer} is stuck; stop every node and start them all again")
            self._cv.wait(0.5)

    def flush(self, deadline: float) -> None:
        """Block until everything queued was acknowledged (accepted, duplicate or rejected)."""
        with self._cv:
            while (self._queue or self._unacked) and self.error is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WireError(
                        f"{len(self._queue) + len(self._unacked)} message(s) to {self.peer} at "
                        f"{self.address} not acknowledged in time; is {self.peer} still running?"
                    )
                self._cv.wait(min(remaining, 0.5))
            if self.error is not None:
                raise self.error

    def pending(self) -> int:
        """Messages queued or sent but not acknowledged yet."""
        with self._cv:
            return len(self._queue) + len(self._unacked)

    def wait_ready(self, timeout: float) -> None:
        """Connect now (instead of on first send); raise a diagnosed :class:`WireError` on failure."""
        self._ensure_ready(time.monotonic() + timeout)

    def close(self) -> None:
        """Stop the link thread and close the channel (does not flush)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._call is not None:
            self._call.cancel()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self._channel is not None:
            self._channel.close()

    # ------------------------------------------------------------------ link thread

    def _channel_or_new(self) -> grpc.Channel:
        if self._channel is None:
            options: list[tuple[str, object]] = list(channel_options(self._limits))
            if self._tls is not None:
                options += self._tls.channel_options(self.peer)
                self._channel = grpc.secure_channel(self.address, self._tls.channel_credentials(self.peer),
                                                    options=options)
            else:
                self._channel = grpc.insecure_channel(self.address, options=options)
        return self._channel

    def _ensure_ready(self, deadline: float) -> None:
        future = grpc.channel_ready_future(self._channel_or_new())
        try:
            while True:
                with self._cv:
                    if self._closed:
                        raise WireError(f"link {self.owner}→{self.peer} closed while connecting")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WireError(self._diagnose())
                try:
                    future.result(timeout=min(remaining, 0.25))
                    return
                except grpc.FutureTimeoutError:
                    continue
        finally:
            future.cancel()

    def _run(self) -> None:
        deadline: float | None = None  # set when an attempt starts; cleared once a stream works
        backoff = 0.05
        while True:
            with self._cv:
                while not self._closed and not (self._queue or self._unacked):
                    self._cv.wait(1.0)  # idle: reconnect lazily, only when there is something to send
                if self._closed:
                    return
            if deadline is None:
                deadline = time.monotonic() + self._timeout
            try:
                self._ensure_ready(deadline)
                established, err = self._stream_once()
            except WireError as e:
                self._fail(e)
                return
            with self._cv:
                if self._closed:
                    return
            if err is not None and err.code() in _FATAL_CODES:
                self._fail(WireError(f"{self.peer} at {self.address} refused the link from {self.owner}: "
                                     f"{err.details()}"))
                return
            if established:
                deadline, backoff = None, 0.05
            self.stats["reconnects"] += 1
            log.info("link %s→%s: stream ended (%s); reconnecting", self.owner, self.peer,
                     err.details() if err is not None else "closed by peer")
            if deadline is not None and time.monotonic() > deadline:
                self._fail(WireError(self._diagnose()))
                return
            time.sleep(backoff)
            backoff = min(2 * backoff, _MAX_BACKOFF_S)

    def _stream_once(self) -> tuple[bool, grpc.RpcError | None]:
        with self._cv:
            self._gen += 1
            gen = self._gen
        # The method directly rather than clicooper_pb2_grpc.LinkStub: that generated module refuses to
        # import under a grpcio older than the grpcio-tools that generated it; this works with any.
        stream = self._channel_or_new().stream_stream(
            LINK_METHOD, request_serializer=None,  # _requests yields serialized Envelopes
            response_deserializer=pb.Ack.FromString)
        call = stream(self._requests(gen), metadata=(("clicooper-sender", self.owner),
                                                     ("clicooper-run-id", self._run_id)))
        self._call = call
        established = False
        try:
            hello = next(call)
            if hello.status != pb.Ack.HELLO:
                return established, None
            with self._cv:
                self._on_hello(hello, gen)
            established = True
            for ack in call:
                with self._cv:
                    self._on_ack(ack)
        except StopIteration:
            pass
        except grpc.RpcError as e:
            return established, e  # type: ignore[return-value]
        return established, None

    def _requests(self, gen: int):
        while True:
            with self._cv:
                while not self._closed and gen == self._gen and (self._ready_gen != gen or not self._queue):
                    self._cv.wait(0.5)
                if self._closed or gen != self._gen:
                    return
                item = self._queue.popleft()
                self._unacked[item.out.head.seq] = item
                head = item.out.head.SerializeToString()  # seq as of now (a resend renumbers under the lock)
            yield item.out.to_bytes(head)  # the copy of the tensor bytes outside the lock

    def _on_hello(self, hello: pb.Ack, gen: int) -> None:
        last = int(hello.seq)
        self._pending -= sum(it.size for s, it in self._unacked.items() if s <= last)  # delivered before
        pending = [it for s, it in self._unacked.items() if s > last] + list(self._queue)
        if not self._acked_any and last > 0:
            # We have no acknowledged history but the receiver has: this sender restarted.
            digests = [message_digest(pending[0].msg)] if pending else []
            seq = align_resend(digests, last_seq=last, last_digest=hello.last_digest)
            for it in pending:
                it.out.head.seq = seq
                seq += 1
            self._next_seq = seq
            log.info("link %s→%s: resuming after the receiver's seq %d", self.owner, self.peer, last)
        self._unacked.clear()
        self._queue = deque(pending)
        self._ready_gen = gen
        self._cv.notify_all()

    def _on_ack(self, ack: pb.Ack) -> None:
        item = self._unacked.pop(int(ack.seq), None)
        if item is not None:
            self._pending -= item.size
        self._acked_any = True
        if ack.status == pb.Ack.ACCEPTED:
            self.stats["acked"] += 1
        elif ack.status == pb.Ack.DUPLICATE:
            self.stats["duplicates"] += 1
        elif ack.status == pb.Ack.REJECTED:
            self.stats["rejected_by_peer"] += 1
            log.warning("%s rejected message %d from %s: %s", self.peer, ack.seq, self.owner, ack.reason)
        self._cv.notify_all()

    def _fail(self, error: WireError) -> None:
        with self._cv:
            if self._closed:
                return
            self.error = error
            self._cv.notify_all()
        log.error("link %s→%s failed: %s", self.owner, self.peer, error)
        self._on_fatal(error)

    def _diagnose(self) -> str:
        """Tell apart: nothing listening, wrong certificate, our certificate not pinned there."""
        host, _, port = self.address.rpartition(":")
        host = host.strip("[]")
        waited = f"after {self._timeout:g} s"
        try:
            socket.create_connection((host, int(port)), timeout=2.0).close()
        except OSError as e:
            return (f"peer {self.peer} is unreachable at {self.address} {waited} ({e.strerror or e}): start "
                    f"its node (`clicooper node`) or fix its address in the peer table")
        if self._tls is None:
            return (f"peer {self.peer} at {self.address} accepts TCP but no plaintext gRPC {waited}: it "
                    "probably runs with TLS; give this party its TlsConfig too")
        try:
            fp = probe_certificate(host, int(port), self._tls.identity)
        except (OSError, ValueError) as e:
            return f"peer {self.peer} at {self.address}: TLS handshake failed {waited} ({e}); is it a TLS node?"
        pinned = self._tls.pinned[self.peer]
        if fp != pinned.lower():
            return (f"certificate mismatch: peer {self.peer} at {self.address} presents certificate "
                    f"{fp[:16]}…, but the genesis pins {pinned[:16]}…: another node listens there or its "
                    "certificate was regenerated; fix the address or rebuild the genesis")
        return (f"peer {self.peer} at {self.address} presents its pinned certificate but refuses ours "
                f"({self._tls.identity.fingerprint[:16]}…) {waited}: {self.peer} must pin this party's "
                "certificate from the same genesis")
