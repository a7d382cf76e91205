"""Drive one party's state machine over a receiving transport (one process per party).

``serve_party`` is the whole event loop of a ``clicooper node``: receive a message, ``party.handle`` it,
send what it returns; stop after a ``Control(kind="shutdown")`` was received or sent, or at a deadline.
Party code stays transport-agnostic (STYLE: party logic does not know which transport carries it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

from clicooper.errors import ConfigError
from clicooper.protocol.messages import Control, Message
from clicooper.protocol.transport import Party

log = logging.getLogger("clicooper.net")

SHUTDOWN = "shutdown"


class ReceivingTransport(Protocol):
    """What :func:`serve_party` needs: the Transport interface plus a blocking ``recv``."""

    name: str

    def send(self, msg: Message) -> None:
        """Queue ``msg`` for its receiver."""
        ...

    def recv(self, timeout: float | None = None) -> Message | None:
        """Next received message, or ``None`` after ``timeout`` seconds."""
        ...

    def run_until_idle(self, timeout: float | None = None) -> None:
        """Flush: wait until everything sent was acknowledged."""
        ...


@dataclass(frozen=True)
class ServeResult:
    """How a :func:`serve_party` loop ended."""

    reason: Literal["shutdown", "deadline", "idle"]
    handled: int
    sent: int
    seconds: float


def is_shutdown(msg: Message) -> bool:
    """True for ``Control(kind="shutdown")``."""
    return isinstance(msg, Control) and msg.kind == SHUTDOWN


def serve_party(
    party: Party,
    transport: ReceivingTransport,
    *,
    initial: Iterable[Message] = (),
    deadline_s: float | None = None,
    idle_timeout_s: float | None = None,
    flush_timeout_s: float = 30.0,
    poll_s: float = 0.25,
) -> ServeResult:
    """Run ``party`` until shutdown, ``deadline_s`` (total) or ``idle_timeout_s`` (no message received).

    ``initial`` is sent first (the data owner's first activations: a party only reacts to messages).
    A shutdown received is still passed to ``party.handle``, so a party can forward it down the chain;
    a shutdown the party *sends* ends its own loop too once it is flushed. Errors from the transport
    (:class:`~clicooper.errors.WireError`) and from the party propagate; close the transport in a
    ``with`` block so peers see the stream end.
    """
    if getattr(transport, "name", party.name) != party.name:
        raise ConfigError(f"party {party.name} is served over the transport of {transport.name}")
    t0 = time.monotonic()
    end = None if deadline_s is None else t0 + deadline_s
    handled = sent = 0
    last_rx = t0

    def emit(msgs: Iterable[Message]) -> bool:
        nonlocal sent
        stop = False
        for m in msgs:
            transport.send(m)
            sent += 1
            stop = stop or is_shutdown(m)
        return stop

    stopping = emit(initial)
    reason: Literal["shutdown", "deadline", "idle"] = "shutdown"
    while not stopping:
        now = time.monotonic()
        if end is not None and now >= end:
            reason = "deadline"
            break
        if idle_timeout_s is not None and now - last_rx >= idle_timeout_s:
            reason = "idle"
            break
        wait = poll_s if end is None else max(0.0, min(poll_s, end - now))
        msg = transport.recv(timeout=wait)
        if msg is None:
            continue
        last_rx = time.monotonic()
        handled += 1
        stopping = emit(party.handle(msg)) or is_shutdown(msg)
    if reason != "shutdown":
        log.warning("%s stops serving: %s after %.1f s", party.name, reason, time.monotonic() - t0)
    transport.run_until_idle(timeout=flush_timeout_s)
    return ServeResult(reason=reason, handled=handled, sent=sent, seconds=time.monotonic() - t0)
