"""gRPC transport for ONE party process (docs/design/protocol.md#transport): a server for inbound links, a stream per outbound link.

Usage (one process per party; see docs/network.md and :func:`clicooper.net.serve.serve_party`)::

    t = GrpcTransport("T1", run_id=run_id, listen="0.0.0.0:7001",
                      peers={"DO": "do.example:7000", "T2": "10.0.0.3:7002"},
                      tls=TlsConfig.from_certs(my_cert, peer_certs, pinned=genesis_fingerprints),
                      limits=WireLimits.for_shapes(plan_shapes))
    with t.start():
        serve_party(party, t)

Everything received is checked before a party sees it: run id, authenticated sender, receiver, per-link
sequence (:mod:`clicooper.net.link`), then the record itself (:mod:`clicooper.net.serde`). A message that
fails is logged with its reason, acknowledged as REJECTED and dropped; the run continues, up to
``max_rejections`` rejections, after which the transport fails and :meth:`recv` raises.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import grpc

from clicooper.errors import ConfigError, WireError
from clicooper.net.link import Admission, InboundLink, message_digest
from clicooper.net.outbound import OutboundLink, channel_options
from clicooper.net.proto import clicooper_pb2 as pb
from clicooper.net.serde import (
    NAME_RE,
    ShapePattern,
    WireLimits,
    envelope_from_bytes,
    message_from_proto,
    parse_envelope,
)
from clicooper.net.tls import TlsConfig, peer_fingerprint_of_context
from clicooper.protocol.messages import Message, with_stamp

log = logging.getLogger("clicooper.net")

_SERVICE = "clicooper.v1.Link"
#: (sender, kind) → expected shape pattern, e.g. ``{("DO", "activations"): (None, 32, 14, 14)}``.
ShapeTable = Mapping[tuple[str, str], ShapePattern]


def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` / ``"[::1]:port"`` → ``(host, port)``; raises :class:`ConfigError`."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"address {address!r} is not host:port (IPv6 as [::1]:port)")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class GrpcTransport:
    """Transport of one party over gRPC. Construct, :meth:`start`, then :meth:`send` / :meth:`recv`."""

    def __init__(
        self,
        name: str,
        *,
        run_id: str,
        listen: str,
        peers: Mapping[str, str],
        tls: TlsConfig | None = None,
        insecure_loopback: bool = False,
        limits: WireLimits | None = None,
        expected_shapes: ShapeTable | None = None,
        connect_timeout_s: float = 30.0,
        max_rejections: int | None = 100,
        inbound_capacity: int = 64,
        max_pending_bytes: int | None = None,
    ) -> None:
        if not NAME_RE.fullmatch(name):
            raise ConfigError(f"party name {name!r} must match {NAME_RE.pattern}")
        if not run_id:
            raise ConfigError("run_id is empty: use the run id from the genesis")
        if (tls is None) == (not insecure_loopback):
            raise ConfigError(
                "give either tls=TlsConfig(...) (pinned certificates, any network) or insecure_loopback=True "
                "(plaintext, loopback addresses only) — exactly one"
            )
        if connect_timeout_s <= 0 or inbound_capacity <= 0:
            raise ConfigError("connect_timeout_s and inbound_capacity must be positive")
        self.name, self.run_id = name, run_id
        self.limits = limits or WireLimits()
        self._tls = tls
        self._insecure = insecure_loopback
        self._listen = listen
        self._check_address(listen)
        self._expected = dict(expected_shapes or {})
        self._timeout = connect_timeout_s
        self._max_rejections = max_rejections
        self._capacity = inbound_capacity
        self._max_pending = max_pending_bytes  # per outbound link; None: outbound.default_pending_bytes
        self._peers: dict[str, str] = {}
        for peer, addr in peers.items():
            if not NAME_RE.fullmatch(peer) or peer == name:
                raise ConfigError(f"peer name {peer!r} is invalid or is this party's own name")
            if addr:
                self._check_address(addr)
            self._peers[peer] = addr
        if tls is not None:
            unpinned = set(self._peers) - set(tls.pinned)
            if unpinned:
                raise ConfigError(f"peers without a pinned certificate: {sorted(unpinned)}")
        self._links = {p: InboundLink(p) for p in self._peers}
        self._out: dict[str, OutboundLink] = {}
        self._cv = threading.Condition()
        self._inbox: deque[Message] = deque()
        self._self_seq = 0
        self._fatal: WireError | None = None
        self._closed = False
        self._server: grpc.Server | None = None
        self.port: int | None = None
        self.stats = {"accepted": 0, "duplicates": 0, "rejected": 0}
        self.rejections: deque[tuple[str, str]] = deque(maxlen=1000)  # (sender, reason), newest last

    # ------------------------------------------------------------------ set-up

    def _check_address(self, address: str) -> None:
        host, _ = split_address(address)
        if self._insecure and not is_loopback(host):
            raise ConfigError(
                f"insecure_loopback=True but {address} is not a loopback address: plaintext is only "
                "allowed on 127.0.0.1/::1; configure TLS (TlsConfig) for other hosts"
            )

    def set_peer_address(self, peer: str, address: str) -> None:
        """Set or change where ``peer`` listens (before the first message to it)."""
        if peer not in self._peers:
            raise ConfigError(f"{peer!r} is not a peer of {self.name}; peers: {sorted(self._peers)}")
        if peer in self._out:
            raise ConfigError(f"the link {self.name}→{peer} is already open")
        self._check_address(address)
        self._peers[peer] = address

    @property
    def address(self) -> str:
        """``host:port`` this party listens on (the real port once started with port 0)."""
        host, _ = split_address(self._listen)
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{self.port}"

    def start(self) -> GrpcTransport:
        """Bind the server; raises :class:`WireError` when the address cannot be bound (port in use)."""
        n_threads = 2 * len(self._peers) + 4  # a long-lived stream per inbound link holds one thread
        options = [*channel_options(self.limits), ("grpc.so_reuseport", 0),
                   ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
                   ("grpc.keepalive_permit_without_calls", 1)]
        server = grpc.server(ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix=f"net-{self.name}"),
                             options=options, maximum_concurrent_rpcs=n_threads)
        handler = grpc.stream_stream_rpc_method_handler(
            self._stream, request_deserializer=None, response_serializer=pb.Ack.SerializeToString)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, {"Stream": handler}),))
        try:
            if self._tls is not None:
                port = server.add_secure_port(self._listen, self._tls.server_credentials())
            else:
                port = server.add_insecure_port(self._listen)
        except RuntimeError as e:
            port, cause = 0, e
        else:
            cause = None
        if not port:
            raise WireError(f"{self.name} cannot listen on {self._listen}: the port is in use or the address "
                            "is not local; pick a free port (or 0) in the peer table") from cause
        server.start()
        self._server, self.port = server, port
        log.info("%s listening on %s (%s)", self.name, self.address, "TLS" if self._tls else "plaintext")
        return self

    def __enter__(self) -> GrpcTransport:
        return self if self._server is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.close(grace=1.0 if exc[0] is None else 0.0)

    # ------------------------------------------------------------------ the Transport interface

    def send(self, msg: Message) -> None:
        """Queue ``msg`` for ``msg.header.receiver`` (stamped with run id and the link's next seq)."""
        if self._fatal is not None:
            raise self._fatal
        h = msg.header
        if h.sender != self.name:
            raise WireError(f"{self.name} cannot send a message whose sender is {h.sender!r}")
        if h.receiver == self.name:  # DO head → DO tail: deliver locally, no wire
            with self._cv:
                self._self_seq += 1
                self._inbox.append(with_stamp(msg, run_id=self.run_id, seq=self._self_seq))
                self._cv.notify_all()
            return
        self._outbound(h.receiver).put(msg)

    def recv(self, timeout: float | None = None) -> Message | None:
        """Next accepted message (links interleave; each link stays in order), or ``None`` on timeout.

        Raises the transport's :class:`WireError` once it has failed (peer unreachable, too many
        rejected messages) and nothing received is left to hand out.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while not self._inbox:
                if self._fatal is not None:
                    raise self._fatal
                if self._closed:
                    raise WireError(f"transport of {self.name} is closed")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cv.wait(0.5 if remaining is None else min(remaining, 0.5))
            msg = self._inbox.popleft()
            self._cv.notify_all()  # room for a stream waiting on inbound_capacity
            return msg

    def run_until_idle(self, timeout: float | None = None) -> None:
        """Wait until every message sent so far was acknowledged by its receiver (a flush).

        Over the network "idle" can only be known for this party's own sends; replies arrive via
        :meth:`recv`. Raises :class:`WireError` if a peer fails or ``timeout`` (default: the connect
        timeout) passes.
        """
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        for link in list(self._out.values()):
            link.flush(deadline)

    def unacknowledged(self) -> dict[str, int]:
        """Per peer, messages sent to it that it has not acknowledged yet (only peers with any)."""
        return {p: n for p, link in sorted(self._out.items()) if (n := link.pending())}

    def wait_for_peers(self, peers: list[str] | None = None, *, timeout: float | None = None) -> None:
        """Connect to ``peers`` (default: all) now; raise a :class:`WireError` naming any that fail."""
        for peer in peers or sorted(self._peers):
            self._outbound(peer).wait_ready(self._timeout if timeout is None else timeout)

    def close(self, grace: float = 1.0) -> None:
        """Flush for up to ``grace`` seconds, then stop links and server. Idempotent."""
        if self._closed:
            return
        if grace > 0 and self._fatal is None:
            try:
                self.run_until_idle(timeout=grace)
            except WireError as e:
                log.warning("%s closing with unacknowledged messages: %s", self.name, e)
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for link in self._out.values():
            link.close()
        if self._server is not None:
            # our sends are flushed; inbound streams stay open until their senders close, so a long
            # grace would only wait for peers that are still running
            self._server.stop(grace=min(grace, 0.2)).wait(5.0)

    # ------------------------------------------------------------------ internals

    def _outbound(self, peer: str) -> OutboundLink:
        link = self._out.get(peer)
        if link is None:
            if peer not in self._peers:
                raise WireError(f"{self.name} has no peer {peer!r}; peers: {sorted(self._peers)}")
            if not self._peers[peer]:
                raise ConfigError(f"no address known for peer {peer}: set it in the peer table")
            link = OutboundLink(owner=self.name, peer=peer, address=self._peers[peer], run_id=self.run_id,
                                limits=self.limits, tls=self._tls, connect_timeout_s=self._timeout,
                                on_fatal=self._set_fatal, max_pending_bytes=self._max_pending)
            self._out[peer] = link
        return link

    def _set_fatal(self, error: WireError) -> None:
        with self._cv:
            if self._fatal is None:
                self._fatal = error
            self._cv.notify_all()

    def _stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[pb.Ack]:
        """Server side of one inbound link: authenticate, say HELLO, then one Ack per Envelope."""
        meta = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        sender, run_id = meta.get("clicooper-sender", ""), meta.get("clicooper-run-id", "")
        if run_id != self.run_id:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"{self.name} serves run {self.run_id[:16]!r}, not {run_id[:16]!r}: "
                          "start every node from the same genesis")
        if sender not in self._links:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"{self.name} does not know a sender {sender[:40]!r}")
        if self._tls is not None:
            fp = peer_fingerprint_of_context(context)
            owner = self._tls.party_of_fingerprint(fp) if fp else None
            if owner != sender:
                context.abort(grpc.StatusCode.PERMISSION_DENIED,
                              f"the TLS certificate presented belongs to {owner or 'no pinned party'}, "
                              f"not to {sender!r}")
        link = self._links[sender]
        with link.lock:
            yield pb.Ack(status=pb.Ack.HELLO, seq=link.last_seq, last_digest=link.last_digest)
        for raw in requests:
            if self._closed:
                return
            yield self._receive(link, raw)

    def _receive(self, link: InboundLink, raw: bytes) -> pb.Ack:
        seq = 0
        try:
            env, data = parse_envelope(raw, limits=self.limits)  # tensor bytes as a view: one copy less
            seq = int(env.seq)
            if env.run_id != self.run_id:
                raise WireError(f"wrong run id {env.run_id[:16]!r} (this run is {self.run_id[:16]!r})")
            if env.sender != link.sender:
                raise WireError(f"sender {env.sender[:40]!r} on the link of {link.sender}")
            if env.receiver != self.name:
                raise WireError(f"addressed to {env.receiver[:40]!r}, not to {self.name}")
            msg = message_from_proto(env, limits=self.limits, data=data,
                                     expected_shape=self._expected.get((env.sender, env.kind)))
            limits = self.limits

            def stored_digest() -> bytes:  # of the immutable wire bytes: the party may mutate ``msg``
                return message_digest(message_from_proto(envelope_from_bytes(raw, limits=limits),
                                                         limits=limits))

            with link.lock:
                admission = link.admit(seq, stored_digest)
                if admission is Admission.ACCEPT:
                    self._deliver(msg)
        except WireError as e:
            return self._reject(link.sender, seq, str(e))
        duplicate = admission is Admission.DUPLICATE
        with self._cv:
            self.stats["duplicates" if duplicate else "accepted"] += 1
        if duplicate:
            log.info("%s: exact resend %d from %s de-duplicated", self.name, seq, link.sender)
            return pb.Ack(status=pb.Ack.DUPLICATE, seq=seq)
        return pb.Ack(status=pb.Ack.ACCEPTED, seq=seq)

    def _deliver(self, msg: Message) -> None:
        with self._cv:
            while len(self._inbox) >= self._capacity and not self._closed:
                self._cv.wait(0.5)  # back-pressure: the stream (and gRPC flow control) waits for the party
            self._inbox.append(msg)
            self._cv.notify_all()

    def _reject(self, sender: str, seq: int, reason: str) -> pb.Ack:
        log.warning("%s rejected a message from %s (seq %d): %s", self.name, sender, seq, reason)
        with self._cv:
            self.stats["rejected"] += 1
            self.rejections.append((sender, reason))
            if self._max_rejections is not None and self.stats["rejected"] > self._max_rejections:
                self._fatal = self._fatal or WireError(
                    f"{self.name} stopped: more than {self._max_rejections} rejected messages (last from "
                    f"{sender}: {reason})")
                self._cv.notify_all()
        return pb.Ack(status=pb.Ack.REJECTED, seq=seq, reason=reason[:500])
