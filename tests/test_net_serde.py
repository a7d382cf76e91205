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


def _field(num: int, body: bytes) -> bytes:
    """One length-delimited protobuf field."""
    return bytes([num << 3 | 2]) + serde._varint(len(body)) + body


def _both_refuse(raw: bytes, reason: str) -> None:
    with pytest.raises(WireError, match=reason):
        _fast_decode(raw)
    with pytest.raises(WireError, match=reason):
        message_from_bytes(raw, limits=LIMITS)


def test_repeated_or_interleaved_tensor_fields_are_refused_by_both_paths():
    # prepare: data twice (protobuf keeps the last), a control after the tensor (the oneof keeps it), and
    # tensor(data) · control · tensor(dtype, shape): the full parse once kept a tensor without data while
    # the split accepted the first fragment's 16 bytes
    msg = Activations(H, torch.ones(2, 2))
    raw = serde.message_to_outgoing(msg, limits=LIMITS).to_bytes()
    twice = raw + _field(10, _field(3, bytes(16)))
    ctl = _field(11, _field(1, b"loss"))  # a control body
    head = message_to_proto(msg, limits=LIMITS)
    dtype_shape = _field(1, b"float32") + _field(2, b"\x02\x02") + _field(4, b"train")
    head.ClearField("tensor")
    interleaved = (head.SerializeToString() + _field(10, _field(3, bytes(16))) + _field(11, _field(1, b"x"))
                   + _field(10, dtype_shape))
    # execute / assert
    _both_refuse(twice, "Envelope.tensor appears 2 times")
    _both_refuse(raw + ctl, "both a tensor and a control body")
    _both_refuse(interleaved, "Envelope.tensor appears 2 times")
    ones = bytes(torch.ones(2, 2).numpy().tobytes())
    split = head.SerializeToString() + _field(10, dtype_shape + _field(3, ones))
    assert torch.equal(_fast_decode(split).tensor, message_from_bytes(split, limits=LIMITS).tensor)  # well-formed
    _both_refuse(head.SerializeToString() + _field(10, dtype_shape + _field(3, ones) + _field(3, ones)),
                 "TensorPayload.data appears 2 times")
    _both_refuse(raw + _field(15, b"x"), "unknown Envelope field 15")
    _both_refuse(raw + bytes([5 << 3 | 2, 1, 0]), "Envelope.epoch has wire type 2")
    assert serde.split_tensor_data(twice)[1] is None  # the split alone still declines odd layouts
    assert serde.split_tensor_data(b"\x52\xff")[1] is None  # a length past the end


@FUZZ
@given(data=st.one_of(malformed_envelope_strategy("run", "DO", "T1"), st.binary(max_size=300)),
       cut=st.integers(0, 64), junk=st.binary(max_size=16))
def test_fuzz_fast_path_agrees_with_the_full_parser(data, cut, junk):
    # execute / assert: accepted or rejected alike, and the same record when accepted
    for raw in (data, data[:cut] + junk + data[cut:]):
        assert _same(lambda raw=raw: _fast_decode(raw), lambda raw=raw: message_from_bytes(raw, limits=LIMITS))


# Field-level mutations of valid envelopes: what the byte-level fuzzers above rarely build (a field twice, fields
# moved, a tensor body split into fragments, a control body slipped between them), so that the fast receive path
# and the full parse are compared on the layouts where they could differ.

def _valid_envelope(kind: str, rows: int, mode: str) -> bytes:
    t = torch.arange(rows * 3, dtype=torch.float32).reshape(rows, 3)
    msg = {"activations": Activations(H, t, mode=mode), "gradients": Gradients(H, t),
           "int8": Activations(H, t.to(torch.int8), scale=torch.full((rows,), 0.5)),
           "labels": Labels(H, torch.arange(rows)), "control": Control(H, "loss", {"count": str(rows)})}[kind]
    return serde.message_to_outgoing(msg, limits=LIMITS).to_bytes()


def _pieces(raw: bytes) -> list[tuple[int, bytes]]:
    """Top-level fields of ``raw`` as (number, bytes); the tensor body split into one piece per sub-field."""
    buf = memoryview(raw)
    out: list[tuple[int, bytes]] = []
    for num, wt, s, v, e in serde._fields(buf, 0, len(buf)):
        if num == 10 and wt == 2:
            out += [(10, _field(10, bytes(buf[fs:fe]))) for _n, _w, fs, _v, fe in serde._fields(buf, v, e)]
        else:
            out.append((num, bytes(buf[s:e])))
    return out


@st.composite
def mutated_envelopes(draw) -> bytes:
    raw = _valid_envelope(draw(st.sampled_from(["activations", "gradients", "int8", "labels", "control"])),
                          draw(st.integers(0, 3)), draw(st.sampled_from(["train", "infer"])))
    pieces = _pieces(raw)
    if draw(st.booleans()):  # the tensor pieces merged back into one fragment (the canonical layout)
        body = _strip(pieces)
        pieces = [(n, p) for n, p in pieces if n != 10] + ([(10, _field(10, body))] if body else [])
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["dup", "move", "drop", "control", "byte"]))
        if not pieces:
            break
        i = draw(st.integers(0, len(pieces) - 1))
        j = draw(st.integers(0, len(pieces)))
        if op == "dup":
            pieces.insert(j, pieces[i])
        elif op == "move":
            pieces.insert(j, pieces.pop(i))
        elif op == "drop":
            pieces.pop(i)
        elif op == "control":
            pieces.insert(j, (11, _field(11, _field(1, b"loss"))))
        else:
            n, p = pieces[i]
            k = draw(st.integers(0, len(p) - 1))
            pieces[i] = (n, p[:k] + bytes([draw(st.integers(0, 255))]) + p[k + 1:])
    return b"".join(p for _n, p in pieces)


def _strip(pieces: list[tuple[int, bytes]]) -> bytes:
    """The sub-fields of every tensor piece, concatenated (each piece is ``_field(10, sub-field)``)."""
    out = b""
    for n, p in pieces:
        if n == 10:
            _num, _wt, _s, v, e = serde._fields(memoryview(p), 0, len(p))[0]
            out += p[v:e]
    return out


def _outcome(decode) -> tuple:
    try:
        m = decode()
    except WireError:
        return ("refused",)
    return ("ok", canonical_bytes(m), m.header, getattr(m, "scale", None) is not None)


@FUZZ
@given(raw=mutated_envelopes())
def test_property_fast_path_and_full_parse_agree_on_mutated_envelopes(raw):
    # execute
    fast = _outcome(lambda: _fast_decode(raw))
    full = _outcome(lambda: message_from_bytes(raw, limits=LIMITS))
    # assert: both refuse, or both accept the same record (header, kind, dtype, shape, data, scale)
    assert fast == full
