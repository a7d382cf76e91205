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

``--quick`` (``make quick``): a first result in about a minute, on scikit-learn's 8×8 digits (1,437 training
rows, no download): ``digits-mlp`` with ``--defense clicooper`` (label obfuscation, keyed activation noise at
noise/signal ≈ 1, so an ε), 2 trainers, 5 epochs at batch 64 and learning rate 0.005, provenance off (no
ledger: the figures do not need it), every received row recorded; then the report with one attack,
``clustering`` (k-means on what each trainer received, 2 restarts: it has no step budget, so its figure is
what that attack reaches, not a stand-in), against the undefended ``digits-mlp``. It ends by printing the
report's summary: defended and undefended accuracy, what the clustering attack reached against its floor,
the trainers' gain and the ε.
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
        code = app(cmd, standalone_mode=False)  # an error's typer.Exit comes back as its exit code
    except SystemExit as e:
        code = e.code
    if code:
        raise SystemExit(code)


#: ``--quick``: the training options and the report's attacks (module docstring).
QUICK_TRAIN = ["--dataset", "digits", "--model", "digits-mlp", "--defense", "clicooper", "--trainers", "2",
               "--epochs", "5", "--batch-size", "64", "--lr", "0.005", "--record-observations"]
QUICK_CONFIG = {"provenance": False, "observe_count": 5000}  # no ledger; every digits row recorded
QUICK_ATTACKS = "clustering"


def _summary_of(report_md: Path) -> str:
    """The ``## Summary`` section of a report."""
    text = report_md.read_text()
    start = text.find("## Summary")
    end = text.find("\n## ", start + 1)
    return text[start:end].strip() if start >= 0 else ""


def quick(out: Path) -> Path:
    """``--quick``: train, report one step-free attack, print the report's summary; returns the report dir."""
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "run.json"
        cfg.write_text(json.dumps(QUICK_CONFIG))
        _cli(["train", *QUICK_TRAIN, "--config", str(cfg), "--out", str(out)])
    report = out.with_name(out.name + "-report")
    _cli(["report", str(out), "--out", str(report), "--budget", "demo", "--attack", QUICK_ATTACKS,
          "--baseline-scale", "1"])
    print(f"\n{_summary_of(report / 'report.md')}\n\nreport: {report / 'report.md'}  (quick demo total "
          f"{time.time() - t0:.0f} s; `make demo` runs every attack on Fashion-MNIST)", file=sys.stderr)
    return report


def main(argv: list[str] | None = None) -> None:
    """Run the demo through the real CLI."""
    ap = argparse.ArgumentParser(prog="python -m experiments.demo",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--preset", default="private-accurate", help="privacy preset (clicooper train --help)")
    ap.add_argument("--defense", default=None, help="train fmnist-cnn with this defense instead of the preset")
    ap.add_argument("--observe-count", type=int, default=2000, help="recorded rows (the attacks' subset)")
    ap.add_argument("--budget", default="demo", help="attack budget of the report: demo | full | sweep")
    ap.add_argument("--no-report", action="store_true", help="train only")
    ap.add_argument("--quick", action="store_true", help="a first result in about a minute: digits, one attack "
                    "(see above); --out defaults to runs/quick")
    args = ap.parse_args(argv)
    t0 = time.time()
    out = Path("runs/quick" if args.quick and args.out == ap.get_default("out") else args.out)
    if out.exists():
        out = out.with_name(f"{out.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.quick:
        quick(out)
        return
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
