"""Wire compression of the cut tensors: float32, bfloat16, float16, or int8 with a per-row scale.

A run's ``wire_dtype`` (``RunConfig.wire_dtype``) says how activations and gradients travel. The sending
party encodes each outgoing tensor message (:func:`encode_message`) *after* everything else it does to it —
the DO's privacy mechanisms (clipping, keyed noise, the protected gradient) act inside the party before a
message exists — so compression is post-processing of a released value and DP accounting is unchanged.
The receiving party decodes (:func:`decode_message`) back to float32 before its own code sees the tensor.

The encoded message is what goes on the wire *and* what both ends hash into their transcripts
(:func:`clicooper.protocol.messages.canonical_bytes` covers the encoded dtype, the data and the scale), so
a transcript covers exactly what was sent and the two ends agree. In-process runs encode and decode the
same way, so an in-process run with ``wire_dtype="int8"`` measures the same quantisation as a gRPC run.

* ``fp32``: unchanged (the default; bit-exact with earlier runs and transcripts).
* ``bf16`` / ``fp16``: rounded to nearest (``fp16`` is clamped to ±65504 first, so a large value cannot become
  Inf; values below 6e-8 flush to zero — bf16 keeps float32's range).
* ``int8``: per row (the first dimension: one sample), ``scale = max|x| / 127`` (float32) and
  ``q = round(x / scale)`` in [-127, 127]; decoded as ``q · scale``. A row of zeros has scale 0.

Labels and control records are never touched.

A receiver takes activations and gradients only in the dtype its run's codec produces (:func:`check_received`:
``fp32`` carries the parties' own full precision, so a float64 value that is finite but overflows float32 cannot
slip in), and checks their values *after* decoding and casting to the dtype it computes in
(:func:`check_decoded`): an int8 row scale of 3e38 decodes to Inf, a finite float32 may be Inf in bfloat16.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

import torch

from clicooper.errors import WireError
from clicooper.protocol.messages import (
    Activations,
    Gradients,
    Labels,
    Message,
    dtype_name,
    message_kind,
    validate_tensor,
)

WireDtype = Literal["fp32", "bf16", "fp16", "int8"]
WIRE_CODECS: tuple[str, ...] = get_args(WireDtype)
_FP16_MAX = 65504.0
_ENCODED = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.int8: "int8"}


def bytes_per_value(wire: str) -> int:
    """Bytes one tensor value takes on the wire with codec ``wire`` (the int8 scale comes on top)."""
    return {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}[_check(wire)]


def wire_bytes(shape: tuple[int, ...], wire: str) -> int:
    """Bytes of one tensor of ``shape`` on the wire with codec ``wire`` (data + int8 row scales)."""
    n = 1
    for d in shape:
        n *= int(d)
    scale = 4 * int(shape[0]) if wire == "int8" and shape else 0
    return n * bytes_per_value(wire) + scale


def _check(wire: str) -> str:
    if wire not in WIRE_CODECS:
        raise WireError(f"unknown wire_dtype {wire!r}; use one of {', '.join(WIRE_CODECS)}")
    return wire


def encode_tensor(t: torch.Tensor, wire: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(encoded tensor, per-row scale or None)`` of a floating tensor ``t`` (on the CPU, detached)."""
    _check(wire)
    t = t.detach()
    if wire == "fp32" or not t.is_floating_point():
        return t, None
    t = t.to("cpu", torch.float32)
    if wire == "bf16":
        return t.to(torch.bfloat16), None
    if wire == "fp16":
        return t.clamp(-_FP16_MAX, _FP16_MAX).to(torch.float16), None
    rows = t.reshape(t.shape[0], -1) if t.dim() > 0 else t.reshape(1, 1)
    scale = rows.abs().amax(dim=1) / 127.0  # (B,)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(rows / safe[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(t.shape), scale.contiguous()


def decode_tensor(t: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """The float32 value of an encoded tensor (``t`` itself when it was not encoded)."""
    if t.dtype == torch.int8:
        if scale is None or scale.dim() != 1 or scale.shape[0] != (t.shape[0] if t.dim() else 1):
            raise WireError(f"an int8 tensor {tuple(t.shape)} needs one float32 scale per row")
        rows = t.reshape(scale.shape[0], -1).to(torch.float32) * scale.to(torch.float32)[:, None]
        return rows.reshape(t.shape)
    if scale is not None:
        raise WireError(f"a {t.dtype} tensor carries a row scale; only int8 tensors do")
    if t.dtype in (torch.bfloat16, torch.float16):
        return t.to(torch.float32)
    return t


def encode_message(msg: Message, wire: str) -> Message:
    """``msg`` with its tensor encoded (activations and gradients; anything else as it is)."""
    if wire == "fp32" or not isinstance(msg, Activations | Gradients) or msg.scale is not None:
        return msg
    t, scale = encode_tensor(msg.tensor, wire)
    return dataclasses.replace(msg, tensor=t, scale=scale)


def decode_message(msg: Message) -> Message:
    """``msg`` with its tensor back in float32 and no scale (a message that was not encoded: as it is)."""
    if not isinstance(msg, Activations | Gradients) or (msg.scale is None and msg.tensor.dtype not in _ENCODED):
        return msg
    return dataclasses.replace(msg, tensor=decode_tensor(msg.tensor, msg.scale), scale=None)


def codec_of(msg: Message) -> str:
    """The codec a tensor message travels in (``fp32`` for anything not encoded)."""
    if isinstance(msg, Activations | Gradients):
        return _ENCODED.get(msg.tensor.dtype, "fp32")
    return "fp32"


def wire_tensor_dtype(wire: str, full: torch.dtype) -> torch.dtype:
    """The dtype activations and gradients travel in with codec ``wire``; ``full``: the parties' own precision
    (float32; float64 in a float64 run), which ``fp32`` carries unchanged."""
    return {"fp32": full, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.int8}[_check(wire)]


def check_received(msg: Message, *, wire: str, full: torch.dtype, receiver: str) -> None:
    """Refuse a message whose tensor's dtype does not fit its kind and the run's codec ``wire`` (before it is
    decoded or hashed): activations and gradients in :func:`wire_tensor_dtype`, labels 1-D int64."""
    if isinstance(msg, Activations | Gradients):
        want = wire_tensor_dtype(wire, full)
        got = msg.tensor.dtype
        if got != want:
            name = str(got).removeprefix("torch.")
            raise WireError(f"{receiver}: {message_kind(msg)} from {msg.header.sender} are {name}, but wire_dtype "
                            f"{wire} carries {dtype_name(want)}: start every party from the same config")
    elif isinstance(msg, Labels) and (msg.tensor.dtype != torch.int64 or msg.tensor.dim() != 1):
        raise WireError(f"{receiver}: labels from {msg.header.sender} must be a 1-D int64 tensor, got "
                        f"{msg.tensor.dtype} {tuple(msg.tensor.shape)}")


def check_decoded(msg: Message, *, compute: torch.dtype, receiver: str) -> None:
    """Refuse a decoded activation or gradient with a NaN or Inf, or with a value that overflows ``compute``,
    the dtype the receiver computes in (bfloat16 under autocast)."""
    if isinstance(msg, Activations | Gradients):
        validate_tensor(msg.tensor, what=f"{receiver}: {message_kind(msg)} from {msg.header.sender} (decoded)",
                        as_dtype=compute)
