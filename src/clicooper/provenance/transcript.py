"""Per-link transcript hashes for stage entries (DESIGN §5 "Ledger": transcript hashes).

Each party keeps, per round, one running SHA-256 per (peer position, direction) over the canonical bytes
(:func:`clicooper.protocol.messages.canonical_bytes`) of every tensor or control message it sent to or
received from that peer position, each message length-prefixed. At round end the digests go into the
stage entry as ``{"<peer position>:sent": hex, "<peer position>:recv": hex}``. The verifier checks that
position p's ``"q:sent"`` equals position q's ``"p:recv"`` (and vice versa).

Peers are best named by **position**: with K = 1 in the U-shape, T1 talks to the DO's head (position 0)
and to the DO's tail (position 2), and those are two different links. Naming them by party name
(``"T1:sent"``) is accepted too; the verifier then checks per party pair and round, merging the DO's two
entries (which must then carry the same digest for a key).
"""

from __future__ import annotations

import hashlib
from typing import Literal

from clicooper.protocol.messages import Message, canonical_bytes
from clicooper.provenance.canonical import lp

Direction = Literal["sent", "recv"]


def transcript_key(peer: int | str, direction: Direction) -> str:
    """Key of a transcript digest in a stage entry, e.g. ``"2:sent"`` (position) or ``"T2:sent"`` (name)."""
    if direction not in ("sent", "recv"):
        raise ValueError("direction must be 'sent' or 'recv'")
    return f"{peer}:{direction}"


class TranscriptHasher:
    """Running SHA-256 per (peer position, direction) for one party position and one round."""

    def __init__(self) -> None:
        self._h: dict[str, hashlib._Hash] = {}

    def record(self, peer_position: int, direction: Direction, message: Message | bytes) -> None:
        """Absorb one message (or its already computed canonical bytes) on a link."""
        data = message if isinstance(message, bytes) else canonical_bytes(message)
        key = transcript_key(peer_position, direction)
        h = self._h.get(key)
        if h is None:
            h = self._h[key] = hashlib.sha256(lp("clicooper/transcript"))
        h.update(lp(data))

    def sent(self, peer: int | str, message: Message | bytes) -> None:
        """Record a message sent to ``peer``."""
        self.record(peer, "sent", message)

    def received(self, peer: int | str, message: Message | bytes) -> None:
        """Record a message received from ``peer``."""
        self.record(peer, "recv", message)

    def digests(self) -> dict[str, str]:
        """Current digests, hex, for the stage entry's ``transcripts`` field."""
        return {k: h.copy().hexdigest() for k, h in sorted(self._h.items())}

    def reset(self) -> None:
        """Start a new round."""
        self._h.clear()
