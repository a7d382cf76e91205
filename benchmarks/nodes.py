"""Loopback benchmark of whole nodes: ``python -m benchmarks.nodes`` (docs/network.md "Measured").

* gRPC (one process per party, ``launch_local``) vs in-process (``train``) throughput on the same config,
  for each M (``grpc_vs_inproc_m{M}``), and the best of each transport over the M tried;
* pipelining: M micro-batches (different trainers busy with different micro-batches at once) vs M = 1;
* the share of the gRPC step time spent in serialization (encode + serialize + parse + validate of every
  tensor message of a step, measured apart on the plan's cut shapes; the chain is sequential at M = 1, so
  this is time on the critical path).

Times are the DO's round time (``metrics.json`` "seconds"): process start-up is excluded.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.transport import serde_seconds
from clicooper import rundir
from clicooper.net.builder import cut_shapes
from clicooper.net.launch import launch_local
from clicooper.net.serde import WireLimits
from clicooper.runs import load_run
from clicooper.training import train


def _samples_per_s(run: Path) -> float:
    m = rundir.read_json(run / rundir.METRICS)["epochs"]
    return sum(e["samples_per_s"] * e["seconds"] for e in m) / sum(e["seconds"] for e in m)


def serde_share(run: Path, seconds_per_step: float, reps: int = 5) -> float:
    """Serialization seconds of one step's tensor messages / the step's wall time."""
    r = load_run(run)
    bs = int(r.config.batch_size or 128)
    shapes = cut_shapes(r.plan, bs)[:-1]  # activations at each cut (the gradient back has the same shape)
    limits = WireLimits.for_shapes(shapes)
    per_step = 0.0
    for s in shapes:
        t = serde_seconds(torch.randn(s), limits, reps)
        per_step += 2 * (t["encode_s"] + t["decode_validate_s"])  # activations forward + gradients back
    return per_step / seconds_per_step


def bench(config: dict[str, Any], *, micro: tuple[int, ...] = (1, 4), workdir: Path | None = None,
          insecure_loopback: bool = True) -> dict[str, Any]:
    """Run ``config`` in-process and over gRPC for each M in ``micro``; return the figures."""
    torch.set_num_threads(1)
    work = Path(workdir or tempfile.mkdtemp(prefix="clicooper-bench-"))
    cfg = dict(config, provenance=False)
    out: dict[str, Any] = {"config": cfg, "transport": "plaintext loopback" if insecure_loopback else "pinned TLS"}
    for m in micro:  # the same configuration on both transports
        ip = train(cfg | {"micro_batches": m}, out=work / f"inproc_m{m}")
        out[f"inproc_m{m}_samples_per_s"] = _samples_per_s(ip.path)
        run = work / f"grpc_m{m}"
        launch_local(cfg | {"micro_batches": m}, run, insecure_loopback=insecure_loopback, max_restarts=0)
        out[f"grpc_m{m}_samples_per_s"] = _samples_per_s(run)
        out[f"grpc_vs_inproc_m{m}"] = out[f"grpc_m{m}_samples_per_s"] / out[f"inproc_m{m}_samples_per_s"]
    out["inproc_samples_per_s"] = out[f"inproc_m{micro[0]}_samples_per_s"]
    base = out[f"grpc_m{micro[0]}_samples_per_s"]
    out["grpc_vs_inproc_ratio"] = base / out["inproc_samples_per_s"]
    best_ip = max(out[f"inproc_m{m}_samples_per_s"] for m in micro)
    best_grpc = max(out[f"grpc_m{m}_samples_per_s"] for m in micro)
    out["best_grpc_vs_best_inproc"] = best_grpc / best_ip
    for m in micro[1:]:
        out[f"pipelining_speedup_m{m}"] = out[f"grpc_m{m}_samples_per_s"] / base
    bs = int(load_run(work / f"grpc_m{micro[0]}").config.batch_size or 128)
    out["serde_share_m1"] = serde_share(work / f"grpc_m{micro[0]}", bs / base)
    return out


def main(argv: list[str] | None = None) -> None:
    """Print the figures as JSON (defaults: fmnist-cnn, K = 2, 32 steps of batch 128)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.nodes")
    ap.add_argument("--model", default="fmnist-cnn")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--trainers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--micro", default="1,4")
    ap.add_argument("--tls", action="store_true")
    a = ap.parse_args(argv)
    cfg = {"dataset": a.dataset, "model": a.model, "trainers": a.trainers, "epochs": 1, "batch_size": a.batch_size,
           "train_range": (0, a.steps * a.batch_size), "device": "cpu"}
    res = bench(cfg, micro=tuple(int(m) for m in a.micro.split(",")), insecure_loopback=not a.tls)
    print(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":  # pragma: no cover
    main()
