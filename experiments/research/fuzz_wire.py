"""A bounded fuzz campaign on the envelopes a party receives: mutate valid envelopes of every message kind and
feed each to both parse paths and to the receive handlers (the transport's, then the party's).

    python -m experiments.research.fuzz_wire --seconds 100 --seed 0 --out results/fuzz/wire.json

Every case is one mutated byte string. It goes through

1. the full parse (:func:`~clicooper.net.serde.message_from_bytes`) and the fast receive path
   (:func:`~clicooper.net.serde.parse_envelope` + :func:`~clicooper.net.serde.message_from_proto`): both must
   refuse it or both must accept the same record;
2. the transport's receive handler (``GrpcTransport._receive``: routing, sequence, de-duplication), then, when
   it accepts, the party's ``handle`` (a middle trainer, the open tail, an open-tail DO with a step in flight and
   a U-shape DO with a query open, in the codec of the base envelope).

The only acceptable failure anywhere is :class:`~clicooper.errors.WireError`; anything else is a *crash*. The
report gives the cases tried per message kind, crashes (with the first few reproductions, hex), disagreements
between the parse paths, the peak resident memory and the worst time of one case.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import struct
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clicooper.errors import WireError
from clicooper.net import serde
from clicooper.net.grpc_transport import GrpcTransport
from clicooper.net.node_base import peak_rss_mb
from clicooper.net.proto import clicooper_pb2 as pb
from clicooper.net.serde import WireLimits, message_from_bytes, message_from_proto, parse_envelope
from clicooper.parties.data_owner import DataOwner
from clicooper.parties.trainer import Trainer
from clicooper.protocol.messages import (
    Activations,
    Control,
    Gradients,
    Header,
    Labels,
    Message,
    canonical_bytes,
)
from clicooper.protocol.wire_codec import encode_message

RUN = "fuzz-run"
LIMITS = WireLimits(max_tensor_bytes=1 << 16, max_control_bytes=1 << 12)
FEATURES = 3  # every cut is (B, 3); the tail has 4 outputs


# ------------------------------------------------------------------------------------------ base envelopes
def _bases() -> list[tuple[str, str, Message]]:
    """(kind label, codec, message) of the valid envelopes the mutations start from."""
    x = torch.linspace(-1, 1, 2 * FEATURES).reshape(2, FEATURES)

    def h(sender: str, receiver: str, micro: int = 0, n_micro: int = 1, step: int = 0) -> Header:
        return Header(sender, receiver, 0, step, micro, n_micro)

    out: list[tuple[str, str, Message]] = []
    for codec in ("fp32", "int8", "bf16"):
        def enc(m: Message, codec: str = codec) -> Message:
            return encode_message(m, codec)
        out += [
            ("activations", codec, enc(Activations(h("DO", "T1"), x))),
            ("activations-infer", codec, enc(Activations(h("DO", "T1", step=900), x, mode="infer"))),
            ("activations-tail", codec, enc(Activations(h("T1", "T2"), x))),
            ("gradients", codec, enc(Gradients(h("T2", "T1"), x))),
            ("gradients-do", codec, enc(Gradients(h("T1", "DO"), x))),
            ("answer", codec, enc(Activations(h("T2", "DO", step=900), torch.ones(2, 4), mode="infer"))),
        ]
    out += [
        ("labels", "fp32", Labels(h("DO", "T2"), torch.tensor([0, 3]))),
        ("control-batch", "fp32", Control(h("DO", "T2"), "batch", {"size": "2"})),
        ("control-loss", "fp32", Control(h("T2", "DO"), "loss", {"loss_sum": "1.25", "correct": "1", "count": "2"})),
        ("control-node", "fp32", Control(h("DO", "T1"), "node-start", {"round": "0", "epochs": "1", "steps": "1"})),
    ]
    return out


# ------------------------------------------------------------------------------------------ the receivers
class Receivers:
    """Transports (not started: their receive handler is called directly) and parties of one codec."""

    def __init__(self, codec: str) -> None:
        torch.manual_seed(0)
        names = ("DO", "T1", "T2")
        self.transports = {n: GrpcTransport(n, run_id=RUN, listen="127.0.0.1:0", insecure_loopback=True,
                                            peers={p: "" for p in names if p != n}, limits=LIMITS,
                                            inbound_capacity=1 << 30, max_rejections=None) for n in names}
        mid, tail = nn.Linear(FEATURES, FEATURES), nn.Linear(FEATURES, 4)
        self.t1 = Trainer("T1", mid, torch.optim.SGD(mid.parameters(), lr=0.01), left="DO", right="T2",
                          input_shape=(FEATURES,))
        self.t2 = Trainer("T2", tail, torch.optim.SGD(tail.parameters(), lr=0.01), left="T1", right="DO",
                          holds_tail=True, input_shape=(FEATURES,))
        self.t2.max_batch = 8
        self.do_open = self._do(u_shape=False)
        self.do_u = self._do(u_shape=True)
        for p in (self.t1, self.t2, self.do_open, self.do_u):
            p.wire_dtype = codec
        self.do_open.start_step(0, 0, torch.arange(2))  # a step in flight: labels and loss reports expected
        self.do_u.start_query(torch.randn(2, 4), epoch=0, step=900, query_ids=torch.arange(2))

    @staticmethod
    def _do(*, u_shape: bool) -> DataOwner:
        head = nn.Linear(4, FEATURES)
        tail = nn.Linear(FEATURES, 4) if u_shape else None
        params = list(head.parameters()) + (list(tail.parameters()) if tail is not None else [])
        return DataOwner(head=head, tail=tail, optimizer=torch.optim.SGD(params, lr=0.01),
                         x_train=torch.randn(8, 4), y_train=torch.tensor([0, 1, 2, 3] * 2), trainers=["T1", "T2"],
                         expected_return_shape=(FEATURES,) if u_shape else None)

    def parties(self, receiver: str) -> list[Any]:
        """The party objects a message to ``receiver`` is handed to."""
        return {"T1": [self.t1], "T2": [self.t2], "DO": [self.do_open, self.do_u]}.get(receiver, [])


# ------------------------------------------------------------------------------------------ mutations
_SPECIAL_F32 = [float("nan"), float("inf"), -float("inf"), 3.4028235e38, 1e-45, -0.0]
_SPECIAL_INT = [0, 1, 2**31, 2**62, 2**63 - 1, 2**64 - 1, -1, -(2**63)]


def _field(num: int, wt: int, body: bytes) -> bytes:
    key = serde._varint(num << 3 | wt)
    return key + (serde._varint(len(body)) + body if wt == 2 else body)


def _pieces(raw: bytes) -> list[tuple[int, int, bytes, bytes]] | None:
    """Top-level fields as (number, wire type, whole field, value)."""
    buf = memoryview(raw)
    try:
        return [(n, w, bytes(buf[s:e]), bytes(buf[v:e])) for n, w, s, v, e in serde._fields(buf, 0, len(buf))]
    except ValueError:
        return None


def mutate(raw: bytes, rng: random.Random) -> bytes:
    """One to three random mutations of ``raw`` (byte-level, field-level, or value-level)."""
    for _ in range(rng.randint(1, 3)):
        raw = rng.choice(_MUTATORS)(raw, rng)
    return raw


def _m_flip(raw: bytes, rng: random.Random) -> bytes:
    if not raw:
        return bytes([rng.randrange(256)])
    i = rng.randrange(len(raw))
    return raw[:i] + bytes([rng.randrange(256)]) + raw[i + 1:]


def _m_splice(raw: bytes, rng: random.Random) -> bytes:
    i, j = sorted(rng.randrange(len(raw) + 1) for _ in range(2))
    junk = bytes(rng.randrange(256) for _ in range(rng.randint(0, 12)))
    return raw[:i] + junk + raw[j:] if rng.random() < 0.5 else raw[:i] + junk + raw[i:]


def _m_truncate(raw: bytes, rng: random.Random) -> bytes:
    return raw[: rng.randrange(len(raw) + 1)]


def _m_fields(raw: bytes, rng: random.Random) -> bytes:
    """Duplicate, move, drop a top-level field, or slip in another body."""
    p = _pieces(raw)
    if not p:
        return _m_flip(raw, rng)
    parts = [f for _n, _w, f, _v in p]
    op = rng.choice(["dup", "move", "drop", "control", "tensor"])
    i, j = rng.randrange(len(parts)), rng.randrange(len(parts) + 1)
    if op == "dup":
        parts.insert(j, parts[i])
    elif op == "move":
        parts.insert(j, parts.pop(i))
    elif op == "drop":
        parts.pop(i)
    elif op == "control":
        parts.insert(j, _field(11, 2, _field(1, 2, b"loss")))
    else:
        parts.insert(j, _field(10, 2, _field(3, 2, bytes(8 * rng.randint(0, 4)))))
    return b"".join(parts)


def _m_tensor(raw: bytes, rng: random.Random) -> bytes:
    """Rewrite one field of the tensor body: dtype, shape, data values, mode, row scale; or split the body."""
    p = _pieces(raw)
    if not p:
        return _m_flip(raw, rng)
    k = next((i for i, (n, w, _f, _v) in enumerate(p) if n == 10 and w == 2), None)
    if k is None:
        return _m_fields(raw, rng)
    sub = _pieces(p[k][3]) or []
    fields = {n: v for n, _w, _f, v in sub}
    op = rng.choice(["dtype", "shape", "values", "mode", "scale", "split"])
    if op == "dtype":
        fields[1] = rng.choice([b"float64", b"float16", b"bfloat16", b"int64", b"int8", b"uint8", b"complex64", b""])
    elif op == "shape":
        dims = [rng.choice(_SPECIAL_INT + [0, 1, 2, 3, 4]) for _ in range(rng.randint(0, 9))]
        fields[2] = b"".join(serde._varint(d % 2**64) for d in dims)
    elif op == "values":
        data = bytearray(fields.get(3, b""))
        for i in range(0, len(data) - 3, 4):
            if rng.random() < 0.3:
                data[i:i + 4] = struct.pack("<f", rng.choice(_SPECIAL_F32))
        if rng.random() < 0.2:  # the same values as float64, out of float32's range
            data = bytearray(struct.pack(f"<{len(data) // 4}d", *([1e300] * (len(data) // 4))))
            fields[1] = b"float64"
        fields[3] = bytes(data)
    elif op == "mode":
        fields[4] = rng.choice([b"", b"train", b"infer", b"eval"])
    elif op == "scale":
        rows = rng.randint(0, 3)
        fields[5] = struct.pack(f"<{rows}f", *(rng.choice(_SPECIAL_F32 + [3e38, 1.0]) for _ in range(rows)))
    else:  # the body in two fragments, a field of another kind between them
        body = b"".join(_field(n, 2, v) for n, v in fields.items() if n != 3)
        data = _field(10, 2, _field(3, 2, fields.get(3, b"")))
        head = b"".join(f for i, (_n, _w, f, _v) in enumerate(p) if i != k)
        return head + data + _field(11, 2, _field(1, 2, b"x")) * rng.randint(0, 1) + _field(10, 2, body)
    body = b"".join(_field(n, 2, v) for n, v in sorted(fields.items()))
    p[k] = (10, 2, _field(10, 2, body), body)
    return b"".join(f for _n, _w, f, _v in p)


def _m_header(raw: bytes, rng: random.Random) -> bytes:
    """Extreme counters (seq, epoch, step, micro, n_micro), foreign names or kinds, control payload values."""
    p = _pieces(raw)
    if not p:
        return _m_flip(raw, rng)
    num = rng.choice([2, 3, 4, 5, 6, 7, 8, 9, 11])
    if num in (4, 5, 6, 7, 8):
        new = _field(num, 0, serde._varint(rng.choice(_SPECIAL_INT) % 2**64))
    elif num == 11:
        key = rng.choice([b"size", b"loss_sum", b"correct", b"count", b"round"])
        val = rng.choice([b"nan", b"inf", b"-5", b"1000000", b"0", b"9" * 5000, b"1e3", b"-0.0", b"2"])
        entry = _field(1, 2, key) + _field(2, 2, val)
        new = _field(11, 2, _field(1, 2, rng.choice([b"loss", b"batch", b"node-start"])) + _field(2, 2, entry))
    else:
        new = _field(num, 2, rng.choice([b"DO", b"T1", b"T2", b"T9", b"", b"x" * 300, b"labels", b"control",
                                         b"gradients", b"activations"]))
    parts = [f for n, _w, f, _v in p if n != num]
    parts.insert(rng.randrange(len(parts) + 1), new)
    return b"".join(parts)


_MUTATORS: list[Callable[[bytes, random.Random], bytes]] = [
    _m_flip, _m_splice, _m_truncate, _m_fields, _m_fields, _m_tensor, _m_tensor, _m_tensor, _m_header, _m_header]


# ------------------------------------------------------------------------------------------ the campaign
def _outcome(decode: Callable[[], Message]) -> tuple[Any, ...]:
    try:
        m = decode()
    except WireError:
        return ("refused",)
    return ("ok", canonical_bytes(m), m.header)


def run_case(raw: bytes, sender: str, receiver: str, receivers: Receivers) -> dict[str, Any]:
    """One case through both parse paths, the receive handler of ``receiver``'s transport on the link of
    ``sender`` (those of the base envelope), then the parties; what happened."""
    out: dict[str, Any] = {"crash": None, "disagree": False, "accepted": False, "handled": 0}

    def fast() -> Message:
        env, data = parse_envelope(raw, limits=LIMITS)
        return message_from_proto(env, limits=LIMITS, data=data)

    stage = "parse"
    try:
        a, b = _outcome(lambda: message_from_bytes(raw, limits=LIMITS)), _outcome(fast)
        out["disagree"] = a != b
        stage = "transport"
        t = receivers.transports[receiver]
        ack = t._receive(t._links[sender], raw)
        if ack.status != pb.Ack.ACCEPTED:
            return out
        out["accepted"] = True
        msg = t._inbox.popleft()
        stage = "party"
        for party in receivers.parties(msg.header.receiver):
            try:
                party.handle(msg)
                out["handled"] += 1
            except WireError:
                pass
    except WireError:
        pass
    except Exception as e:  # noqa: BLE001 - the point: anything but a WireError is a crash, recorded
        out["crash"] = {"stage": stage, "error": f"{type(e).__name__}: {str(e)[:300]}", "hex": raw.hex()[:2000],
                        "trace": traceback.format_exc()[-1500:]}
    return out


def campaign(seconds: float, seed: int, max_cases: int | None = None) -> dict[str, Any]:
    """Mutate and feed envelopes for ``seconds`` (or ``max_cases``); the figures as a JSON-able dict."""
    torch.set_num_threads(1)
    logging.getLogger("clicooper.net").setLevel(logging.ERROR)  # every refusal is logged: millions of lines
    rng = random.Random(seed)
    bases = _bases()
    receivers: dict[str, Receivers] = {}
    per_kind: Counter[str] = Counter()
    accepted: Counter[str] = Counter()
    crashes: list[dict[str, Any]] = []
    n_crash = n_disagree = handled = 0
    worst, worst_kind = 0.0, ""
    seq: Counter[str] = Counter()
    t_end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < t_end and (max_cases is None or n < max_cases):
        kind, codec, msg = rng.choice(bases)
        link = f"{msg.header.sender}->{msg.header.receiver}"
        seq[link] += 1
        stamped = Header(**{**msg.header.__dict__, "run_id": RUN, "seq": seq[link]})
        base = serde.message_to_outgoing(type(msg)(**{**msg.__dict__, "header": stamped}), limits=LIMITS).to_bytes()
        raw = mutate(base, rng) if rng.random() < 0.97 else base  # a few unmutated: the handlers' honest path
        if n % 500 == 0 or codec not in receivers:  # fresh parties now and then: bounded state, all states seen
            receivers[codec] = Receivers(codec)
        t0 = time.perf_counter()
        r = run_case(raw, msg.header.sender, msg.header.receiver, receivers[codec])
        dt = time.perf_counter() - t0
        n += 1
        per_kind[kind] += 1
        accepted[kind] += r["accepted"]
        handled += r["handled"]
        n_disagree += r["disagree"]
        if r["crash"] is not None:
            n_crash += 1
            if len(crashes) < 10:
                crashes.append({"kind": kind, "codec": codec, **r["crash"]})
        if dt > worst:
            worst, worst_kind = dt, kind
    return {
        "surface": "envelopes (both parse paths, the transport's receive handler, the parties' handle)",
        "seed": seed, "seconds_budget": seconds, "cases": n, "cases_per_kind": dict(sorted(per_kind.items())),
        "accepted_by_transport_per_kind": dict(sorted(accepted.items())), "party_handled_without_error": handled,
        "crashes": n_crash, "parse_path_disagreements": n_disagree, "crash_examples": crashes,
        "peak_rss_mb": round(peak_rss_mb(), 1), "worst_case_seconds": round(worst, 4),
        "worst_case_kind": worst_kind, "limits": {"max_tensor_bytes": LIMITS.max_tensor_bytes,
                                                  "max_control_bytes": LIMITS.max_control_bytes},
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: run the campaign and write its JSON; exit 1 on any crash or disagreement."""
    ap = argparse.ArgumentParser(prog="python -m experiments.research.fuzz_wire",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=100.0, help="time budget (default 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-cases", type=int, default=None, help="stop after this many cases")
    ap.add_argument("--out", type=Path, default=Path("results/fuzz/wire.json"))
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    report = campaign(a.seconds, a.seed, a.max_cases)
    report["wall_seconds"] = round(time.monotonic() - t0, 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "crash_examples"}, indent=2))
    for c in report["crash_examples"][:3]:
        print(c["stage"], c["error"], c["trace"], sep="\n")
    return 0 if report["crashes"] == 0 and report["parse_path_disagreements"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
