"""``make demo``: the main job on the default dataset, as a new user would run it, then the attack report.

1. Trains the DO's model with the ``clicooper`` defense — by default the ``private-accurate`` preset
   (``fmnist-private-d64w``: a 32-channel strided-conv head into a 64-d L2-normalised cut, keyed Gaussian
   noise σ = 0.125, i.e. noise norm = signal norm, plus secret label obfuscation; the trainers rescale the cut
   by √64; the DO holds 13 % of the training FLOPs) — with 2 trainers (U-shape) on
   Fashion-MNIST samples 0:50000 (the rest stays free as attackers' auxiliary data), recording what the
   trainers receive for a fixed subset of 2,000 rows, into a fresh directory under ``runs/`` (an existing
   run is never overwritten). ``--defense D`` trains the reference ``fmnist-cnn`` with defense D instead.
2. ``clicooper report``: trains the undefended reference (``fmnist-cnn``, defense ``none``, same data, seed
   and epochs) into ``<run>-report/baseline``, trains each one's DO alone (head + linear tail) for the
   trainers' gain, runs every attack on both runs with the ``demo`` budget (``--budget``) and writes
   ``<run>-report/report.md`` (+ ``report.json`` and PNG plots).

Both steps go through the real CLI. ``--no-report`` stops after training.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from clicooper.cli import app


def _cli(cmd: list[str]) -> None:
    print("clicooper " + " ".join(cmd), file=sys.stderr)
    try:
        app(cmd, standalone_mode=False)
    except SystemExit as e:  # typer.Exit from an error path
        if e.code:
            raise


def main(argv: list[str] | None = None) -> None:
    """Run the demo through the real CLI."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--preset", default="private-accurate", help="privacy preset (clicooper train --help)")
    ap.add_argument("--defense", default=None, help="train fmnist-cnn with this defense instead of the preset")
    ap.add_argument("--observe-count", type=int, default=2000, help="recorded rows (the attacks' subset)")
    ap.add_argument("--budget", default="demo", help="attack budget of the report: demo | full | sweep")
    ap.add_argument("--no-report", action="store_true", help="train only")
    args = ap.parse_args(argv)
    t0 = time.time()
    out = Path(args.out)
    if out.exists():
        out = out.with_name(f"{out.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "run.json"  # fields without a CLI option of their own
        cfg.write_text(json.dumps({"observe_count": args.observe_count}))
        what = (["--model", "fmnist-cnn", "--defense", args.defense] if args.defense
                else ["--preset", args.preset])
        _cli([
            "train", "--dataset", "fashion-mnist", *what, "--trainers", "2",
            "--topology", "u-shape", "--epochs", str(args.epochs), "--train-range", "0:50000",
            "--record-observations", "--config", str(cfg), "--out", str(out),
        ])
    trained = time.time() - t0
    print(f"\nrun directory: {out}  (trained in {trained:.0f} s)\n  clicooper evaluate {out}\n"
          f"  clicooper export {out} --out model.safetensors", file=sys.stderr)
    if args.no_report:
        return
    report = out.with_name(out.name + "-report")
    _cli(["report", str(out), "--out", str(report), "--budget", args.budget, "--baseline-model", "fmnist-cnn"])
    print(f"\nreport: {report / 'report.md'}  (demo total {time.time() - t0:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
