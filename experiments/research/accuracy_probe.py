"""Accuracy-only probe of one configuration at a given budget (no observations, no attacks, no provenance).

Used for the full-budget table of docs/research/privacy-frontier.md, where attacks on every point would not fit:

    python -m experiments.research.accuracy_probe --model fmnist-private-d64w --sigma 0.125 --out runs/probe/d64w

``--sigma -1`` trains undefended (``--defense none``). Prints one JSON line (also written to
``OUT/probe.json``): model, σ, seed, final test accuracy and the accuracy after every epoch; with
``--do-alone`` also the DO-alone accuracy (same head + a linear tail, trained without trainers; for a thick
DO tail the better of that and head + adapter + its own tail: ``clicooper.training.do_alone``) and the
trainers' gain.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import clicooper.models.private  # noqa: F401  (registers the fmnist-private-* models)
from clicooper import train
from clicooper.data import load_dataset
from clicooper.training.do_alone import do_alone_accuracy


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.research.accuracy_probe",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--sigma", type=float, required=True, help="σ per unit clip norm; -1: no defense")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--train", type=int, default=50000, help="training rows 0:N")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--head-dpsgd", type=float, default=None, help="DP-SGD noise multiplier on the DO's head (clip 1)")
    ap.add_argument("--out", required=True, help="new run directory")
    ap.add_argument("--do-alone", action="store_true",
                    help="also train the DO alone (same head + a linear tail, or for a thick DO tail the better of that and "
                    "head + adapter + its own tail; no trainers, no noise; same rows, "
                    "epochs and seed) and report its accuracy and the trainers' gain")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg: dict = {"dataset": "fashion-mnist", "model": a.model, "trainers": 2, "epochs": a.epochs, "seed": a.seed,
                 "train_range": (0, a.train), "provenance": False,
                 "defense": "clicooper" if a.sigma >= 0 else "none"}
    if a.sigma >= 0:
        cfg["dp"] = {"sigma": a.sigma, "clip_norm": 1.0}
        if a.head_dpsgd is not None:
            cfg["dp"]["head_dpsgd"] = {"noise_multiplier": a.head_dpsgd, "max_grad_norm": 1.0}
    train(cfg, out=a.out)
    m = json.loads((Path(a.out) / "metrics.json").read_text())
    privacy = Path(a.out) / "privacy.json"
    eps = ({r["covers"]: r["epsilon"] for r in json.loads(privacy.read_text())["reports"]}
           if privacy.is_file() else {})
    row = {"model": a.model, "sigma": a.sigma, "seed": a.seed, "acc": m["final_test_acc"],
           "by_epoch": [e["test_acc"] for e in m["epochs"]], "epsilon": eps}
    if a.do_alone:
        alone = do_alone_accuracy(a.model, load_dataset("fashion-mnist"), train_range=(0, a.train),
                                  epochs=a.epochs, seed=a.seed)
        row |= {"do_alone_acc": alone, "trainer_gain": m["final_test_acc"] - alone}
    (Path(a.out) / "probe.json").write_text(json.dumps(row, indent=2))
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
