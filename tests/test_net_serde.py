"""Records ⇄ Envelope: round trips for every kind, validation, and a fuzzed decoder."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clicooper.errors import WireError
from clicooper.net import serde
from clicooper.net.serde import WireLimits, message_from_bytes, message_from_proto, message_to_proto
from clicooper.protocol.messages import (
    WIRE_DTYPES,
    Activations,
    Control,
    Gradients,
    Header,
    Labels,
    canonical_bytes,
)
from support.net import malformed_envelope_strategy

torch.set_num_threads(1)
LIMITS = WireLimits(max_tensor_bytes=1 << 16, max_control_bytes=1 << 12)
H = Header("DO", "T1", 2, 5, micro=1, n_micro=4, run_id="run", seq=3)


def _roundtrip(msg, **kw):
    env = message_to_proto(msg, limits=LIMITS)
    return message_from_bytes(env.SerializeToString(), limits=LIMITS, **kw)


@pytest.mark.parametrize("dtype", sorted(WIRE_DTYPES))
def test_activations_roundtrip_every_dtype(dtype):
    # prepare
    t = (torch.arange(24).reshape(2, 3, 4) % 7).to(WIRE_DTYPES[dtype])
    scale = torch.tensor([0.5, 2.0]) if dtype == "int8" else None  # int8 travels with per-row scales
    msg = Activations(H, t, mode="infer", scale=scale)
    # execute
    back = _roundtrip(msg)
    # assert
    assert isinstance(back, Activations) and back.header == H and back.mode == "infer"
    assert back.tensor.dtype == t.dtype and torch.equal(back.tensor, t)
    assert (back.scale is None) == (scale is None) and (scale is None or torch.equal(back.scale, scale))
    assert canonical_bytes(back) == canonical_bytes(msg)


def test_each_kind_roundtrips_with_typed_helpers():
    g = Gradients(H, torch.randn(3, 2))
    y = Labels(H, torch.tensor([0, 9, 3]))
    c = Control(H, kind="ledger_entry", payload={"entry": '{"r": 0}', "sig": "ab" * 32})
    e = torch.zeros(0, 5)
    assert torch.equal(serde.gradients_from_proto(serde.gradients_to_proto(g), limits=LIMITS).tensor, g.tensor)
    assert torch.equal(serde.labels_from_proto(serde.labels_to_proto(y), limits=LIMITS).tensor, y.tensor)
    assert serde.control_from_proto(serde.control_to_proto(c), limits=LIMITS) == c
    back = serde.activations_from_proto(serde.activations_to_proto(Activations(H, e)), limits=LIMITS)
    assert back.tensor.shape == (0, 5)
    with pytest.raises(WireError, match="expected gradients"):
        serde.gradients_from_proto(serde.control_to_proto(c), limits=LIMITS)


def test_non_contiguous_and_bfloat16_values_survive():
    t = torch.randn(4, 6).t()  # non-contiguous
    assert torch.equal(_roundtrip(Gradients(H, t)).tensor, t)
    b = torch.randn(5).to(torch.bfloat16)
    assert torch.equal(_roundtrip(Gradients(H, b)).tensor, b)


def _env(**changes):
    env = message_to_proto(Activations(H, torch.ones(2, 3)))
    for k, v in changes.items():
        setattr(env, k, v)
    return env


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda e: setattr(e.tensor, "dtype", "complex64"), "unknown wire dtype"),
        (lambda e: e.tensor.shape.__setitem__(0, -2), "negative dim"),
        (lambda e: setattr(e.tensor, "data", e.tensor.data[:-1]), "needs 24 bytes"),
        (lambda e: e.tensor.shape.extend([1] * 10), "max_ndim"),
        (lambda e: setattr(e.tensor, "mode", "eval"), "mode"),
        (lambda e: setattr(e, "kind", "control"), "does not match"),
        (lambda e: setattr(e, "kind", "weights"), "unknown message kind"),
        (lambda e: setattr(e, "epoch", -1), "epoch=-1"),
        (lambda e: setattr(e, "micro", 4), "micro=4"),
        (lambda e: setattr(e, "n_micro", 0), "n_micro=0"),
        (lambda e: setattr(e, "sender", "T1; rm -rf"), "not a valid party name"),
        (lambda e: setattr(e, "receiver", ""), "not a valid party name"),
        (lambda e: e.ClearField("tensor"), "does not match"),
    ],
)
def test_decoder_rejects_malformed_fields(mutate, reason):
    env = _env()
    mutate(env)
    with pytest.raises(WireError, match=reason):
        message_from_proto(env, limits=LIMITS)


def test_decoder_rejects_nan_inf_wrong_shape_and_oversize():
    nan = message_to_proto(Gradients(H, torch.tensor([1.0, math.nan])))
    inf = message_to_proto(Activations(H, torch.tensor([math.inf])))
    with pytest.raises(WireError, match="NaN or Inf"):
        message_from_proto(nan, limits=LIMITS)
    with pytest.raises(WireError, match="NaN or Inf"):
        message_from_proto(inf, limits=LIMITS)
    ok = message_to_proto(Activations(H, torch.ones(8, 32, 3, 3)))
    assert message_from_proto(ok, limits=LIMITS, expected_shape=(None, 32, 3, 3)).tensor.shape[0] == 8
    with pytest.raises(WireError, match=r"plan expects \('\*', 64, 3, 3\)"):
        message_from_proto(ok, limits=LIMITS, expected_shape=(None, 64, 3, 3))
    big = message_to_proto(Activations(H, torch.ones(LIMITS.max_tensor_bytes // 4 + 1)))
    with pytest.raises(WireError, match="max_tensor_bytes"):
        message_from_proto(big, limits=LIMITS)
    with pytest.raises(WireError, match="max_message_bytes"):
        message_from_bytes(b"\0" * (LIMITS.max_message_bytes + 1), limits=LIMITS)
    with pytest.raises(WireError, match="max_tensor_bytes"):  # the sender refuses too
        message_to_proto(Activations(H, torch.ones(LIMITS.max_tensor_bytes)), limits=LIMITS)


def test_labels_and_gradients_type_rules():
    with pytest.raises(WireError, match="1-D int64"):
        message_from_proto(message_to_proto(Labels(H, torch.zeros(2, 2, dtype=torch.int64))), limits=LIMITS)
    with pytest.raises(WireError, match="floating point"):
        message_from_proto(message_to_proto(Gradients(H, torch.zeros(3, dtype=torch.int32))), limits=LIMITS)
    big = Control(H, kind="k", payload={"x": "y" * (LIMITS.max_control_bytes + 1)})
    with pytest.raises(WireError, match="max_control_bytes"):
        message_from_proto(message_to_proto(big), limits=LIMITS)


def test_limits_from_plan_shapes():
    lim = WireLimits.for_shapes([(128, 32, 14, 14), (128, 64, 7, 7), (128, 128)])
    assert lim.max_tensor_bytes == int(128 * 32 * 14 * 14 * 4 * 1.25)
    assert lim.max_message_bytes > 4 * 1024 * 1024  # above gRPC's default: set explicitly on both ends


# ---------------------------------------------------------------------------------------------- fuzzing

FUZZ = settings(max_examples=1000, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(data=st.binary(max_size=512))
def test_fuzz_random_bytes_never_crash(data):
    try:
        message_from_bytes(data, limits=LIMITS)
    except WireError:
        pass  # the only allowed failure


@FUZZ
@given(data=malformed_envelope_strategy("run", "DO", "T1"))
def test_fuzz_malformed_envelopes_are_rejected(data):
    # A structurally valid envelope is still not acceptable here: the run id / receiver checks are the
    # transport's; the decoder must reject everything that is malformed as a record.
    try:
        msg = message_from_bytes(data, limits=LIMITS)
    except WireError:
        return
    # only routing defects (run id, receiver) pass the decoder: checking them is the transport's job
    assert msg.header.run_id != "run" or msg.header.receiver != "T1"


# ------------------------------------------------------------------- the transport's copy-saving path


def _fast_decode(raw: bytes, **kw):
    env, data = serde.parse_envelope(raw, limits=LIMITS)
    return message_from_proto(env, limits=LIMITS, data=data, **kw)


def _same(a, b) -> bool:
    try:
        ra = ("ok", canonical_bytes(a()))
    except WireError:
        ra = ("error",)
    try:
        rb = ("ok", canonical_bytes(b()))
    except WireError:
        rb = ("error",)
    return ra == rb


@pytest.mark.parametrize("dtype", sorted(WIRE_DTYPES))
def test_outgoing_parses_as_the_canonical_envelope_and_decodes_the_same(dtype):
    # prepare: a non-contiguous tensor too, so the view path meets a copy
    t = (torch.arange(48).reshape(4, 3, 4) % 5).to(WIRE_DTYPES[dtype]).transpose(1, 2)
    scale = torch.tensor([0.5, 2.0, 1.0, 0.25]) if dtype == "int8" else None
    msgs = [Activations(H, t, mode="train", scale=scale), Control(H, "loss", {"count": "3"})]
    if t.is_floating_point() or dtype == "int8":  # what a gradient may be
        msgs.append(Gradients(H, t, scale=scale))
    if dtype == "int64":
        msgs.append(Labels(H, torch.arange(4)))
    for msg in msgs:
        # execute
        out = serde.message_to_outgoing(msg, limits=LIMITS)
        raw = out.to_bytes()
        canon = message_to_proto(msg, limits=LIMITS).SerializeToString()
        # assert: same Envelope once parsed, same size, same record by either decoder
        assert len(raw) == out.size
        assert serde.pb.Envelope.FromString(raw) == serde.pb.Envelope.FromString(canon)
        assert canonical_bytes(_fast_decode(raw)) == canonical_bytes(msg)
        assert canonical_bytes(_fast_decode(canon)) == canonical_bytes(msg)


def test_split_leaves_odd_layouts_to_the_full_parser():
    # prepare: data twice (protobuf keeps the last), a control after the tensor (the oneof keeps it)
    msg = Activations(H, torch.ones(2, 2))
    raw = serde.message_to_outgoing(msg, limits=LIMITS).to_bytes()
    zeros = bytes(16)
    inner = b"\x1a" + serde._varint(len(zeros)) + zeros  # TensorPayload.data again: zeros
    twice = raw + b"\x52" + serde._varint(len(inner)) + inner
    ctl = message_to_proto(Control(H, "loss", {"a": "b"}), limits=LIMITS).SerializeToString()
    # execute / assert: the split declines, or agrees with the full parser
    assert serde.split_tensor_data(twice)[1] is None
    back = _fast_decode(twice)
    assert torch.equal(back.tensor, message_from_bytes(twice, limits=LIMITS).tensor)
    assert torch.equal(back.tensor, torch.zeros(2, 2))
    assert isinstance(_fast_decode(raw + ctl), Control)
    assert serde.split_tensor_data(b"\x52\xff")[1] is None  # a length past the end


@FUZZ
@given(data=st.one_of(malformed_envelope_strategy("run", "DO", "T1"), st.binary(max_size=300)),
       cut=st.integers(0, 64), junk=st.binary(max_size=16))
def test_fuzz_fast_path_agrees_with_the_full_parser(data, cut, junk):
    # execute / assert: accepted or rejected alike, and the same record when accepted
    for raw in (data, data[:cut] + junk + data[cut:]):
        assert _same(lambda raw=raw: _fast_decode(raw), lambda raw=raw: message_from_bytes(raw, limits=LIMITS))
