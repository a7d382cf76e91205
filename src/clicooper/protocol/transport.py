"""The small message interface that party logic is written against.

A *party* is a state machine: the transport hands it one :class:`Message` at a time and sends whatever
messages it returns. Party code never touches a transport class, so the same party runs in one process
(:mod:`clicooper.protocol.inproc`) or one process per party over gRPC (:mod:`clicooper.net`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from clicooper.protocol.messages import Message


@runtime_checkable
class Party(Protocol):
    """One participant (data owner or trainer)."""

    name: str

    def handle(self, msg: Message) -> list[Message]:
        """Process one received message and return the messages to send (each names its receiver)."""
        ...


class Transport(Protocol):
    """Carries messages between parties. Implementations stamp ``run_id`` and per-link ``seq``."""

    def send(self, msg: Message) -> None:
        """Queue ``msg`` for delivery to ``msg.header.receiver``."""
        ...

    def run_until_idle(self) -> None:
        """Deliver messages (and the replies they cause) until nothing is left in flight."""
        ...
