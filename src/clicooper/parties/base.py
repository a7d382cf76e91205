"""What every party shares: a name, a module, its own optimizer, transcript hashes, step hooks.

Party logic is a state machine over :mod:`clicooper.protocol.messages`; it never knows which transport
carries its messages (in-process or gRPC).
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch import nn

from clicooper.protocol.messages import Control, Message, update_hash
from clicooper.protocol.wire_codec import check_decoded, check_received, decode_message, encode_message
from clicooper.provenance.transcript import new_transcript_hash

#: A regularizer hook: given the party's module, return an extra loss term (or None) added before a step.
StepHook = Callable[[nn.Module], "torch.Tensor | None"]
#: A message tap: (peer, "sent" | "recv", message) for every tensor message, in transcript order (audit logs).
MessageTap = Callable[[str, str, Message], None]


_HASH_POOL: ThreadPoolExecutor | None = None
_HASH_POOL_LOCK = threading.Lock()


def _hash_pool() -> ThreadPoolExecutor:
    """One FIFO worker per process for transcript hashing (BLAKE3 releases the GIL on big buffers, so
    hashing the tensor bytes can overlap the party's compute where a core is free)."""
    global _HASH_POOL
    with _HASH_POOL_LOCK:
        if _HASH_POOL is None:
            _HASH_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clicooper-transcript")
        return _HASH_POOL


class PartyBase(abc.ABC):
    """Common bookkeeping. Subclasses implement ``_handle``."""

    def __init__(self, name: str, module: nn.Module, optimizer: torch.optim.Optimizer, *, hash_transcripts: bool):
        self.name = name
        self.module = module
        self.optimizer = optimizer
        self.hash_transcripts = hash_transcripts
        self._transcripts: dict[str, Any] = {}
        self._pending: Future[None] | None = None  # the last hashing job submitted (the worker is FIFO)
        self.step_hooks: list[StepHook] = []
        self.message_taps: list[MessageTap] = []
        self.steps_taken = 0
        self.samples_processed = 0
        self.wire_dtype = "fp32"  # how tensors travel (RunConfig.wire_dtype; protocol/wire_codec.py)
        #: the learning rate per 0-based epoch (RunConfig.lr_at), set before each optimizer step from the epoch
        #: of the message being handled; None: the optimizer keeps its own
        self.lr_at: Callable[[int], float] | None = None
        self.epoch = 0  # the epoch of the message (DO: of the step) being handled

    # -- transcripts (docs/design/ledger.md#transcripts): running BLAKE3 per link and direction over tensor messages -----------
    # The hashing runs on a background FIFO worker, in submission order. A message is immutable once sent
    # (parties never modify a tensor in place after putting it in a message), so hashing it later gives the
    # same digest. Every read (``transcript_digests``) or reset first waits for the pending jobs.
    def _update_transcript(self, peer: str, direction: str, msg: Message) -> None:
        if isinstance(msg, Control):
            return
        for tap in self.message_taps:
            tap(peer, direction, msg)
        if not self.hash_transcripts:
            return
        key = f"{peer}:{direction}"
        h = self._transcripts.get(key)
        if h is None:
            h = self._transcripts[key] = new_transcript_hash()
        self._pending = _hash_pool().submit(update_hash, h, msg)

    def _drain_transcripts(self) -> None:
        """Wait until every submitted hashing job of this party is done (re-raising its error, if any)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    @property
    def transcripts(self) -> dict[str, Any]:
        """The running hashes, per ``"peer:direction"`` (complete: pending jobs are waited for)."""
        self._drain_transcripts()
        return self._transcripts

    @transcripts.setter
    def transcripts(self, value: dict[str, Any]) -> None:
        self._drain_transcripts()
        self._transcripts = value

    def transcript_digests(self) -> dict[str, str]:
        """Current digests, ``{"T2:sent": hex, "T2:recv": hex, …}``."""
        return {k: h.hexdigest() for k, h in sorted(self.transcripts.items())}

    def handle(self, msg: Message) -> list[Message]:
        """Process one message (see :class:`clicooper.protocol.transport.Party`).

        The message must travel in the dtype of the run's ``wire_dtype`` (and of its kind); it is decoded (float32, or
        as it came for ``fp32``), its values are checked as this party will compute with them, and it is hashed as
        received (encoded, as it travelled). What the party sends is encoded in the run's ``wire_dtype`` and
        hashed as sent.
        """
        check_received(msg, wire=self.wire_dtype, full=self.full_dtype, receiver=self.name)
        decoded = decode_message(msg)
        check_decoded(decoded, compute=self.compute_dtype, receiver=self.name)
        self._update_transcript(msg.header.sender, "recv", msg)
        self.epoch = msg.header.epoch
        return self._outgoing(self._handle(decoded))

    @property
    def full_dtype(self) -> torch.dtype:
        """The precision of this party's weights (float32; float64 in a float64 run): what ``fp32`` carries."""
        return next((p.dtype for p in self.module.parameters() if p.is_floating_point()), torch.get_default_dtype())

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype this party computes with what it receives (a bf16 trainer overrides it)."""
        return self.full_dtype

    def _outgoing(self, out: list[Message]) -> list[Message]:
        """``out`` encoded in the run's ``wire_dtype`` (after every privacy mechanism) and hashed as sent."""
        out = [encode_message(m, self.wire_dtype) for m in out]
        for m in out:
            self._update_transcript(m.header.receiver, "sent", m)
        return out

    @abc.abstractmethod
    def _handle(self, msg: Message) -> list[Message]:
        """Party-specific processing of one message (the transcript bookkeeping is done by ``handle``)."""

    def _step(self) -> None:
        """Add hook terms (e.g. the watermark regularizer), then step this party's own optimizer."""
        extra = None
        for hook in self.step_hooks:
            term = hook(self.module)
            if term is not None:
                extra = term if extra is None else extra + term
        if extra is not None:
            extra.backward()
        if self.lr_at is not None:
            lr = self.lr_at(self.epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps_taken += 1
