"""Loopback micro-benchmark of the gRPC transport: ``python -m benchmarks.transport``.

Round trips of one activation-sized tensor (default ``fmnist-cnn``'s cut 1 at batch 128: 128x32x14x14
float32 = 3.2 MB) DO → T1 (Activations) and back (Gradients), plaintext loopback and pinned TLS, and the
share of the time spent encoding/decoding/validating (serde + digest) on one core.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import torch

from benchmarks.loopback import loopback_mesh
from clicooper.net.link import message_digest
from clicooper.net.serde import WireLimits, message_from_bytes, message_to_proto
from clicooper.protocol.messages import Activations, Gradients, Header


def serde_seconds(x: torch.Tensor, limits: WireLimits, reps: int) -> dict[str, float]:
    """Mean seconds per message: encode (+serialize), decode (+validate); the digest, computed by the
    transport only for resends, is reported apart."""
    msg = Activations(Header("DO", "T1", 0, 0, run_id="b", seq=1), x)
    t0 = time.perf_counter()
    for _ in range(reps):
        data = message_to_proto(msg, limits=limits).SerializeToString()
    t1 = time.perf_counter()
    for _ in range(reps):
        back = message_from_bytes(data, limits=limits, expected_shape=(None, *x.shape[1:]))
    t2 = time.perf_counter()
    for _ in range(reps):
        message_digest(back)
    t3 = time.perf_counter()
    return {"encode_s": (t1 - t0) / reps, "decode_validate_s": (t2 - t1) / reps, "digest_s": (t3 - t2) / reps}


def round_trips(x: torch.Tensor, limits: WireLimits, n: int, *, tls: bool) -> float:
    """Mean seconds per DO → T1 → DO round trip of ``x``."""
    mesh = loopback_mesh(["DO", "T1"], tls=tls, limits=limits, run_id="bench")
    try:
        def echo() -> None:
            for _ in range(n + 1):
                m = mesh["T1"].recv(timeout=60)
                mesh["T1"].send(Gradients(Header("T1", "DO", 0, m.header.step), m.tensor))

        th = threading.Thread(target=echo)
        th.start()
        mesh["DO"].send(Activations(Header("DO", "T1", 0, 0), x))  # warm-up: connect, first messages
        mesh["DO"].recv(timeout=60)
        t0 = time.perf_counter()
        for i in range(n):
            mesh["DO"].send(Activations(Header("DO", "T1", 0, i + 1), x))
            mesh["DO"].recv(timeout=60)
        dt = (time.perf_counter() - t0) / n
        th.join()
        return dt
    finally:
        for t in mesh.values():
            t.close()


def main(argv: list[str] | None = None) -> None:
    """Print the figures as JSON."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.transport")
    ap.add_argument("--shape", default="128,32,14,14")
    ap.add_argument("-n", type=int, default=30)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    shape = tuple(int(s) for s in a.shape.split(","))
    x = torch.randn(shape)
    limits = WireLimits.for_shapes([shape])
    mb = x.numel() * 4 / 1e6
    s = serde_seconds(x, limits, reps=a.n)
    out: dict[str, object] = {"shape": shape, "MB": round(mb, 2), **{k: round(v * 1e3, 2) for k, v in
                                                                   ((k + "_ms", v) for k, v in s.items())}}
    for tls in (False, True):
        rt = round_trips(x, limits, a.n, tls=tls)
        key = "tls" if tls else "plaintext"
        out[f"{key}_round_trip_ms"] = round(rt * 1e3, 2)
        out[f"{key}_MB_per_s_each_way"] = round(2 * mb / rt, 1)
        out[f"{key}_serde_share"] = round(2 * (s["encode_s"] + s["decode_validate_s"]) / rt, 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":  # pragma: no cover
    main()
