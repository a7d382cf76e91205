"""Privacy frontier sweep (issue 5): accuracy × inversion success × the DO's FLOP share, with DO-alone accuracy.

For each configuration (model × σ; the cut width is part of the model name) it

1. trains a split run (``clicooper.training.train``; provenance off, observations recorded),
2. reads test accuracy (local path: the DO holds every segment after delivery, no noise) and
   ``plan.do_flop_share``,
3. trains the **DO alone**: the same head (same init seed) + a linear tail (for a DO tail thicker than one
   Linear, also head + adapter + that tail, the better counting: ``clicooper.training.do_alone``), on the same rows, epochs,
   shuffling, optimizer and batch size, without any trainer (nothing leaves the DO, so no noise). The
   trainers' contribution is ``acc − do_alone_acc``; without it a low FLOP share could be gamed by adding
   useless trainer layers,
4. runs the inversion attack of ``clicooper.attacks`` on T1 with the **same settings for every run**:
   known-plaintext decoders with k = 100 and 1,000 pairs, and the white-box decoder (leaked head, public
   noise distribution simulated) + rMLE refinement; floors (global, class) on the same victims,
5. reports ε of the releases (``privacy.accountant.epsilon``, PLD, δ = 1e-5), labelled
   *per-release, head fixed*.

Results: ``results/frontier.json``, ``results/frontier.md`` and ``results/frontier.png``
(:mod:`~experiments.research.frontier_report`). Each run's row is
cached in ``RUNS/<tag>/frontier_row.json`` so an interrupted sweep resumes.

    python -m experiments.research.frontier --runs runs/frontier --train 15000 --epochs 3

An attack figure on a defended run counts only if the same attack beats its floor on the undefended
reference run (docs/design/metrics.md#informative-figures); the table says so per level.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

import clicooper.models.private  # noqa: F401  (registers the fmnist-private-* models in the zoo)
from clicooper import sweep
from clicooper.attacks.budgets import DESCRIPTIONS, settings_for
from clicooper.attacks.runner import run_attack
from clicooper.data import load_dataset
from clicooper.privacy.accountant import epsilon as dp_epsilon
from clicooper.runs import load_run
from clicooper.training import train
from clicooper.training.do_alone import do_alone_accuracy as _do_alone
from experiments.research.frontier_report import (
    LEVELS,
    REFERENCE,
    informative_levels,
    plot,
    plot_seeds,
    seed_summary,
    write_markdown,
)


@dataclass(frozen=True)
class Setting:
    """One point of the grid."""

    model: str
    sigma: float
    defense: str  # "none" for the reference, "clicooper" otherwise
    nopeek: float = 0.0  # NoPeek's α (RunConfig.nopeek); 0: off
    expansion: int | None = None  # label obfuscation's m (labels.expansion); None: the default (2)
    secret_head: bool = False  # head_mode secret-random: the DO's head drawn from its key, never trained
    adversary: float = 0.0  # ResSFL-style adversarial decoder's λ (RunConfig.adversarial_decoder); 0: off

    def _options(self) -> list[tuple[str, str]]:
        """(tag suffix, label suffix) of each option this point sets besides σ."""
        opts = [(f"_np{self.nopeek:g}", f" NoPeek α={self.nopeek:g}") if self.nopeek else None,
                (f"_m{self.expansion}", f" m={self.expansion}") if self.expansion is not None else None,
                ("_rh", " secret random head") if self.secret_head else None,
                (f"_adv{self.adversary:g}", f" adversarial decoder λ={self.adversary:g}") if self.adversary else None]
        return [o for o in opts if o is not None]

    @property
    def tag(self) -> str:
        return f"{self.model}_{self.defense}_s{self.sigma:g}" + "".join(t for t, _ in self._options())

    @property
    def label(self) -> str:
        """The model's name and what this point changes besides σ (for tables and plots)."""
        return self.model + "".join(lb for _, lb in self._options())


@dataclass(frozen=True)
class Budget:
    """Shared settings: the same for every run (training and attacks)."""

    train: int = 15000
    epochs: int = 3
    seed: int = 0
    trainers: int = 2
    observe: int = 2000
    victims: int = 300
    attack_steps: int = 400
    attack_width: int = 32
    refine_steps: int = 100
    delta: float = 1e-5
    suite: tuple[str, ...] = ()  # more attacks on each run, at the sweep budget (SUITE)

    def attack_config(self) -> dict[str, Any]:
        return {"modes": ("white-box", "known-plaintext"), "known_counts": (100, 1000), "victims": self.victims,
                "steps": self.attack_steps, "width": self.attack_width, "refine_steps": self.refine_steps,
                "seed": self.seed}


def run_config(s: Setting, b: Budget) -> dict[str, Any]:
    """The ``RunConfig`` fields of one split run."""
    cfg: dict[str, Any] = {
        "dataset": "fashion-mnist", "model": s.model, "trainers": b.trainers, "epochs": b.epochs,
        "seed": b.seed, "train_range": (0, b.train), "batch_size": 128, "record_observations": True,
        "observe": "subset", "observe_count": b.observe, "device": "cpu", "defense": s.defense,
        "provenance": False,
    }
    if s.defense in ("dp", "clicooper"):
        cfg["dp"] = {"sigma": s.sigma, "clip_norm": 1.0, "delta": b.delta}
    if s.nopeek:
        cfg["nopeek"] = s.nopeek
    if s.expansion is not None:
        cfg["labels"] = {"expansion": s.expansion}
    if s.secret_head:
        cfg["head_mode"] = "secret-random"
    if s.adversary:
        cfg["adversarial_decoder"] = s.adversary
    return cfg


def do_alone_accuracy(model_name: str, b: Budget, dataset: Any) -> float:
    """The DO-alone accuracy (:mod:`clicooper.training.do_alone`): head (same architecture and init seed as the
    split run) + a linear tail, or for a thick DO tail the better of that and head + adapter + its own tail."""
    return _do_alone(model_name, dataset, train_range=(0, b.train), epochs=b.epochs, seed=b.seed, trainers=b.trainers)


def _level(att: dict[str, Any], name: str) -> dict[str, Any] | None:
    lv = att["headline"]["T1"].get(name)
    if lv is None:
        return None
    m = lv["metrics"]
    return {"ssim": lv["score"], "global_floor": m.get("global_floor", lv["floor"]),
            "class_floor": m.get("class_floor"), "beats_floor": lv["beats_floor"],
            "psnr": m.get("psnr"), "best_method": m.get("best_method"), "converged": lv.get("converged")}


def _epsilon(s: Setting, b: Budget) -> dict[str, Any] | None:
    """ε of the releases (PLD; RDP below σ = 0.2), ``None`` without activation noise."""
    if s.defense not in ("dp", "clicooper") or s.sigma <= 0:
        return None
    rep = dp_epsilon(sigma=s.sigma, epochs=b.epochs, delta=b.delta, accountant="rdp" if s.sigma < 0.2 else "pld")
    return {"epsilon": rep.epsilon, "delta": rep.delta, "accountant": rep.accountant, "covers": rep.covers}


#: The attacks ``--suite`` may add to a row (their sweep-budget settings: attacks/budgets.py), and the levels read
#: (``None``: every level the attack reports).
SUITE = {"fora": ("fora",), "sdar": ("sdar", "sdar-labels"), "completion": ("k1", "k10", "k100"),
         "unsplit": ("aux",), "clustering": None, "extraction": None, "paper-metrics": None}
#: ``--suite`` names that run another attack's code with a changed config, and the config changes (over the
#: sweep budget) of each: UnSplit is the inversion attack's ``unsplit`` mode alone; known-sample inference
#: (the clustering attack's ``known-k`` levels) at k = 1, 10 and 100 per class, as the issue asks.
_SUITE_ATTACK = {"unsplit": "inversion"}
_SUITE_CONFIG: dict[str, dict[str, Any]] = {"unsplit": {"modes": ("unsplit",)},
                                            "clustering": {"known_ks": (1, 10, 100)}}
#: ``run_attack`` keywords over the budget's: the known samples per class the known-sample levels need
_SUITE_KW: dict[str, dict[str, Any]] = {"clustering": {"known_k": 100}}


def suite_figures(run_dir: Path, attacks: tuple[str, ...], seed: int, *, budget: str = "sweep") -> dict[str, Any]:
    """Run ``attacks`` (``budget``: the sweeps use the ``sweep`` budget, the demo budget until session 9; T1's
    view, the sweep's seed) on ``run_dir``; per attack and level: score, its floor(s), the advantage where the
    attack reports one, and whether the figure converged."""
    unknown = sorted(set(attacks) - set(SUITE))
    if unknown:
        raise SystemExit(f"--suite: unknown attack(s) {', '.join(unknown)}; choose from {', '.join(SUITE)}")
    out: dict[str, Any] = {}
    for name in attacks:
        attack = _SUITE_ATTACK.get(name, name)
        kw = settings_for(budget, attack)
        kw["config"] = {**kw.get("config", {}), **_SUITE_CONFIG.get(name, {})}
        kw.update(_SUITE_KW.get(name, {}))
        r = run_attack(run_dir, attack, party="T1", seed=seed, save_as=name,  # unsplit: beside inversion.json
                       annotate={"budget": budget, "budget_description": DESCRIPTIONS[budget]}, **kw)
        levels = r["headline"].get("T1", {})
        keep = SUITE[name] or tuple(levels)
        out[name] = {lv: {"score": levels[lv]["score"], "floor": levels[lv]["floor"],
                          "class_floor": levels[lv]["metrics"].get("class_floor"),
                          "advantage": levels[lv]["metrics"].get("advantage"),
                          "converged": levels[lv].get("converged")} for lv in keep if lv in levels}
    return out


def _row(s: Setting, b: Budget, run_dir: Path, alone: float, att: dict[str, Any],
         seconds: dict[str, float]) -> dict[str, Any]:
    """The cached row of one measured setting."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    plan = json.loads((run_dir / "plan.json").read_text())
    cut = plan["parties"][0]["output_shape"]
    return {
        "tag": s.tag, "model": s.model, "label": s.label, "defense": s.defense, "sigma": s.sigma, "clip_norm": 1.0,
        "nopeek": s.nopeek, "expansion": s.expansion, "secret_head": s.secret_head, "adversary": s.adversary,
        "cut_shape": cut, "cut_dim": int(math.prod(cut)),
        "noise_to_signal": s.sigma * math.sqrt(math.prod(cut)) if s.defense in ("dp", "clicooper") else 0.0,
        "test_acc": metrics["final_test_acc"], "acc_by_epoch": [m["test_acc"] for m in metrics["epochs"]],
        "do_flop_share": plan["do_flop_share"], "do_alone_acc": alone,
        "trainer_gain": metrics["final_test_acc"] - alone,
        "inversion": {lv: _level(att, lv) for lv in LEVELS},
        "epsilon": _epsilon(s, b),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "budget": b.__dict__,
    }


def measure(s: Setting, b: Budget, runs: Path, dataset: Any, *, fresh: bool = False) -> dict[str, Any]:
    """Train, attack and account one setting; cached in ``runs/<tag>/frontier_row.json``."""
    run_dir = runs / s.tag
    cache = run_dir / "frontier_row.json"
    if cache.is_file() and not fresh:
        row = json.loads(cache.read_text())
        missing = tuple(a for a in b.suite if a not in row.get("suite", {}))
        if missing:  # a cached run: only the attacks it lacks (observations and model files are kept)
            t = time.time()
            row.setdefault("suite", {}).update(suite_figures(run_dir, missing, b.seed))
            row["seconds"]["suite"] = round(row["seconds"].get("suite", 0.0) + time.time() - t, 1)
            cache.write_text(json.dumps(row, indent=2))
        return row
    if run_dir.exists():
        shutil.rmtree(run_dir)
    t0 = time.time()
    train(run_config(s, b), out=run_dir)
    t1 = time.time()
    alone = do_alone_accuracy(s.model, b, dataset)
    t2 = time.time()
    att = run_attack(run_dir, "inversion", knowledge=["known", "aux", "white-box"], party="T1",
                     victims=b.victims, known_k=100, seed=b.seed, config=b.attack_config())
    t3 = time.time()
    suite = suite_figures(run_dir, b.suite, b.seed) if b.suite else {}
    row = _row(s, b, run_dir, alone, att, {"train": t1 - t0, "do_alone": t2 - t1, "attack": t3 - t2,
                                           "suite": time.time() - t3})
    row["suite"] = suite
    cache.write_text(json.dumps(row, indent=2))
    # keep the disk small: the checkpoints are not needed any more
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return row


def default_grid(quick: bool = False) -> list[Setting]:
    """The reference, then each private model at σ ∈ {0, …} (σ is per unit clip norm; noise norm ≈ σ√d)."""
    grid = [Setting(REFERENCE, 0.0, "none")]
    sig = {"fmnist-private-d16": (0.0, 0.125, 0.25, 0.5), "fmnist-private-d64": (0.0, 0.0625, 0.125, 0.25),
           "fmnist-private-s4": (0.0, 0.036, 0.07, 0.14)}
    for m, ss in sig.items():
        grid += [Setting(m, s, "clicooper") for s in ss]
    # controls separating the two mechanisms' accuracy costs: label obfuscation alone on the reference,
    # the private architectures without any defense
    grid += [Setting(REFERENCE, 0.0, "labels"), Setting("fmnist-private-d16", 0.0, "none"),
             Setting("fmnist-private-d64", 0.0, "none")]
    return grid[:3] if quick else grid


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m experiments.research.frontier",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs/frontier", help="where the run directories go")
    ap.add_argument("--results", default="results", help="where frontier.{json,md,png} go")
    ap.add_argument("--train", type=int, default=15000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--victims", type=int, default=300)
    ap.add_argument("--attack-steps", type=int, default=400)
    ap.add_argument("--only", default="", help="comma-separated tags or model names to run (default: whole grid)")
    ap.add_argument("--extra", default="", help="extra points MODEL:SIGMA[:DEFENSE[:nopeek=α][:m=M][:head=secret][:adv=λ]],… "
                    "(default defense clicooper; nopeek: NoPeek's weight; m: label obfuscation's sub-classes per class; "
                    "head=secret: the DO's head drawn from its key, never trained; adv: the ResSFL-style adversarial decoder's λ)")
    ap.add_argument("--quick", action="store_true", help="first 3 grid points only")
    ap.add_argument("--report-only", action="store_true", help="rebuild the report from cached rows")
    ap.add_argument("--reevaluate", action="store_true", help="re-read the cached rows' test accuracy from their "
                    "model files (the local path with the cut's clip), then rebuild the report")
    sweep.add_options(ap, threads_flags=("--threads", "--threads-per-task"))  # each point-seed task's threads
    ap.add_argument("--suite", default="", help="comma-separated attacks to add to every row at the report's demo "
                    f"budget ({', '.join(SUITE)}); cached rows get only the ones they lack")
    ap.add_argument("--seed", type=int, default=0, help="training and attack seed (use one --runs directory per seed)")
    ap.add_argument("--seeds", default="", help="comma-separated seeds instead of --seed: every point at every seed "
                    "(one task each), one folder per seed: put {seed} in --runs and --results (runs/s{seed})")
    ap.add_argument("--summary", default="", help="comma-separated --runs directories (one per seed): print the "
                    "mean and 95 %% interval per setting over them (and write RESULTS/frontier_seeds.{json,md})")
    return ap


def grid_of(quick: bool, only: str, extra: str) -> list[Setting]:
    """The default grid (``--quick``: its first points), kept to ``--only``, then the ``--extra`` points."""
    grid = default_grid(quick)
    if only:
        keep = set(only.split(","))
        grid = [g for g in grid if g.tag in keep or g.model in keep or (g.model == REFERENCE and "ref" in keep)]
    for item in filter(None, extra.split(",")):
        m, s, *rest = item.split(":")
        opts = dict(o.split("=", 1) for o in rest[1:] if "=" in o)
        unknown = sorted(set(opts) - {"nopeek", "m", "head", "adv"}) + [o for o in rest[1:] if "=" not in o]
        if unknown or opts.get("head", "secret") != "secret":
            raise SystemExit(f"--extra {item}: unknown option(s) {', '.join(unknown) or 'head=' + opts['head']}; "
                             "use nopeek=α, m=M, head=secret and/or adv=λ")
        grid.append(Setting(m, float(s), rest[0] if rest else "clicooper", nopeek=float(opts.get("nopeek", 0.0)),
                            expansion=int(opts["m"]) if "m" in opts else None, secret_head="head" in opts,
                            adversary=float(opts.get("adv", 0.0))))
    return grid


def _write_seed_summary(run_dirs: str, results: Path) -> None:
    rows, table = seed_summary([Path(d) for d in run_dirs.split(",")])
    results.mkdir(parents=True, exist_ok=True)
    (results / "frontier_seeds.json").write_text(json.dumps({"runs": run_dirs.split(","), "rows": rows}, indent=2))
    (results / "frontier_seeds.md").write_text(table)
    if rows:
        plot_seeds(rows, results / "frontier_seeds.png")
    print(table)


@functools.cache
def _fashion_mnist() -> Any:
    return load_dataset("fashion-mnist")  # once per process: a Ray worker runs several tasks


def measure_task(task: tuple[Setting, Budget, Path]) -> dict[str, Any]:
    """One point at one seed, a task of :func:`clicooper.sweep.run_tasks`: :func:`measure`, and a line."""
    s, b, runs = task
    t = time.time()
    row = measure(s, b, runs, _fashion_mnist())
    print(f"[frontier] {s.tag} seed {b.seed}: acc {row['test_acc']:.4f} alone {row['do_alone_acc']:.4f} "
          f"share {row['do_flop_share']:.3f} "
          + " ".join(f"{lv} {row['inversion'][lv]['ssim']:.3f}" for lv in LEVELS if row['inversion'].get(lv))
          + f" ({time.time() - t:.0f} s)", flush=True)
    return row


def _sweep(grid: list[Setting], b: Budget, runs_of: dict[int, Path], **backend: Any) -> None:
    """Every point at every seed of ``runs_of`` (seed → its runs folder), seed by seed, one task each."""
    tasks = [(s, replace(b, seed=seed), runs) for seed, runs in runs_of.items() for s in grid]
    sweep.run_tasks(measure_task, tasks, **backend)


def reevaluate(runs: Path) -> None:
    """Re-read every cached row's test accuracy from its run's model files by the local path as it is now
    (:meth:`clicooper.runs.RunHandle.accuracy`: the DO's clip at the cut included, which rows made before
    that fix lacked); the per-epoch figures cannot be redone from the final files and are dropped."""
    for f in sorted(runs.glob("*/frontier_row.json")):
        row = json.loads(f.read_text())
        run = load_run(f.parent)
        ds = run.dataset()
        acc = run.accuracy(ds.x_test, ds.y_test)
        if acc != row["test_acc"]:
            row |= {"test_acc_recorded": row["test_acc"], "test_acc": acc, "acc_by_epoch": None,
                    "trainer_gain": acc - row["do_alone_acc"],
                    "test_acc_source": "model files re-evaluated by the local path with the cut's clip"}
            f.write_text(json.dumps(row, indent=2))
        print(f"[frontier] {row['tag']}: acc {row.get('test_acc_recorded', acc):.4f} → {acc:.4f}", flush=True)


def _write_reports(runs: Path, res: Path, command: str) -> None:
    """``frontier.{json,md,png}`` from every cached row under ``runs``, in grid order."""
    rows = [json.loads(p.read_text()) for p in sorted(runs.glob("*/frontier_row.json"))]
    order = {g.tag: i for i, g in enumerate(default_grid())}
    rows.sort(key=lambda r: (order.get(r["tag"], 999), r["model"], r["sigma"]))
    (res / "frontier.json").write_text(json.dumps({"command": command, "informative": informative_levels(rows),
                                                   "rows": rows}, indent=2))
    write_markdown(rows, res / "frontier.md", command)
    if rows:
        plot(rows, res / "frontier.png")


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    a = ap.parse_args(argv)
    if a.summary:
        _write_seed_summary(a.summary, Path(a.results))
        return 0
    backend = sweep.options(ap, a)
    try:
        seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else [a.seed]
    except ValueError:
        ap.exit(2, f"{ap.prog}: error: --seeds {a.seeds}: give whole numbers separated by commas (0,1,2)\n")
    if len(seeds) > 1 and not ("{seed}" in a.runs and "{seed}" in a.results):
        ap.exit(2, f"{ap.prog}: error: --seeds: put {{seed}} in --runs and --results (one folder per seed, "
                "e.g. --runs runs/s{seed})\n")
    unknown = sorted(set(filter(None, a.suite.split(","))) - set(SUITE))
    if unknown:  # before any task starts
        ap.exit(2, f"{ap.prog}: error: --suite: unknown attack(s) {', '.join(unknown)}; choose from {', '.join(SUITE)}\n")
    torch.set_num_threads(a.threads_per_task)
    b = Budget(train=a.train, epochs=a.epochs, victims=a.victims, attack_steps=a.attack_steps, seed=seeds[0],
               suite=tuple(filter(None, a.suite.split(","))))
    runs_of = {s: Path(a.runs.replace("{seed}", str(s))) for s in seeds}
    res_of = {s: Path(a.results.replace("{seed}", str(s))) for s in seeds}
    for s in seeds:
        runs_of[s].mkdir(parents=True, exist_ok=True)
        res_of[s].mkdir(parents=True, exist_ok=True)
    if a.reevaluate:
        for s in seeds:
            reevaluate(runs_of[s])
    elif not a.report_only:
        _sweep(grid_of(a.quick, a.only, a.extra), b, runs_of, **backend)
    command = "python -m experiments.research.frontier " + " ".join(argv if argv is not None else sys.argv[1:])
    for s in seeds:
        _write_reports(runs_of[s], res_of[s], command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
