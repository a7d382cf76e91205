"""``make demo``: the main job on the default dataset, as a new user would run it.

Trains the reference model ``fmnist-cnn`` with 2 trainers (U-shape) on Fashion-MNIST samples 0:50000
(the rest stays free as attackers' auxiliary data), prints the plan and the test accuracy, and writes the
run to a fresh directory under ``runs/`` (an existing run is never overwritten).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from clicooper.cli import app


def main(argv: list[str] | None = None) -> None:
    """Run the demo through the real CLI."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--defense", default="labels")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        out = out.with_name(f"{out.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    cmd = [
        "train", "--dataset", "fashion-mnist", "--model", "fmnist-cnn", "--trainers", "2",
        "--topology", "u-shape", "--epochs", str(args.epochs), "--train-range", "0:50000",
        "--defense", args.defense, "--record-observations", "--out", str(out),
    ]
    print("clicooper " + " ".join(cmd), file=sys.stderr)
    try:
        app(cmd, standalone_mode=False)
    except SystemExit as e:  # typer.Exit from an error path
        if e.code:
            raise
    print(f"\nrun directory: {out}\n  clicooper evaluate {out}\n  clicooper export {out} --out model.safetensors")


if __name__ == "__main__":
    main()
