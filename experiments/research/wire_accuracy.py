"""Accuracy effect of wire compression (and of the batch size the WAN bench prefers), in-process.

    python -m experiments.research.wire_accuracy --out runs/wire   # fmnist-cnn, K = 2, rows 0:10000, 2 epochs

An in-process run encodes and decodes exactly as a gRPC run does (protocol/wire_codec.py: the sending party
encodes, the receiver decodes before its code), so its test accuracy is the codec's effect. For every seed
each codec (and each extra batch size, float32) is trained on the same rows, seed and epochs; the table
gives test accuracy, the bytes per sample of the busiest cut, and the difference to float32 in points.
A short run on a 10k subset: the figures are the codec's effect plus run-to-run divergence (a rounding
difference at the first step sends two runs on different trajectories); several seeds show its size.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from clicooper import rundir
from clicooper.training import train


def one(out: Path, *, model: str, rows: int, epochs: int, seed: int, wire: str, batch: int) -> dict[str, Any]:
    """Train one configuration; its final test accuracy and the DO→T1 bytes per sample."""
    run = train({"dataset": "fashion-mnist", "model": model, "trainers": 2, "epochs": epochs, "seed": seed,
                 "train_range": (0, rows), "batch_size": batch, "wire_dtype": wire, "provenance": False,
                 "device": "cpu"}, out=out)
    last = rundir.read_json(run.path / rundir.METRICS)["epochs"][-1]
    cut = last["bytes_per_cut"]
    return {"wire": wire, "batch": batch, "seed": seed, "test_acc": float(last["test_acc"]),
            "bytes_per_sample_do_t1": cut.get("DO->T1", 0) / rows}


def main(argv: list[str] | None = None) -> None:
    """Train every (seed, codec) and (seed, batch size); print JSON lines, then a Markdown table."""
    ap = argparse.ArgumentParser(prog="python -m experiments.research.wire_accuracy")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="fmnist-cnn")
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--wires", default="fp32,bf16,fp16,int8")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--extra-batch-sizes", default="", help="also float32 at these batch sizes, e.g. 512")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    kw = {"model": a.model, "rows": a.rows, "epochs": a.epochs}
    runs: list[tuple[str, int]] = [(w, a.batch_size) for w in a.wires.split(",")]
    runs += [("fp32", int(b)) for b in a.extra_batch_sizes.split(",") if b]
    rows = []
    for seed in (int(s) for s in a.seeds.split(",")):
        for wire, batch in runs:
            r = one(a.out / f"s{seed}_{wire}_b{batch}", seed=seed, wire=wire, batch=batch, **kw)
            print(json.dumps(r), flush=True)
            rows.append(r)
    base = {r["seed"]: r["test_acc"] for r in rows if r["wire"] == "fp32" and r["batch"] == a.batch_size}
    print(f"\n{a.model}, K = 2, rows 0:{a.rows}, {a.epochs} epochs, seeds {a.seeds}\n")
    print("| wire | batch | bytes/sample DO→T1 | test accuracy per seed | Δ vs fp32 (pt) per seed | mean Δ (pt) |")
    print("|---|---|---|---|---|---|")
    for wire, batch in runs:
        mine = [r for r in rows if (r["wire"], r["batch"]) == (wire, batch)]
        deltas = [100 * (r["test_acc"] - base[r["seed"]]) for r in mine]
        accs = " / ".join(f"{r['test_acc']:.4f}" for r in mine)
        ds = " / ".join(f"{d:+.2f}" for d in deltas)
        print(f"| {wire} | {batch} | {mine[0]['bytes_per_sample_do_t1']:,.0f} | {accs} | {ds} | "
              f"{statistics.mean(deltas):+.2f} |")


if __name__ == "__main__":  # pragma: no cover
    main()
