"""The depth axis on ``fmnist-resnet20``: how deep the DO's head and tail are, against the same attacks.

    python -m experiments.research.depth_axis --runs runs30 --results results/depth-axis/s0 --seeds 0

Points are depth variants × mechanisms. The variants (:func:`clicooper.models.zoo.resnet20_depth_name`) move
0, 1 or 2 residual blocks of the first stage into the DO's head (the cut stays 16×28×28) and make the DO's
tail the Linear, a small MLP or the last residual block; by default only the variants whose DO FLOP share
is within the goal's 15 % are swept (``--variants`` names others). The mechanisms (:data:`MECHANISMS`) are
those of the residual frontier (docs/research/frontier-resnet.md): none; noise at ρ = 1 (σ·√d = 1 with
``clip_norm`` 1, d the cut's size, so σ = 1/√d); and NoPeek α = 1 at ρ = 1.

Each point at each seed is one task of :func:`clicooper.sweep.run_tasks` (``--backend sequential|ray``):
:func:`experiments.research.converged_point.one_seed` trains the run with the recipe of
docs/research/models.md (``--train`` rows, ``--epochs``, cosine schedule, flip; one thread), trains its
undefended ``fmnist-resnet20`` of the same seed and config once (shared by every point), and reports it with
``clicooper report`` at ``--budget`` (accuracy, DO-alone, the trainers' gain, the DO's share, ε and what it
covers, every inversion level with its class and global floors, known-sample inference and model
completion), plus known-plaintext with 100 pairs and known-sample inference with k = 100. Per task it writes
``RESULTS/rows/<point>_s<seed>.json`` (the point, and ``one_seed``'s row: the same format as
``converged_point``); per point ``RESULTS/<point>/summary.{json,md}`` (``converged_point``'s summary, which
``converged_frontier`` reads into one table and plot). Runs and reports are cached under ``--runs``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from clicooper import rundir, sweep
from clicooper.attacks.budgets import BUDGETS
from clicooper.models import zoo
from clicooper.models.partition import make_plan
from experiments.research.converged_point import GOAL, markdown, one_seed, summarise
from experiments.research.frontier import Setting

#: name → (defense, ρ = σ·√d at clip norm 1, NoPeek's α, label obfuscation's m or None for the default), as the
#: residual frontier defined its points; ``labels``/``labels8`` are the SecDT-style secret label mapping alone
#: (a keyed map of each class to m secret sub-classes, m = 2 or 8), with no activation noise
MECHANISMS: dict[str, tuple[str, float, float, int | None]] = {
    "none": ("none", 0.0, 0.0, None),
    "noise": ("clicooper", 1.0, 0.0, None),
    "nopeek": ("clicooper", 1.0, 1.0, None),
    "labels": ("labels", 0.0, 0.0, None),
    "labels8": ("labels", 0.0, 0.0, 8),
}
#: the reference the accuracy is compared with (its undefended run, same rows, epochs, recipe and seed)
REFERENCE = "fmnist-resnet20"
#: the training recipe of docs/research/models.md at which fmnist-resnet20 reached 0.9315 (besides rows/epochs)
RECIPE = {"lr_schedule": "cosine", "data": {"flip": True}}
INPUT_SHAPE = (1, 28, 28)


def variants() -> list[str]:
    """Every depth variant's name, the reference first."""
    return [zoo.resnet20_depth_name(h, t) for h in zoo.RESNET20_HEADS for t in zoo.RESNET20_TAILS]


def shape_and_share(model: str, trainers: int = 2) -> tuple[list[int], float]:
    """The cut's per-sample shape and the DO's FLOP share of ``model`` at ``trainers`` trainers (the plan's)."""
    plan = make_plan(zoo.build(model, INPUT_SHAPE, 10, seed=0), model_name=model, input_shape=INPUT_SHAPE,
                     trainers=trainers)
    return list(plan.head.output_shape), plan.do_flop_share


def point(model: str, mechanism: str) -> dict[str, Any]:
    """One point: the variant, the mechanism and the :class:`Setting` that trains it (σ from ρ and the cut)."""
    if mechanism not in MECHANISMS:
        raise SystemExit(f"unknown mechanism {mechanism!r}; choose from {', '.join(MECHANISMS)}")
    defense, rho, alpha, expansion = MECHANISMS[mechanism]
    cut, share = shape_and_share(model)
    sigma = rho / math.sqrt(math.prod(cut)) if rho else 0.0
    return {"name": f"{model}-{mechanism}", "model": model, "mechanism": mechanism, "rho": rho, "nopeek": alpha,
            "sigma": sigma, "cut_shape": cut, "do_flop_share": share, "share_fits": share <= GOAL["do_share"],
            "expansion": expansion, "setting": Setting(model, sigma, defense, nopeek=alpha, expansion=expansion)}


def grid(variants_arg: str = "", mechanisms_arg: str = ",".join(MECHANISMS), points_arg: str = ""
         ) -> list[tuple[str, str]]:
    """The (variant, mechanism) pairs to sweep: ``points_arg`` (``VARIANT:MECHANISM,…``) when given, else the
    ``variants_arg`` (default: every variant whose DO share is ≤ 15 %) × ``mechanisms_arg``. Raises
    ``ValueError`` naming what is unknown."""
    names = variants()
    if points_arg:
        pairs = [tuple(x.split(":", 1)) if ":" in x else (x, "") for x in points_arg.split(",") if x]
    else:
        chosen = [v for v in variants_arg.split(",") if v] or [v for v in names if shape_and_share(v)[1] <= GOAL["do_share"]]
        pairs = [(v, m) for v in chosen for m in mechanisms_arg.split(",") if m]
    bad = sorted({v for v, _ in pairs if v not in names} | {m or "(none given)" for _, m in pairs if m not in MECHANISMS})
    if bad or not pairs:
        raise ValueError(f"unknown variant(s) or mechanism(s) {', '.join(bad) or '(no point)'}; variants: "
                         f"{', '.join(names)}; mechanisms: {', '.join(MECHANISMS)} (--points VARIANT:MECHANISM,…)")
    return [(v, m) for v, m in pairs]


def task(t: dict[str, Any]) -> dict[str, Any]:
    """One point at one seed (a task of :func:`clicooper.sweep.run_tasks`): train, report, write its row."""
    p, seed, out = t["point"], t["seed"], Path(t["results"])
    row = one_seed(p["setting"], seed, Path(t["runs"]), budget=t["budget"], baseline_model=REFERENCE,
                   attacks=t["attacks"], known_counts=t["known_counts"], known_ks=t["known_ks"],
                   train_rows=t["train"], epochs=t["epochs"], config_extra=RECIPE)
    info = {k: v for k, v in p.items() if k != "setting"}
    doc = {"point": info, "seed": seed, "budget": t["budget"], "train_rows": t["train"], "epochs": t["epochs"],
           "recipe": RECIPE, "row": row}
    (out / "rows").mkdir(parents=True, exist_ok=True)
    rundir.write_json(out / "rows" / f"{p['name']}_s{seed}.json", doc)
    print(f"[depth] {p['name']} seed {seed}: acc {row['test_acc']:.4f} DO-alone {row['do_alone_acc']:.4f} "
          f"share {p['do_flop_share']:.3f}", flush=True)
    return doc


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.research.depth_axis", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs/depth-axis", help="where the runs and their reports go (cached)")
    ap.add_argument("--results", default="results/depth-axis", help="where rows/ and each point's summary go")
    ap.add_argument("--variants", default="", help="comma-separated variants (default: every one with a DO share "
                    f"≤ 15 %%); all: {', '.join(variants())}")
    ap.add_argument("--mechanisms", default=",".join(MECHANISMS), help=f"comma-separated, of {', '.join(MECHANISMS)}")
    ap.add_argument("--points", default="", help="comma-separated VARIANT:MECHANISM pairs instead of the grid")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--train", type=int, default=50000, help="training rows (Fashion-MNIST rows 0..N)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--budget", default="demo", help="the report's attack budget (attacks/budgets.py)")
    ap.add_argument("--attacks", default="clustering,completion,inversion,fora,sdar")
    ap.add_argument("--known-plaintext", default="100", help="known-plaintext pair counts beside the report's")
    ap.add_argument("--known-samples", default="100", help="known-sample k beside the report's k = 1 and 10")
    ap.add_argument("--list", action="store_true", help="print every variant's cut and DO FLOP share (K = 2) and exit")
    sweep.add_options(ap, threads_default=1)
    a = ap.parse_args(argv)
    names = variants()
    if a.list:
        for v in names:
            cut, share = shape_and_share(v)
            fits = "fits" if share <= GOAL["do_share"] else "over 15 %"
            print(f"{v:28s} cut {'×'.join(map(str, cut))}  DO share {100 * share:5.1f} %  {fits}")
        return
    backend = sweep.options(ap, a)
    try:
        pairs = grid(a.variants, a.mechanisms, a.points)
    except ValueError as e:
        ap.exit(2, f"{ap.prog}: error: {e}\n")
    try:
        seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    except ValueError:
        ap.exit(2, f"{ap.prog}: error: --seeds {a.seeds}: give whole numbers separated by commas (0,1,2)\n")
    if a.budget not in BUDGETS:
        ap.exit(2, f"{ap.prog}: error: --budget {a.budget}: choose one of {', '.join(BUDGETS)}\n")
    points = [point(v, m) for v, m in pairs]
    runs, results = Path(a.runs), Path(a.results)
    runs.mkdir(parents=True, exist_ok=True)
    counts = tuple(int(c) for c in a.known_plaintext.split(",") if c.strip())
    ks = tuple(int(c) for c in a.known_samples.split(",") if c.strip())
    tasks = [{"point": p, "seed": s, "runs": str(runs), "results": str(results), "budget": a.budget,
              "attacks": a.attacks, "known_counts": counts, "known_ks": ks, "train": a.train, "epochs": a.epochs}
             for p in points for s in seeds]
    docs = sweep.run_tasks(task, tasks, **backend)
    for p in points:
        per_seed = [d["row"] for d in docs if d["point"]["name"] == p["name"]]
        summary = summarise(per_seed)
        d = results / p["name"]
        d.mkdir(parents=True, exist_ok=True)
        info = {k: v for k, v in p.items() if k != "setting"}
        rundir.write_json(d / "summary.json", {"setting": p["setting"].__dict__, "point": info, "budget": a.budget,
                                               "train_rows": a.train, "epochs": a.epochs, "recipe": RECIPE,
                                               "summary": summary, "per_seed": per_seed})
        (d / "summary.md").write_text(markdown(p["setting"], a.budget, summary))
        print(f"{p['name']}: acc {summary['test_acc'][0]:.4f}, DO share {100 * p['do_flop_share']:.1f} %", flush=True)


if __name__ == "__main__":
    main()
