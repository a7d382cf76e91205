"""``make reproduce``: the headline attack figures of docs/design/metrics.md over several seeds, with confidence intervals.

For each seed: ``fmnist-cnn``, K = 2, 3 epochs, ``--train-range 0:50000``, observations recorded — once
undefended (``defense none``) and once with ``--defense clicooper`` (U-shape), plus the same two in the open
tail for the label-inference anchor (labels travel to the last trainer there). Every attack runs with the
chosen budget (``full`` = library defaults); the figures go to ``OUT/headline.json`` and ``OUT/headline.md``
as mean and 95 % Student-t interval over seeds (``attacks.metrics.confidence_interval``), each beside its
floor and the undefended value, with the anchors the design expects. Runs are kept under ``--runs-dir``
(default ``runs/reproduce``, not in ``results/``: they are large) and reused when already finished (their stored attack results too, if made with the same budget).

Not run in CI (hours on 2 CPU cores at the full budget). A reduced check: ``python -m experiments.reproduce
--out /tmp/r --seeds 0 --budget demo --epochs 1``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from clicooper import sweep
from clicooper.attacks import informative
from clicooper.attacks.budgets import DESCRIPTIONS, run_suite
from clicooper.attacks.metrics import confidence_interval
from clicooper.training import train

#: name → (description, expectation on the undefended run, how to read it from the results).
ANCHORS: dict[str, tuple[str, str]] = {
    "inversion_white_box_ssim": ("white-box inversion (T1, leaked head), SSIM", "≥ 0.8"),
    "inversion_known_plaintext_1000_ssim": ("known-plaintext inversion, 1,000 pairs, SSIM (vs class floor)",
                                            "> class floor"),
    "clustering_oracle_kmeans_T2_output": ("oracle k-means on T2's own output, Hungarian accuracy", "≥ 0.75"),
    "clustering_known10_T2_output": ("known-sample k = 10 on T2's own output, accuracy", "≥ 0.8"),
    "open_tail_zero_knowledge_label_accuracy": ("open tail: T2 zero-knowledge label accuracy (received labels)",
                                                "1.0 undefended (labels not obfuscated)"),
    "query_extraction_relative": ("query extraction surrogate accuracy ÷ victim accuracy (best of soft/hard)",
                                  "≥ 0.9"),
}


def _level(res: dict[str, Any] | None, party: str, level: str) -> dict[str, Any] | None:
    return ((res or {}).get("headline", {}).get(party) or {}).get(level)


def anchors(results: dict[str, dict[str, Any]], open_tail: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The anchor figures (value and floor) of one run's attack results."""
    out: dict[str, dict[str, Any]] = {}
    inv = results.get("inversion")
    if (lv := _level(inv, "T1", "white-box")) is not None:
        out["inversion_white_box_ssim"] = {"value": lv["score"], "floor": lv["floor"],
                                           "class_floor": lv["metrics"].get("class_floor")}
    if (lv := _level(inv, "T1", "known-plaintext-1000")) is not None:
        out["inversion_known_plaintext_1000_ssim"] = {"value": lv["score"], "floor": lv["metrics"].get("class_floor"),
                                                      "global_floor": lv["floor"]}
    cl = results.get("clustering")
    if (lv := _level(cl, "T2", "zero-knowledge")) is not None:
        src = lv["metrics"]["by_source"].get("output", {}).get("kmeans")
        if src:
            out["clustering_oracle_kmeans_T2_output"] = {"value": src["oracle_accuracy"], "floor": src["chance"]}
    if (lv := _level(cl, "T2", "known-10")) is not None:
        src = lv["metrics"]["by_source"].get("output")
        if src:
            out["clustering_known10_T2_output"] = {"value": src["best"], "floor": lv["floor"]}
    if open_tail is not None and (lv := _level(open_tail, "T2", "zero-knowledge")) is not None:
        lab = lv["metrics"]["by_source"].get("labels", {})
        if lab:
            best = max(lab.values(), key=lambda r: r["oracle_accuracy"])
            out["open_tail_zero_knowledge_label_accuracy"] = {"value": best["oracle_accuracy"], "floor": best["chance"]}
    ex = results.get("extraction")
    q = [lv for k in ("query-soft", "query-hard") if (lv := _level(ex, "pool", k)) is not None]
    if q:
        best = max(q, key=lambda lv: lv["metrics"]["relative"])
        out["query_extraction_relative"] = {"value": best["metrics"]["relative"], "floor": None,
                                            "accuracy": best["score"],
                                            "victim_accuracy": best["metrics"]["victim_accuracy"]}
    return out


def _train(out: Path, *, defense: str, seed: int, epochs: int, topology: str, observe_count: int,
           sigma: float = 0.0) -> Path:
    if (out / "metrics.json").is_file():
        return out
    if out.exists():
        raise SystemExit(f"error: {out} exists but is not a finished run; remove it and run again")
    train({"dataset": "fashion-mnist", "model": "fmnist-cnn", "trainers": 2, "topology": topology,
           "epochs": epochs, "train_range": (0, 50000), "record_observations": True, "observe_count": observe_count,
           "defense": defense, "seed": seed}
          | ({"dp": {"sigma": sigma}} if defense in ("dp", "clicooper") else {}), out=out)
    return out


def _attacks(run: Path, names: list[str], budget: str, log: Any) -> dict[str, dict[str, Any]]:
    res = {}
    todo = []
    for n in names:
        f = run / "attacks" / f"{n}.json"
        if f.is_file() and json.loads(f.read_text()).get("settings", {}).get("budget") == budget:
            res[n] = json.loads(f.read_text())
        else:
            todo.append(n)
    if todo:
        res.update(run_suite(run, todo, budget=budget, progress=log)["attacks"])
    return res


def _acc(run: Path) -> float | None:
    m = json.loads((run / "metrics.json").read_text())
    return m.get("final_test_acc")


def _seed_item(runs_dir: Path, d: str, seed: int, *, budget: str, epochs: int, open_tail: bool,
               observe_count: int, attacks: list[str], log: Any, sigma: float) -> dict[str, Any]:
    """Train (or reuse) and attack one defense at one seed: its accuracy, anchors and every level."""
    ts = time.time()
    run = _train(runs_dir / f"{d}-s{seed}", defense=d, seed=seed, epochs=epochs, topology="u-shape",
                 observe_count=observe_count, sigma=sigma)
    log(f"seed {seed} defense {d}: trained ({time.time() - ts:.0f} s); attacking …")
    ta = time.time()
    res = _attacks(run, attacks, budget, log)
    ot = None
    if open_tail:
        otr = _train(runs_dir / f"open-tail-{d}-s{seed}", defense=d, seed=seed, epochs=epochs,
                     topology="open-tail", observe_count=observe_count, sigma=sigma)
        ot = _attacks(otr, ["clustering"], budget, log)["clustering"]
    levels = {f"{n}/{p}/{lv}": {"score": r["score"], "floor": r["floor"], "beats_floor": r["beats_floor"],
                                "primary": r["primary"]}
              for n, rr in res.items() for p, lvs in rr["headline"].items() for lv, r in lvs.items()}
    return {"seed": seed, "run": str(run), "test_acc": _acc(run), "anchors": anchors(res, ot),
            "levels": levels, "attack_seconds": round(time.time() - ta, 1)}


def _log(m: str) -> None:
    print(m, file=sys.stderr, flush=True)


def seed_task(task: dict[str, Any]) -> dict[str, Any]:
    """One defence at one seed, a task of :func:`clicooper.sweep.run_tasks`: :func:`_seed_item` with the task's
    arguments."""
    return _seed_item(**task)


def _summarise_defense(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and interval over the seeds of one defense: accuracy, anchors (value, floor), every level."""
    keys = sorted({k for it in items for k in it["levels"]})
    return {
        "test_acc": confidence_interval([it["test_acc"] for it in items]),
        "anchors": {a: {"value": confidence_interval(v), "floor": confidence_interval(f) if f else None}
                    for a in ANCHORS
                    if (v := [it["anchors"][a]["value"] for it in items if a in it["anchors"]])
                    for f in [[it["anchors"][a]["floor"] for it in items
                               if a in it["anchors"] and it["anchors"][a]["floor"] is not None]]},
        "levels": {k: {"score": confidence_interval([it["levels"][k]["score"] for it in items if k in it["levels"]]),
                       "floor": confidence_interval([it["levels"][k]["floor"] for it in items if k in it["levels"]]),
                       "primary": next(it["levels"][k]["primary"] for it in items if k in it["levels"])}
                   for k in keys},
    }


def summarise(per_seed: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per defense, :func:`_summarise_defense`; each level marked informative when the undefended run's
    mean beats its floor (docs/design/metrics.md#informative-figures)."""
    summary = {d: _summarise_defense(items) for d, items in per_seed.items()}
    if "none" in summary:
        for d in summary:
            for k, v in summary[d]["levels"].items():
                u = summary["none"]["levels"].get(k)
                v["informative"] = bool(u) and informative({"primary": v["primary"], "score": u["score"]["mean"],
                                                             "floor": u["floor"]["mean"]})
    return summary


def reproduce(out: Path, *, runs_dir: Path | None = None, seeds: list[int], budget: str, epochs: int, defenses: list[str], open_tail: bool,
              observe_count: int, attacks: list[str], log: Any = None, sigma: float = 0.0,
              backend: str = "sequential", address: str | None = None,
              threads_per_task: int | None = None) -> dict[str, Any]:
    """Train, attack and summarise (see module docstring). Returns the ``headline.json`` dict.

    ``sigma``: the activation noise of the ``dp``/``clicooper`` runs, given explicitly (the committed
    figures use 0: label obfuscation + clipping on ``fmnist-cnn``; the bottleneck presets are measured by
    ``experiments.research.frontier``). Each defence at each seed is one task of
    :func:`clicooper.sweep.run_tasks` (``backend``, ``address``; ``threads_per_task``: torch's current
    thread count by default); with Ray, ``log`` runs in the task's process."""
    log = log or _log
    t0 = time.time()
    runs_dir = runs_dir or Path("runs") / "reproduce"
    tasks = [{"runs_dir": runs_dir, "d": d, "seed": seed, "budget": budget, "epochs": epochs, "open_tail": open_tail,
              "observe_count": observe_count, "attacks": attacks, "log": log, "sigma": sigma}
             for seed in seeds for d in defenses]
    items = sweep.run_tasks(seed_task, tasks, backend=backend, address=address,
                            threads_per_task=threads_per_task or torch.get_num_threads())
    per_seed: dict[str, list[dict[str, Any]]] = {d: [] for d in defenses}
    for t, item in zip(tasks, items, strict=True):
        per_seed[t["d"]].append(item)
    rep = {
        "command": "python -m experiments.reproduce " + " ".join(sys.argv[1:]),
        "setup": {"runs_dir": str(runs_dir), "dataset": "fashion-mnist", "model": "fmnist-cnn", "trainers": 2, "epochs": epochs,
                  "train_range": [0, 50000], "observe_count": observe_count, "seeds": seeds, "defenses": defenses,
                  "open_tail": open_tail, "budget": budget, "budget_description": DESCRIPTIONS.get(budget, budget),
                  "ci": "95 % Student-t over seeds (n = 1: zero width)"},
        "anchors": {a: {"description": desc, "expected": exp} for a, (desc, exp) in ANCHORS.items()},
        "summary": summarise(per_seed), "per_seed": per_seed, "seconds": round(time.time() - t0, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "headline.json").write_text(json.dumps(rep, indent=2, default=str))
    (out / "headline.md").write_text(render(rep))
    return rep


def _ci(c: dict[str, Any] | None) -> str:
    if not c:
        return "–"
    if c["n"] == 1:
        return f"{c['mean']:.4f} (n = 1)"
    return f"{c['mean']:.4f} [{c['low']:.4f}, {c['high']:.4f}] (n = {c['n']})"


def render(rep: dict[str, Any]) -> str:
    """``headline.md``."""
    s, summ = rep["setup"], rep["summary"]
    defs = list(summ)
    L = ["# Headline attack figures (docs/design/metrics.md)\n",
         f"`{rep['command']}` — fmnist-cnn, K = {s['trainers']}, {s['epochs']} epochs, train range 0:50000, "
         f"{s['observe_count']} recorded rows, seeds {s['seeds']}, budget **{s['budget']}** "
         f"({s['budget_description']}). Intervals: {s['ci']}. Total {rep['seconds']} s.\n",
         "| | " + " | ".join(f"defense {d}" for d in defs) + " |", "|---|" + "---|" * len(defs),
         "| test accuracy | " + " | ".join(_ci(summ[d]["test_acc"]) for d in defs) + " |\n",
         "## Anchors\n", "| anchor | expected (undefended) | " + " | ".join(f"defense {d}" for d in defs)
         + " | floor (undefended) |", "|---|---|" + "---|" * (len(defs) + 1)]
    for a, meta in rep["anchors"].items():
        vals = [_ci((summ[d]["anchors"].get(a) or {}).get("value")) for d in defs]
        fl = (summ.get("none", summ[defs[0]])["anchors"].get(a) or {}).get("floor")
        L.append(f"| {meta['description']} | {meta['expected']} | " + " | ".join(vals) + f" | {_ci(fl)} |")
    L += ["\n## Every level (last epoch)\n",
          "| attack/party/level | metric | " + " | ".join(f"defense {d}" for d in defs) + " | floor (undefended) | status |",
          "|---|---|" + "---|" * (len(defs) + 2)]
    keys = sorted({k for d in defs for k in summ[d]["levels"]})
    for k in keys:
        any_d = next(summ[d]["levels"][k] for d in defs if k in summ[d]["levels"])
        vals = [_ci(summ[d]["levels"].get(k, {}).get("score")) for d in defs]
        u = summ.get("none", {}).get("levels", {}).get(k)
        status = "informative" if any_d.get("informative") else "**not informative** (undefended does not beat floor)"
        L.append(f"| {k} | {any_d['primary']} | " + " | ".join(vals) + f" | {_ci(u['floor']) if u else '–'} | {status} |")
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Command line (see module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m experiments.reproduce",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results")
    ap.add_argument("--runs-dir", default="runs/reproduce", help="where the trained runs go (reused if finished)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budget", default="full", choices=sorted(DESCRIPTIONS))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--defenses", default="none,clicooper")
    ap.add_argument("--observe-count", type=int, default=5000)
    ap.add_argument("--attacks", default="gradient-leak,clustering,extraction,inversion")
    sweep.add_options(ap, threads_default=torch.get_num_threads(), threads_flags=("--threads", "--threads-per-task"))
    ap.add_argument("--no-open-tail", action="store_true", help="skip the open-tail label-inference runs")
    ap.add_argument("--sigma", type=float, default=0.0,
                    help="activation noise σ of the defended runs (default 0, as in the committed figures)")
    a = ap.parse_args(argv)
    backend = sweep.options(ap, a)
    rep = reproduce(Path(a.out), runs_dir=Path(a.runs_dir), seeds=[int(s) for s in a.seeds.split(",")], budget=a.budget, epochs=a.epochs,
                    defenses=a.defenses.split(","), open_tail=not a.no_open_tail, observe_count=a.observe_count,
                    attacks=a.attacks.split(","), log=None, sigma=a.sigma, **backend)
    print(json.dumps({"headline": str(Path(a.out) / "headline.md"), "seconds": rep["seconds"]}))


if __name__ == "__main__":
    main()
