"""Typed wire records exchanged between parties.

These dataclasses are the *only* things parties send each other. The in-process transport carries them
as they are; the gRPC transport converts them with ``net/serde.py`` (``x_to_proto`` / ``x_from_proto``).
Sample ids never appear here: the data owner keeps them (docs/design/protocol.md#one-training-step).

``canonical_bytes`` gives one unambiguous byte string per message (every field length-prefixed:
docs/design/ledger.md#formats); transcript hashes in the ledger are BLAKE3 running hashes over it
(``clicooper.provenance.transcript``, docs/design/ledger.md#transcripts).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Literal

import torch

from clicooper.encoding import lp
from clicooper.errors import WireError

#: dtypes allowed on the wire, by their canonical name.
WIRE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "int8": torch.int8,  # int8 activations / gradients with a per-row scale (protocol/wire_codec.py)
}
_DTYPE_NAMES = {v: k for k, v in WIRE_DTYPES.items()}

Mode = Literal["train", "infer"]


@dataclass(frozen=True)
class Header:
    """Routing and ordering data carried by every message.

    ``run_id`` and ``seq`` are stamped by the transport (per link, strictly increasing); party code
    leaves them at their defaults. ``step`` is the batch index within ``epoch``; ``micro`` the
    micro-batch index within the step, of ``n_micro``.
    """

    sender: str
    receiver: str
    epoch: int
    step: int
    micro: int = 0
    n_micro: int = 1
    run_id: str = ""
    seq: int = 0


@dataclass(frozen=True)
class Activations:
    """Forward tensor sent along the chain. ``mode='infer'`` means no backward will follow."""

    header: Header
    tensor: torch.Tensor
    mode: Mode = "train"
    scale: torch.Tensor | None = None  # float32 (B,) per-row scale of an int8 tensor (wire_codec.py)


@dataclass(frozen=True)
class Gradients:
    """Backward tensor: ∂loss/∂(the receiver's output), same shape as that output."""

    header: Header
    tensor: torch.Tensor
    scale: torch.Tensor | None = None  # float32 (B,) per-row scale of an int8 tensor (wire_codec.py)


@dataclass(frozen=True)
class Labels:
    """Labels sent to the tail holder in the open-tail topology (already obfuscated when defended)."""

    header: Header
    tensor: torch.Tensor  # int64 (B,)


@dataclass(frozen=True)
class Control:
    """Small control record (loss reports, round ends, ledger entries, delivery). Payload is str→str."""

    header: Header
    kind: str
    payload: dict[str, str] = field(default_factory=dict)


Message = Activations | Gradients | Labels | Control
TensorMessage = Activations | Gradients | Labels


def dtype_name(dtype: torch.dtype) -> str:
    """Canonical wire name of a torch dtype; raises :class:`WireError` for unsupported dtypes."""
    try:
        return _DTYPE_NAMES[dtype]
    except KeyError as e:
        raise WireError(f"dtype {dtype} cannot go on the wire; use one of {sorted(WIRE_DTYPES)}") from e


def dtype_from_name(name: str) -> torch.dtype:
    """Inverse of :func:`dtype_name`."""
    try:
        return WIRE_DTYPES[name]
    except KeyError as e:
        raise WireError(f"unknown wire dtype {name!r}; expected one of {sorted(WIRE_DTYPES)}") from e


def tensor_bytes(t: torch.Tensor) -> bytes:
    """Raw little-endian C-contiguous bytes of a CPU copy of ``t``."""
    t = t.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def message_kind(msg: Message) -> str:
    """Short kind name of a message: ``activations``, ``gradients``, ``labels`` or ``control``."""
    return type(msg).__name__.lower()


def _canonical_parts(msg: Message) -> list[bytes | memoryview]:
    """The pieces of :func:`canonical_bytes`, the tensor data as a zero-copy view where possible."""
    h = msg.header
    parts: list[bytes | memoryview] = [
        lp(message_kind(msg), h.sender, h.receiver, str(h.epoch), str(h.step), str(h.micro), str(h.n_micro))
    ]
    if isinstance(msg, Control):
        parts.append(lp(msg.kind, *(x for k in sorted(msg.payload) for x in (k, msg.payload[k]))))
        return parts
    t = msg.tensor
    if isinstance(msg, Activations):
        parts.append(lp(msg.mode))
    parts.append(lp(dtype_name(t.dtype), ",".join(str(int(s)) for s in t.shape)))
    _tensor_parts(parts, t)
    scale = getattr(msg, "scale", None)
    if scale is not None:  # only int8 tensors carry one (the dtype above says so): unambiguous
        _tensor_parts(parts, scale)
    return parts


def _tensor_parts(parts: list[bytes | memoryview], t: torch.Tensor) -> None:
    """Append the 8-byte big-endian length (as lp() writes it) and a zero-copy view of ``t``'s bytes."""
    c = t.detach().to("cpu").contiguous()
    if c.dtype == torch.bfloat16:
        c = c.view(torch.int16)
    data = memoryview(c.numpy()).cast("B") if c.numel() else memoryview(b"")  # cast refuses a 0 in the shape
    parts.append(data.nbytes.to_bytes(8, "big"))
    parts.append(data)


def update_hash(hasher: hashlib._Hash, msg: Message) -> None:
    """Feed ``canonical_bytes(msg)`` into ``hasher`` without building it (no copy of the tensor data)."""
    for part in _canonical_parts(msg):
        hasher.update(part)


def canonical_bytes(msg: Message) -> bytes:
    """Unambiguous bytes of a message (header excluding seq/run_id, kind, dtype, shape, data).

    ``seq`` and ``run_id`` are excluded so that sender and receiver hash the same bytes whatever the
    transport stamps; the ledger binds the run id separately.
    """
    return b"".join(bytes(p) for p in _canonical_parts(msg))


def with_stamp(msg: Message, *, run_id: str, seq: int) -> Message:
    """Copy of ``msg`` with the transport's run id and sequence number set."""
    return dataclasses.replace(msg, header=dataclasses.replace(msg.header, run_id=run_id, seq=seq))


def validate_tensor(
    t: torch.Tensor, *, expected_shape: tuple[int, ...] | None = None, what: str = "tensor",
    as_dtype: torch.dtype | None = None,
) -> None:
    """Reject NaN/Inf and (optionally) an unexpected shape, with a :class:`WireError` that says which.

    ``as_dtype``: the floating dtype ``t`` will be cast to before use; a value beyond its range (finite here,
    Inf there: 1e300 as float32, 3.4e38 as bfloat16) is refused too."""
    if expected_shape is not None and tuple(t.shape) != tuple(expected_shape):
        raise WireError(f"{what}: shape {tuple(t.shape)} but expected {tuple(expected_shape)}")
    if not t.is_floating_point():
        return
    # Fast path: a finite sum proves every element finite (NaN/Inf propagate); only a non-finite sum
    # (NaN/Inf present, or a rare overflow) pays for the exact element-wise check.
    if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
        raise WireError(f"{what}: contains NaN or Inf values; the sender is faulty or malicious")
    if as_dtype is not None and as_dtype.is_floating_point and t.numel():
        top = torch.finfo(as_dtype).max
        if top < torch.finfo(t.dtype).max and float(t.abs().amax()) > top:
            raise WireError(f"{what}: a value of {float(t.abs().amax()):.3g} overflows "
                            f"{str(as_dtype).removeprefix('torch.')} (max {top:.3g}); the sender is faulty or malicious")
