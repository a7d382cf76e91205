"""Cost of ``verify`` against the training it verifies (issue 6 target: under 1 % for a 10-epoch run).

    python -m experiments.research.verify_cost --out runs/verify10     # fmnist-cnn, K = 2, 10 epochs, rows 0:10000

Trains with provenance on (one compute thread), then times ``verify_run`` over the ledger and the delivered
segments (loading included) and the ``clicooper verify RUN --json`` process (interpreter start included).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from clicooper import train
from clicooper.provenance.delivered import load_segments
from clicooper.provenance.verify import verify_run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.research.verify_cost",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="new run directory")
    ap.add_argument("--model", default="fmnist-cnn")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--train", type=int, default=10000, help="training rows 0:N")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    run = Path(a.out)
    t0 = time.perf_counter()
    train({"dataset": "fashion-mnist", "model": a.model, "trainers": 2, "epochs": a.epochs, "seed": 0,
           "train_range": (0, a.train), "provenance": True}, out=str(run))
    t_train = time.perf_counter() - t0
    t1 = time.perf_counter()
    report = verify_run(run / "ledger.jsonl", load_segments(run))
    t_verify = time.perf_counter() - t1
    t2 = time.perf_counter()
    cli = subprocess.run([sys.executable, "-m", "clicooper.cli", "verify", str(run), "--json"],
                         capture_output=True, text=True, check=False)
    t_cli = time.perf_counter() - t2
    metrics = json.loads((run / "metrics.json").read_text())
    print(json.dumps({
        "model": a.model, "epochs": a.epochs, "train_rows": a.train, "train_s": round(t_train, 1),
        "verify_ok": report.ok, "verify_s": round(t_verify, 3), "verify_over_train": t_verify / t_train,
        "cli_verify_exit": cli.returncode, "cli_process_s": round(t_cli, 2), "cli_over_train": t_cli / t_train,
        "final_test_acc": metrics["final_test_acc"],
    }, indent=1))
    return 0 if report.ok and cli.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
