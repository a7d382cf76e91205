"""In-process transport: every party in one process, messages delivered FIFO in one thread.

It carries the same records as the gRPC transport and stamps the same per-link sequence numbers, so one
contract test covers both. Deterministic: the same inputs give the same delivery order. A tensor is
delivered in the layout the wire gives it (row-major contiguous): a convolution's output is channels-last on
the CPU, and a convolution on a channels-last input takes another kernel, whose float rounding differs, so
passing it through unchanged made in-process and networked runs of a conv model differ in the 7th digit.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterable

from clicooper.errors import WireError
from clicooper.protocol.messages import Control, Message, with_stamp
from clicooper.protocol.transport import Party

#: Called for every delivered message (e.g. the observation recorder used for attack evaluation).
Tap = Callable[[Message], None]


class InProcessNetwork:
    """Routes messages between parties registered by name."""

    def __init__(self, parties: list[Party], *, run_id: str = "", max_deliveries: int = 10_000_000):
        self.parties = {p.name: p for p in parties}
        self.run_id = run_id
        self.queue: deque[Message] = deque()
        self.seq: dict[tuple[str, str], int] = {}
        self.bytes_per_link: dict[str, int] = {}
        self.taps: list[Tap] = []
        self.max_deliveries = max_deliveries

    def send(self, msg: Message) -> None:
        """Stamp and queue one message."""
        h = msg.header
        if h.receiver not in self.parties:
            raise WireError(f"no party named {h.receiver!r} on this network")
        link = (h.sender, h.receiver)
        self.seq[link] = self.seq.get(link, 0) + 1
        if not isinstance(msg, Control):
            key = f"{h.sender}->{h.receiver}"
            t = msg.tensor
            if not t.is_contiguous():  # as the wire delivers it (row-major bytes), so both paths compute alike
                t = t.contiguous()
                msg = dataclasses.replace(msg, tensor=t)
            n = t.numel() * t.element_size()
            scale = getattr(msg, "scale", None)  # int8 on the wire: its per-row scales travel too
            n += 0 if scale is None else scale.numel() * scale.element_size()
            self.bytes_per_link[key] = self.bytes_per_link.get(key, 0) + n
        self.queue.append(with_stamp(msg, run_id=self.run_id, seq=self.seq[link]))

    def send_all(self, msgs: Iterable[Message]) -> None:
        """Queue several messages in order."""
        for m in msgs:
            self.send(m)

    def run_until_idle(self) -> None:
        """Deliver queued messages and their consequences until the queue is empty."""
        n = 0
        while self.queue:
            msg = self.queue.popleft()
            for tap in self.taps:
                tap(msg)
            for reply in self.parties[msg.header.receiver].handle(msg):
                self.send(reply)
            n += 1
            if n > self.max_deliveries:
                raise WireError("in-process network did not become idle; a party is looping")

    def take_bytes(self) -> dict[str, int]:
        """Return and reset the bytes carried per link (tensor payloads only)."""
        b, self.bytes_per_link = self.bytes_per_link, {}
        return b
