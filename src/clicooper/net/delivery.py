"""In-band delivery of the trainers' final segments to the data owner (docs/design/protocol.md#delivery, docs/design/protocol.md#transport).

At the end of a multi-process run (after the ledger's closing entry, or after the last round when
provenance is off) the DO asks each trainer for its segment and the trainer sends it over its existing
link as ``Control`` records (``ControlPayload`` is ``map<string,string>``, so the bytes travel base64):

1. DO → trainer ``node-deliver {round, position, file}`` (one per position the trainer holds);
2. trainer → DO ``node-segment {position, index, data}`` for ``index = 0 … n-1``: the bytes of the
   trainer's delivered model file (safetensors, with the same metadata as an in-process run), cut into
   chunks of at most :func:`chunk_bytes` raw bytes so that each record fits the link's
   :class:`~clicooper.net.serde.WireLimits`;
3. trainer → DO ``node-segment-end {position, file, chunks, bytes, sha256}``.

The DO reassembles (:class:`SegmentInbox`): chunks must come for an expected (trainer, position), in
order, within a size bound derived from the DO's own copy of the plan; an exact resend of a chunk (a
restarted trainer sending again from chunk 0) is ignored, a different chunk under a used index is refused.
On the end record it checks the length and SHA-256, then :func:`check_segment`: parsed with
``safetensors.torch.load`` (never pickle), tensor names, shapes and dtypes equal to the DO's expectation,
all finite, metadata equal to what the trainer's model file must carry, and — with provenance on — the
segment commitment (:func:`clicooper.provenance.commitments.segment_commitment`) equal to the ledger's
final commitment for that position. Any mismatch raises an error naming the trainer; nothing of that
segment is kept. The node then writes the file atomically into the DO's own ``model/``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from clicooper.errors import LedgerError, WireError
from clicooper.net.serde import WireLimits
from clicooper.protocol.messages import Control
from clicooper.provenance.commitments import segment_commitment

DELIVER, SEGMENT, SEGMENT_END = "node-deliver", "node-segment", "node-segment-end"
#: Upper bound of one chunk (raw bytes) whatever the limits allow: keeps every record modest.
MAX_CHUNK_BYTES = 1 << 20
#: Slack for the safetensors header (JSON: names, shapes, offsets, metadata) over the raw tensor bytes.
HEADER_SLACK_BYTES = 64 * 1024


def chunk_bytes(limits: WireLimits) -> int:
    """Raw bytes per chunk so that a ``node-segment`` record (base64 + a few keys) fits ``limits``."""
    room = limits.max_control_bytes - 1024  # kind, keys, position and index
    return max(3, min(MAX_CHUNK_BYTES, (room // 4) * 3))


def segment_payloads(
    data: bytes, *, position: int, file: str, chunk: int
) -> list[tuple[str, dict[str, str]]]:
    """The (kind, payload) records that deliver ``data``: chunks, then the end record."""
    if chunk <= 0:
        raise WireError(f"chunk size must be positive, got {chunk}")
    n = max(1, math.ceil(len(data) / chunk))
    out: list[tuple[str, dict[str, str]]] = [
        (
            SEGMENT,
            {
                "position": str(position),
                "index": str(i),
                "data": base64.b64encode(data[i * chunk : (i + 1) * chunk]).decode("ascii"),
            },
        )
        for i in range(n)
    ]
    out.append(
        (
            SEGMENT_END,
            {
                "position": str(position),
                "file": file,
                "chunks": str(n),
                "bytes": str(len(data)),
                "sha256": hashlib.sha256(data).hexdigest(),
            },
        )
    )
    return out


@dataclass
class ExpectedSegment:
    """What the DO expects from one trainer position (from its own plan and, with provenance, its ledger)."""

    trainer: str
    position: int
    file: str
    shapes: Mapping[str, tuple[tuple[int, ...], torch.dtype]]
    metadata: Mapping[str, str] | None = None
    commitment: str | None = None  # the ledger's final commitment of this position (None: provenance off)

    @property
    def max_bytes(self) -> int:
        """Largest acceptable file: raw tensor bytes plus header slack."""
        raw = sum(math.prod(s) * torch.empty((), dtype=d).element_size() for s, d in self.shapes.values())
        return raw + HEADER_SLACK_BYTES + 256 * len(self.shapes)

    @classmethod
    def of_state(
        cls,
        trainer: str,
        position: int,
        file: str,
        state: Mapping[str, torch.Tensor],
        metadata: Mapping[str, str] | None = None,
        commitment: str | None = None,
    ) -> ExpectedSegment:
        """From a state dict with the right names, shapes and dtypes (the DO's copy of the initial model)."""
        return cls(
            trainer,
            position,
            file,
            {k: (tuple(v.shape), v.dtype) for k, v in state.items()},
            dict(metadata) if metadata is not None else None,
            commitment,
        )


def _header_metadata(data: bytes) -> dict[str, str]:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def check_segment(exp: ExpectedSegment, data: bytes) -> dict[str, torch.Tensor]:
    """Parse and check one delivered segment file; returns its tensors.

    Raises :class:`WireError` (not a segment of this plan) or :class:`LedgerError` (not the committed
    segment), naming the trainer and the position.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    who = f"the segment delivered by {exp.trainer} (position {exp.position}, {exp.file})"
    if len(data) > exp.max_bytes:
        raise WireError(
            f"{who} has {len(data)} bytes, above the {exp.max_bytes} its plan allows: refused; "
            "every party must run the same config and plan.json"
        )
    try:
        tensors = st_load(data)
        meta = _header_metadata(data)
    except (SafetensorError, ValueError, RuntimeError, struct.error, UnicodeDecodeError) as e:
        raise WireError(
            f"{who} is not a valid safetensors file ({e}): refused; {exp.trainer} must deliver "
            "its own model file"
        ) from e
    if set(tensors) != set(exp.shapes):
        raise WireError(
            f"{who} holds tensors {sorted(tensors)} but the plan expects {sorted(exp.shapes)}: "
            "refused; every party must run the same config and plan.json"
        )
    for name, t in tensors.items():
        shape, dtype = exp.shapes[name]
        if tuple(t.shape) != shape or t.dtype != dtype:
            raise WireError(
                f"{who}: tensor {name} has shape {tuple(t.shape)} {t.dtype}, the plan expects "
                f"{shape} {dtype}: refused; every party must run the same config and plan.json"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise WireError(
                f"{who}: tensor {name} contains NaN/Inf: refused; restart {exp.trainer} from its "
                "last checkpoint"
            )
    if exp.metadata is not None and meta != dict(exp.metadata):
        raise WireError(
            f"{who} carries metadata {meta}, expected {dict(exp.metadata)}: refused; "
            f"{exp.trainer} must deliver the model file of this run's last round"
        )
    if exp.commitment is not None:
        got = segment_commitment(tensors)
        if got != exp.commitment:
            raise LedgerError(
                f"{who} has commitment {got}, but the ledger's final commitment of position "
                f"{exp.position} is {exp.commitment}: refused — these are not the weights "
                f"{exp.trainer} committed; it must deliver its committed segment"
            )
    return tensors


@dataclass
class _Assembly:
    exp: ExpectedSegment
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    done: bytes | None = None


class SegmentInbox:
    """DO side: reassemble and check the segments of ``expected`` from ``node-segment`` records."""

    def __init__(self, expected: list[ExpectedSegment], *, max_chunk: int) -> None:
        self.max_chunk = max_chunk
        self._by: dict[tuple[str, int], _Assembly] = {}
        for e in expected:
            if (e.trainer, e.position) in self._by:
                raise WireError(f"position {e.position} of {e.trainer} is expected twice")
            self._by[(e.trainer, e.position)] = _Assembly(e)

    @property
    def done(self) -> bool:
        """Every expected segment received and checked."""
        return all(a.done is not None for a in self._by.values())

    @property
    def missing(self) -> list[str]:
        """``"T2 (position 2)"`` for each segment not received yet."""
        return [f"{t} (position {p})" for (t, p), a in self._by.items() if a.done is None]

    def _assembly(self, msg: Control) -> _Assembly:
        sender = msg.header.sender
        try:
            pos = int(msg.payload["position"])
        except (KeyError, ValueError) as e:
            raise WireError(f"{msg.kind} from {sender} names no position: refused") from e
        a = self._by.get((sender, pos))
        if a is None:
            raise WireError(
                f"{sender} sent a segment for position {pos}, which the DO did not ask it for: "
                "refused; every party must run the same config and plan.json"
            )
        return a

    def feed(self, msg: Control) -> tuple[ExpectedSegment, bytes, dict[str, torch.Tensor]] | None:
        """Take one ``node-segment`` / ``node-segment-end`` record; returns (expected, file bytes, tensors)
        when it completes a segment that passed every check, else ``None``. Raises on any defect, and then
        keeps nothing of that segment."""
        a = self._assembly(msg)
        try:
            return self._feed(a, msg)
        except BaseException:
            if a.done is None:
                a.chunks, a.size = [], 0
            raise

    def _feed(
        self, a: _Assembly, msg: Control
    ) -> tuple[ExpectedSegment, bytes, dict[str, torch.Tensor]] | None:
        who = f"{msg.header.sender} (position {a.exp.position})"
        if msg.kind == SEGMENT:
            try:
                i = int(msg.payload["index"])
                raw = base64.b64decode(msg.payload["data"].encode("ascii"), validate=True)
            except (KeyError, ValueError, UnicodeEncodeError, binascii.Error) as e:
                raise WireError(f"segment chunk from {who} is malformed ({e}): refused") from e
            if len(raw) > self.max_chunk:
                raise WireError(
                    f"segment chunk {i} from {who} has {len(raw)} bytes, above {self.max_chunk}: refused"
                )
            if 0 <= i < len(a.chunks):  # a resend (e.g. after a restart): harmless if identical
                if a.chunks[i] != raw:
                    raise WireError(
                        f"segment chunk {i} from {who} was sent again with other bytes: refused; "
                        f"restart every node (the DO asks {msg.header.sender} again)"
                    )
                return None
            if i != len(a.chunks) or a.done is not None:
                raise WireError(
                    f"segment chunk {i} from {who} is out of order (expected {len(a.chunks)}): refused"
                )
            if a.size + len(raw) > a.exp.max_bytes:
                raise WireError(
                    f"the segment from {who} exceeds the {a.exp.max_bytes} bytes its plan allows: refused"
                )
            a.chunks.append(raw)
            a.size += len(raw)
            return None
        if msg.kind != SEGMENT_END:
            raise WireError(f"{msg.kind} from {msg.header.sender} is not a segment record")
        if a.done is not None:  # the end record again (a resend): nothing new
            return None
        try:
            n, size, digest = int(msg.payload["chunks"]), int(msg.payload["bytes"]), msg.payload["sha256"]
        except (KeyError, ValueError) as e:
            raise WireError(f"segment end record from {who} is malformed ({e}): refused") from e
        data = b"".join(a.chunks)
        actual = hashlib.sha256(data).hexdigest()
        if n != len(a.chunks) or size != len(data) or actual != digest:
            raise WireError(
                f"the segment from {who} arrived incomplete or altered ({len(a.chunks)} of {n} chunks, "
                f"{len(data)} of {size} bytes, SHA-256 {actual[:16]}… announced {digest[:16]}…): refused; "
                "restart every node"
            )
        tensors = check_segment(a.exp, data)
        a.done = data  # the chunks stay, so a late identical resend is recognised as one
        return a.exp, data, tensors
