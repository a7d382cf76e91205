"""Wire compression (protocol/wire_codec.py): error bounds, the wire format, transcripts over what is sent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clicooper.errors import WireError
from clicooper.net.serde import WireLimits, message_from_bytes, message_to_proto
from clicooper.protocol.messages import Activations, Gradients, Header, canonical_bytes
from clicooper.protocol.wire_codec import (
    decode_message,
    decode_tensor,
    encode_message,
    encode_tensor,
    wire_bytes,
)

H = Header("DO", "T1", 0, 3, 1, 4, run_id="r", seq=5)
LIMITS = WireLimits()


def _x() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 4, generator=g) * torch.tensor([1e-3, 1.0, 50.0, 0.1, 2.0, 7.0])[:, None, None]
    x[4] = 0.0  # a row of zeros
    return x


@pytest.mark.parametrize(("wire", "rel"), [("bf16", 2**-8), ("fp16", 2**-11)])
def test_float_codecs_round_to_nearest(wire: str, rel: float) -> None:
    x = _x()
    t, scale = encode_tensor(x, wire)
    back = decode_tensor(t, scale)
    assert scale is None and back.dtype == torch.float32 and t.element_size() == 2
    assert ((back - x).abs() <= rel * x.abs() + 1e-7).all()


def test_int8_per_row_scale_bounds_the_error() -> None:
    x = _x()
    q, scale = encode_tensor(x, "int8")
    back = decode_tensor(q, scale)
    assert q.dtype == torch.int8 and scale is not None and scale.shape == (6,)
    assert float(scale[4]) == 0.0 and (back[4] == 0).all()
    row_max = x.reshape(6, -1).abs().amax(1)
    assert torch.allclose(scale, row_max / 127)
    assert ((back - x).abs().reshape(6, -1) <= scale[:, None] / 2 + 1e-9).all()  # half a step per row
    assert int(q.abs().max()) == 127


def test_fp16_clamps_instead_of_overflowing() -> None:
    t, _ = encode_tensor(torch.tensor([[1e6, -1e6, 3.0]]), "fp16")
    assert torch.isfinite(t).all() and float(t[0, 0]) == 65504.0


def test_wire_bytes_halve_and_quarter() -> None:
    shape = (128, 32, 14, 14)
    assert wire_bytes(shape, "fp32") == 128 * 25_088
    assert wire_bytes(shape, "bf16") == wire_bytes(shape, "fp32") // 2
    assert wire_bytes(shape, "int8") == 128 * 6_272 + 128 * 4


@pytest.mark.parametrize("wire", ["bf16", "fp16", "int8"])
def test_encoded_message_roundtrips_and_both_ends_hash_the_same_bytes(wire: str) -> None:
    msg = encode_message(Gradients(H, _x()), wire)
    env = message_to_proto(msg, limits=LIMITS)
    back = message_from_bytes(env.SerializeToString(), limits=LIMITS)
    assert canonical_bytes(back) == canonical_bytes(msg)  # the receiver's transcript equals the sender's
    cb = canonical_bytes(msg)
    assert env.tensor.data in cb  # the transcript covers the bytes sent, not the float32 before encoding
    assert env.tensor.row_scale in cb if wire == "int8" else not env.tensor.row_scale
    assert torch.equal(decode_message(back).tensor, decode_message(msg).tensor)


def test_fp32_is_untouched() -> None:
    msg = Activations(H, _x())
    assert encode_message(msg, "fp32") is msg and decode_message(msg) is msg


def _env_bytes(msg: Activations) -> bytes:
    return message_to_proto(msg, limits=LIMITS).SerializeToString()


@pytest.mark.parametrize(("scale", "why"), [
    (torch.tensor([1.0, 2.0]), "needs 6 float32 row scales"),
    (torch.tensor([1.0, -2.0, 1, 1, 1, 1]), "finite and >= 0"),
    (torch.tensor([1.0, float("nan"), 1, 1, 1, 1]), "finite and >= 0"),
])
def test_bad_row_scales_are_rejected(scale: torch.Tensor, why: str) -> None:
    q = torch.zeros(6, 3, 4, dtype=torch.int8)
    with pytest.raises(WireError, match=why):
        message_from_bytes(_env_bytes(Activations(H, q, scale=scale)), limits=LIMITS)


def test_scale_on_a_float_tensor_and_int8_without_scale_are_rejected() -> None:
    env = message_to_proto(Activations(H, torch.ones(2, 2)), limits=LIMITS)
    env.tensor.row_scale = b"\0" * 8
    with pytest.raises(WireError, match="only int8"):
        message_from_bytes(env.SerializeToString(), limits=LIMITS)
    with pytest.raises(WireError, match="row scales"):
        message_from_bytes(_env_bytes(Activations(H, torch.zeros(2, 2, dtype=torch.int8))), limits=LIMITS)


def test_in_process_int8_run_moves_a_quarter_of_the_bytes_and_verifies(tmp_path: Path) -> None:
    """The parties encode after the privacy mechanisms and hash what they send; verify checks both ends."""
    from clicooper import rundir
    from clicooper.provenance import verify_run
    from clicooper.training import train

    cfg = {"dataset": "digits", "model": "digits-mlp", "trainers": 2, "epochs": 1, "train_range": (0, 96),
           "defense": "dp", "dp": {"sigma": 0.5}}
    base = rundir.read_json(train(cfg, out=tmp_path / "fp32").path / rundir.METRICS)["epochs"][0]["bytes_per_cut"]
    run = train(cfg | {"wire_dtype": "int8"}, out=tmp_path / "int8")
    cut = rundir.read_json(run.path / rundir.METRICS)["epochs"][0]["bytes_per_cut"]
    assert cut["DO->T1"] == base["DO->T1"] // 4 + 96 * 4  # int8 values + one float32 scale per sample
    assert verify_run(run.path / rundir.LEDGER).ok
    privacy = rundir.read_json(run.path / "privacy.json")
    assert privacy == rundir.read_json(tmp_path / "fp32" / "privacy.json")  # ε unchanged: post-processing
