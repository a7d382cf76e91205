"""The prepared GPU check (issue 13): trainers on CUDA, the DO on the CPU, against everyone on the CPU.

``python -m benchmarks.gpu [--model fmnist-resnet] [--steps 300] [--bf16]``

Trains the same batches in-process twice (K trainers, U-shape, no defense, provenance off): once with every
party on the CPU, once with the trainers on ``cuda`` (``party_devices``; the DO stays on the CPU, the typical
deployment), optionally with ``trainer_precision = "bf16"``. Prints one JSON object with samples/s of each
and the GPU/CPU ratio. Without a CUDA GPU it says so and exits 2 (nothing measured); ``--trainer-device
cpu`` runs the same code path on the CPU alone (the test suite does, on digits).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from clicooper.config import RunConfig, make_config
from clicooper.core.setup import resolve_run
from clicooper.data import epoch_order, load_dataset
from clicooper.training import Session


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--model", default="fmnist-resnet")
    ap.add_argument("--trainers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--cpu-steps", type=int, default=30, help="steps of the all-CPU reference (it is slow)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--bf16", action="store_true", help="trainers under bf16 autocast")
    ap.add_argument("--trainer-device", default="cuda", choices=("cuda", "cpu"))
    return ap


def _rate(cfg: RunConfig, ds: Any, batches: list[torch.Tensor]) -> float:
    """Samples/s of the in-process split run of ``cfg`` over ``batches`` (one warm-up step first)."""
    cfg, bp = resolve_run(cfg, num_train=len(ds.train_ids(None)), input_shape=ds.input_shape,
                          num_classes=ds.num_classes)
    with tempfile.TemporaryDirectory(prefix="clicooper-gpu-") as td:
        s = Session(cfg, ds, Path(td), blueprint=bp)
        s.net.send_all(s.do.start_step(0, 0, batches[0]))
        s.net.run_until_idle()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for step, ids in enumerate(batches[1:], start=1):
            s.net.send_all(s.do.start_step(0, step, ids))
            s.net.run_until_idle()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return sum(len(b) for b in batches[1:]) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    """Measure and print JSON (exit 2 without a CUDA GPU when one is asked for)."""
    args = _parser().parse_args(argv)
    if args.trainer_device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU is visible: nothing measured (run this where one is, or pass --trainer-device cpu "
              "to exercise the code path)", file=sys.stderr)
        return 2
    base = {"dataset": args.dataset, "model": args.model, "trainers": args.trainers, "batch_size": args.batch_size,
            "provenance": False, "device": "cpu"}
    ds = load_dataset(args.dataset)
    order = epoch_order(ds.train_ids(None), seed=0, epoch=0)
    need = max(args.steps, args.cpu_steps) + 1
    span = max(1, len(order) - args.batch_size + 1)  # full batches only, wrapping over the epoch's order
    batches = [order[(i * args.batch_size) % span:][: args.batch_size] for i in range(need)]
    trainers = {f"T{i + 1}": args.trainer_device for i in range(args.trainers)}
    accel = make_config(**base, party_devices=trainers, trainer_precision="bf16" if args.bf16 else "fp32")
    cpu_rate = _rate(make_config(**base), ds, batches[: args.cpu_steps + 1])
    accel_rate = _rate(accel, ds, batches[: args.steps + 1])
    out = {"model": args.model, "trainers": args.trainers, "batch_size": args.batch_size,
           "trainer_device": args.trainer_device, "bf16": args.bf16,
           "gpu_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "samples_per_s": {"all_cpu": cpu_rate, "trainers_on_device": accel_rate},
           "steps": {"all_cpu": args.cpu_steps, "trainers_on_device": args.steps},
           "ratio_device_over_cpu": accel_rate / cpu_rate if cpu_rate > 0 else None}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
