"""Label DP in the open tail (issue 5, mechanism 4): what randomized response costs and what it leaves.

In the open tail the last trainer computes the loss, so it receives a label for every sample. With
``labels.label_dp_epsilon = ε`` each label is replaced once (RR, Ghazi et al. 2021; one draw per sample,
reused every epoch) before it leaves the DO, and encoded by the secret label codec (``--defense
clicooper``). This sweep trains the same configuration at several ε (and without RR), then runs the
clustering / known-sample label attacks on every trainer:

    python -m experiments.research.label_dp --runs runs/label-dp --results results --eps none,8,4,2,1

Each row: test accuracy; the label-DP ε; per trainer the zero-knowledge oracle accuracy (Hungarian-named
clusters, an upper bound) and the known-sample accuracy for k = 1 and 10 labelled samples per class — the
best over every source the trainer received, and on the received **labels** alone (the channel RR
protects). The undefended open-tail reference (``fmnist-cnn``, ``--defense none``) is measured with the
same budget and attacks. Rows are cached in ``RUNS/<tag>/label_dp_row.json``; re-running resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import clicooper.models.private  # noqa: F401  (registers the fmnist-private-* models)
from clicooper.attacks.runner import run_attack
from clicooper.training import train

REFERENCE = "fmnist-cnn"


@dataclass(frozen=True)
class Budget:
    train: int = 15000
    epochs: int = 6
    seed: int = 0
    observe: int = 2000
    sigma: float = 0.125


def tag_of(model: str, defense: str, eps: float | None) -> str:
    return f"{model}_{defense}_rr{'none' if eps is None else f'{eps:g}'}"


def run_config(model: str, defense: str, eps: float | None, b: Budget) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "dataset": "fashion-mnist", "model": model, "trainers": 2, "topology": "open-tail", "epochs": b.epochs,
        "seed": b.seed, "train_range": (0, b.train), "batch_size": 128, "record_observations": True,
        "observe": "subset", "observe_count": b.observe, "device": "cpu", "defense": defense, "provenance": False,
    }
    if defense in ("dp", "clicooper"):
        cfg["dp"] = {"sigma": b.sigma, "clip_norm": 1.0}
    if eps is not None:
        cfg["labels"] = {"label_dp_epsilon": eps}
    return cfg


def rr_keep_probability(eps: float, num_classes: int) -> float:
    """Probability that plain RR (no prior) answers the true label: e^ε / (e^ε + C − 1)."""
    return math.exp(eps) / (math.exp(eps) + num_classes - 1)


def _levels(att: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for party, levels in att["headline"].items():
        p: dict[str, Any] = {}
        for name, lv in levels.items():
            by = lv["metrics"].get("by_source", {})
            if name == "zero-knowledge":
                lab = by.get("labels")
                p[name] = {"best": lv["score"], "floor": lv["floor"],
                           "labels": max(v["oracle_accuracy"] for v in lab.values()) if lab else None}
            else:
                lab = by.get("labels")
                p[name] = {"best": lv["score"], "floor": lv["floor"], "labels": lab["best"] if lab else None,
                           "best_source": max(by, key=lambda s: by[s]["best"]) if by else None}
        out[party] = p
    return out


def measure(model: str, defense: str, eps: float | None, b: Budget, runs: Path) -> dict[str, Any]:
    tag = tag_of(model, defense, eps)
    run_dir = runs / tag
    cache = run_dir / "label_dp_row.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    if run_dir.exists():
        shutil.rmtree(run_dir)
    t0 = time.time()
    train(run_config(model, defense, eps, b), out=run_dir)
    t_train = time.time() - t0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    plan = json.loads((run_dir / "plan.json").read_text())
    t1 = time.time()
    att = run_attack(run_dir, "clustering", knowledge=["zero", "known"], party="each", known_k=10, seed=b.seed)
    privacy = run_dir / "privacy.json"
    reports = json.loads(privacy.read_text())["reports"] if privacy.is_file() else []
    row = {
        "tag": tag, "model": model, "defense": defense, "label_dp_epsilon": eps,
        "rr_keep_probability": None if eps is None else rr_keep_probability(eps, 10),
        "test_acc": metrics["final_test_acc"], "acc_by_epoch": [e["test_acc"] for e in metrics["epochs"]],
        "do_flop_share": plan["do_flop_share"],
        "epsilon": {r["covers"]: r["epsilon"] for r in reports},
        "attacks": _levels(att),
        "seconds": {"train": round(t_train, 1), "attack": round(time.time() - t1, 1)},
        "budget": asdict(b),
    }
    cache.write_text(json.dumps(row, indent=2))
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return row


def _f(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}"


def write_markdown(rows: list[dict[str, Any]], path: Path, command: str) -> None:
    b = rows[0]["budget"]
    lines = [
        "# Label DP in the open tail: cost and what it leaves", "",
        f"`{command}` — Fashion-MNIST, K = 2, open tail, rows 0–{b['train']:,}, {b['epochs']} epochs, seed "
        f"{b['seed']}, {b['observe']:,} recorded rows attacked (last epoch). Defended runs: `--defense "
        f"clicooper` (σ = {b['sigma']}, secret label codec m = 2) plus RR label DP at the listed ε. "
        "Known-k: k labelled samples per class, scored on the other recorded rows (chance = majority rate "
        "≈ 0.117). `labels` = the attack on the received labels only; `best` = best over every source the "
        "trainer received (activations, gradients, its own output, labels). Zero-knowledge figures are "
        "Hungarian-matched oracles (upper bounds).", "",
        "| model | defense | label-DP ε | P(RR keeps label) | acc | T2 zero (labels / best) | T2 known-1 (labels / best) "
        "| T2 known-10 (labels / best) | T1 known-10 (best) | ε activations |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t2, t1 = r["attacks"].get("T2", {}), r["attacks"].get("T1", {})

        def pair(lv: str, t: dict[str, Any] = t2) -> str:
            x = t.get(lv)
            return "–" if x is None else f"{_f(x.get('labels'))} / {_f(x['best'])}"

        act = next((v for k, v in r["epsilon"].items() if k != "label-DP (RR)"), None)
        lines.append(
            f"| {r['model']} | {r['defense']} | {'–' if r['label_dp_epsilon'] is None else r['label_dp_epsilon']} | "
            f"{_f(r['rr_keep_probability'])} | {r['test_acc']:.4f} | {pair('zero-knowledge')} | {pair('known-1')} | "
            f"{pair('known-10')} | {_f(t1.get('known-10', {}).get('best'))} | "
            f"{'∞' if act is None else f'{act:.0f}'} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.research.label_dp",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs/label-dp")
    ap.add_argument("--results", default="results")
    ap.add_argument("--model", default="fmnist-private-d64w")
    ap.add_argument("--sigma", type=float, default=0.125)
    ap.add_argument("--eps", default="none,8,4,2,1", help="comma-separated label-DP ε values; 'none' = no RR")
    ap.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure the undefended open-tail fmnist-cnn")
    ap.add_argument("--train", type=int, default=15000)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    b = Budget(train=a.train, epochs=a.epochs, seed=a.seed, sigma=a.sigma)
    points: list[tuple[str, str, float | None]] = [(REFERENCE, "none", None)] if a.reference else []
    points += [(a.model, "clicooper", None if e == "none" else float(e)) for e in filter(None, a.eps.split(","))]
    runs, res = Path(a.runs), Path(a.results)
    runs.mkdir(parents=True, exist_ok=True)
    res.mkdir(parents=True, exist_ok=True)
    if not a.report_only:
        for m, d, e in points:
            t = time.time()
            row = measure(m, d, e, b, runs)
            print(f"[label-dp] {row['tag']}: acc {row['test_acc']:.4f} "
                  f"T2 known-10 {row['attacks'].get('T2', {}).get('known-10', {}).get('best')} "
                  f"({time.time() - t:.0f} s)", flush=True)
    rows = [json.loads(p.read_text()) for p in sorted(runs.glob("*/label_dp_row.json"))]
    rows.sort(key=lambda r: (r["model"] != REFERENCE, -(r["label_dp_epsilon"] or math.inf)))
    if not rows:
        return 0
    command = "python -m experiments.research.label_dp " + " ".join(argv if argv is not None else sys.argv[1:])
    (res / "label_dp.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2))
    write_markdown(rows, res / "label_dp.md", command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
