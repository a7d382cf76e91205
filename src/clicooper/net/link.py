"""Per-link ordering rules, independent of gRPC (so they are tested without sockets).

A *link* is one direction between two parties (``T1 → T2``). The sender numbers its messages 1, 2, 3 …;
the receiver keeps the last accepted ``seq`` and the SHA-256 of that message's canonical bytes
(:func:`clicooper.protocol.messages.canonical_bytes`, which excludes ``seq`` and ``run_id``):

* ``seq > last``: accepted (gaps are allowed: a message the receiver rejected never becomes "last");
* ``seq <= last`` and the same canonical bytes as the last accepted message: an exact resend (a sender
  that reconnected or restarted and sent its last message again) — de-duplicated silently;
* ``seq <= last`` otherwise: replayed or stale — rejected.

A restarted sender learns ``last`` and the digest from the receiver's HELLO (see :func:`align_resend`).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from clicooper.errors import WireError
from clicooper.protocol.messages import Message, canonical_bytes


def message_digest(msg: Message) -> bytes:
    """SHA-256 of a message's canonical bytes (identical for sender and receiver)."""
    return hashlib.sha256(canonical_bytes(msg)).digest()


class Admission(Enum):
    """What the receiver does with a well-formed message on a link."""

    ACCEPT = "accepted"
    DUPLICATE = "duplicate"


@dataclass
class InboundLink:
    """Receiver-side state of one link. Call :meth:`admit` with the link's ``lock`` held.

    Digests are passed as zero-argument callables and computed only when needed (a resend to compare,
    a HELLO to answer): hashing every 3 MB activation would cost as much as decoding it.
    """

    sender: str
    last_seq: int = 0
    _last: Callable[[], bytes] = field(default=lambda: b"", repr=False)
    _last_digest: bytes | None = field(default=None, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def last_digest(self) -> bytes:
        """SHA-256 of the canonical bytes of the last accepted message (``b""`` before the first)."""
        if self._last_digest is None:
            self._last_digest = self._last()
        return self._last_digest

    def admit(self, seq: int, digest: bytes | Callable[[], bytes]) -> Admission:
        """Decide on message ``seq`` and, when accepted, make it the last one; raise when stale."""
        thunk = digest if callable(digest) else (lambda: digest)
        if seq <= 0:
            raise WireError(f"seq {seq} from {self.sender}: sequence numbers start at 1")
        if seq > self.last_seq:
            self.last_seq, self._last, self._last_digest = seq, thunk, None
            return Admission.ACCEPT
        if thunk() == self.last_digest:
            return Admission.DUPLICATE
        raise WireError(
            f"replayed or stale message from {self.sender}: seq {seq} <= last accepted {self.last_seq} "
            "and not an exact resend of it"
        )


def align_resend(first_digests: Sequence[bytes], *, last_seq: int, last_digest: bytes) -> int:
    """First seq a sender *without acknowledged history on this link* should use after a HELLO.

    A sender that restarted has lost its counter; the receiver's HELLO tells it where the link stands.
    If its first queued message is an exact resend of what the receiver accepted last, it reuses
    ``last_seq`` (so the receiver de-duplicates it); otherwise it continues at ``last_seq + 1``.
    ``first_digests`` holds the digest of the first queued message, or nothing when the queue is empty.
    """
    if last_seq > 0 and first_digests and first_digests[0] == last_digest:
        return last_seq
    return last_seq + 1
