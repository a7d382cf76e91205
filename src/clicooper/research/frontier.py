"""Privacy frontier sweep (issue 5): accuracy × inversion success × the DO's FLOP share, with DO-alone accuracy.

For each configuration (model × σ; the cut width is part of the model name) it

1. trains a split run (``clicooper.training.loop.train``; provenance off, observations recorded),
2. reads test accuracy (local path: the DO holds every segment after delivery, no noise) and
   ``plan.do_flop_share``,
3. trains the **DO alone**: the same head (same init seed) + a linear tail, on the same rows, epochs,
   shuffling, optimizer and batch size, without any trainer (nothing leaves the DO, so no noise). The
   trainers' contribution is ``acc − do_alone_acc``; without it a low FLOP share could be gamed by adding
   useless trainer layers,
4. runs the inversion attack of ``clicooper.attacks`` on T1 with the **same settings for every run**:
   known-plaintext decoders with k = 100 and 1,000 pairs, and the white-box decoder (leaked head, public
   noise distribution simulated) + rMLE refinement; floors (global, class) on the same victims,
5. reports ε of the releases (``privacy.accountant.epsilon``, PLD, δ = 1e-5), labelled
   *per-release, head fixed*.

Results: ``results/frontier.json``, ``results/frontier.md`` and ``results/frontier.png``. Each run's row is
cached in ``RUNS/<tag>/frontier_row.json`` so an interrupted sweep resumes.

    python -m clicooper.research.frontier --runs runs/frontier --train 15000 --epochs 3

An attack figure on a defended run counts only if the same attack beats its floor on the undefended
reference run (DESIGN §7); the table says so per level.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import clicooper.models.private  # noqa: F401  (registers the fmnist-private-* models in the zoo)
from clicooper.data import load_dataset
from clicooper.privacy.accountant import epsilon as dp_epsilon

LEVELS = ("known-plaintext-100", "known-plaintext-1000", "white-box")
REFERENCE = "fmnist-cnn"


@dataclass(frozen=True)
class Setting:
    """One point of the grid."""

    model: str
    sigma: float
    defense: str  # "none" for the reference, "clicooper" otherwise

    @property
    def tag(self) -> str:
        return f"{self.model}_{self.defense}_s{self.sigma:g}"


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
    return cfg


def do_alone_accuracy(model_name: str, b: Budget, dataset: Any) -> float:
    """Head (same architecture and init seed as the split run) + a linear tail, trained by the DO alone."""
    from clicooper.training.do_alone import do_alone_accuracy as alone

    return alone(model_name, dataset, train_range=(0, b.train), epochs=b.epochs, seed=b.seed, trainers=b.trainers)


def _level(att: dict[str, Any], name: str) -> dict[str, Any] | None:
    lv = att["headline"]["T1"].get(name)
    if lv is None:
        return None
    m = lv["metrics"]
    return {"ssim": lv["score"], "global_floor": m.get("global_floor", lv["floor"]),
            "class_floor": m.get("class_floor"), "beats_floor": lv["beats_floor"],
            "psnr": m.get("psnr"), "best_method": m.get("best_method")}


def measure(s: Setting, b: Budget, runs: Path, dataset: Any, *, fresh: bool = False) -> dict[str, Any]:
    """Train, attack and account one setting; cached in ``runs/<tag>/frontier_row.json``."""
    from clicooper.attacks.runner import run_attack
    from clicooper.training.loop import train

    run_dir = runs / s.tag
    cache = run_dir / "frontier_row.json"
    if cache.is_file() and not fresh:
        return json.loads(cache.read_text())
    if run_dir.exists():
        shutil.rmtree(run_dir)
    t0 = time.time()
    handle = train(run_config(s, b), out=run_dir)
    del handle
    metrics = json.loads((run_dir / "metrics.json").read_text())
    plan = json.loads((run_dir / "plan.json").read_text())
    t_train = time.time() - t0
    t1 = time.time()
    alone = do_alone_accuracy(s.model, b, dataset)
    t_alone = time.time() - t1
    t2 = time.time()
    att = run_attack(run_dir, "inversion", knowledge=["known", "aux", "white-box"], party="T1",
                     victims=b.victims, known_k=100, seed=b.seed, config=b.attack_config())
    t_att = time.time() - t2
    eps = None
    if s.defense in ("dp", "clicooper") and s.sigma > 0:
        rep = dp_epsilon(sigma=s.sigma, epochs=b.epochs, delta=b.delta, accountant="rdp" if s.sigma < 0.2 else "pld")
        eps = {"epsilon": rep.epsilon, "delta": rep.delta, "accountant": rep.accountant, "covers": rep.covers}
    head = plan["parties"][0]
    row = {
        "tag": s.tag, "model": s.model, "defense": s.defense, "sigma": s.sigma, "clip_norm": 1.0,
        "cut_shape": head["output_shape"], "cut_dim": int(math.prod(head["output_shape"])),
        "noise_to_signal": s.sigma * math.sqrt(math.prod(head["output_shape"])) if s.defense in ("dp", "clicooper") else 0.0,
        "test_acc": metrics["final_test_acc"], "acc_by_epoch": [m["test_acc"] for m in metrics["epochs"]],
        "do_flop_share": plan["do_flop_share"], "do_alone_acc": alone,
        "trainer_gain": metrics["final_test_acc"] - alone,
        "inversion": {lv: _level(att, lv) for lv in LEVELS},
        "epsilon": eps,
        "seconds": {"train": round(t_train, 1), "do_alone": round(t_alone, 1), "attack": round(t_att, 1)},
        "budget": b.__dict__,
    }
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


# ---------------------------------------------------------------------------------------------- reports


def _f(v: Any, nd: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def informative_levels(rows: list[dict[str, Any]]) -> dict[str, bool]:
    """DESIGN §7: a level counts only if it beats its (global) floor on the undefended reference run."""
    ref = next((r for r in rows if r["model"] == REFERENCE and r["defense"] == "none"), None)
    out = {}
    for lv in LEVELS:
        x = ref["inversion"].get(lv) if ref else None
        out[lv] = bool(x and x["beats_floor"])
    return out


def seed_summary(run_dirs: list[Path]) -> tuple[list[dict[str, Any]], str]:
    """Per setting (tag), the mean and 95 % t-interval over the seeds in ``run_dirs`` (one ``--runs``
    directory per seed) of accuracy, Δ vs the reference of the *same seed*, DO-alone, trainer gain and the
    three inversion SSIMs; returns the rows and a Markdown table."""
    from clicooper.attacks.metrics import confidence_interval

    per: dict[str, list[dict[str, Any]]] = {}
    ref: dict[int, float] = {}
    for d in run_dirs:
        for f in sorted(Path(d).glob("*/frontier_row.json")):
            r = json.loads(f.read_text())
            seed = int(r["budget"]["seed"])
            per.setdefault(r["tag"], []).append(r)
            if r["model"] == REFERENCE and r["defense"] == "none":
                ref[seed] = r["test_acc"]

    def ci(vals: list[float], nd: int = 4, scale: float = 1.0) -> str:
        c = confidence_interval([v * scale for v in vals])
        return f"{c['mean']:.{nd}f} [{c['low']:.{nd}f}, {c['high']:.{nd}f}]"

    out, lines = [], [
        "| setting | seeds | acc | Δ vs reference (pt) | DO-alone | trainer gain (pt) | DO share | KP-100 | KP-1000 | WB | class floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for tag, rows in per.items():
        rows.sort(key=lambda r: r["budget"]["seed"])
        seeds = [int(r["budget"]["seed"]) for r in rows]
        acc = [r["test_acc"] for r in rows]
        delta = [r["test_acc"] - ref[s] for r, s in zip(rows, seeds, strict=True) if s in ref]
        alone = [r["do_alone_acc"] for r in rows]
        gain = [r["trainer_gain"] for r in rows]
        inv = {lv: [r["inversion"][lv]["ssim"] for r in rows if r["inversion"].get(lv)] for lv in LEVELS}
        floor = [r["inversion"]["white-box"]["class_floor"] for r in rows
                 if r["inversion"].get("white-box") and r["inversion"]["white-box"].get("class_floor") is not None]
        out.append({"tag": tag, "seeds": seeds, "acc": acc, "delta_vs_reference": delta, "do_alone": alone,
                    "trainer_gain": gain, "inversion": inv, "class_floor": floor,
                    "do_flop_share": rows[0]["do_flop_share"]})
        lines.append(
            f"| {tag} | {','.join(map(str, seeds))} | {ci(acc)} | {ci(delta, 2, 100) if delta else '–'} | "
            f"{ci(alone)} | {ci(gain, 2, 100)} | {rows[0]['do_flop_share']:.3f} | "
            + " | ".join(ci(inv[lv], 3) if inv[lv] else "–" for lv in LEVELS)
            + f" | {ci(floor, 3) if floor else '–'} |")
    return out, "\n".join(lines) + "\n"


def write_markdown(rows: list[dict[str, Any]], path: Path, command: str) -> None:
    info = informative_levels(rows)
    ref = next((r for r in rows if r["model"] == REFERENCE and r["defense"] == "none"), None)
    lines = [
        "# Privacy frontier (generated by `clicooper.research.frontier`)",
        "",
        f"Command: `{command}`",
        "",
        f"Budget: {json.dumps(rows[0]['budget']) if rows else '–'}",
        "",
        "acc = test accuracy (local path, 10,000 test images); Δref = acc − undefended fmnist-cnn; "
        "DO-alone = same head + linear tail trained by the DO without trainers (same rows, epochs, shuffling); "
        "gain = acc − DO-alone. SSIM: T1's inversion of 300 training victims (KP-k = known-plaintext decoder "
        "on k pairs; WB = white-box: leaked head, public noise simulated, + rMLE). cf = class floor (SSIM of the "
        "victim's class-mean image: what the label alone gives). ε: PLD/RDP, δ = 1e-5, **per-release, head fixed**.",
        "",
        "| model | defense | cut | σ | noise/signal | acc | Δref (pt) | DO FLOP share | DO-alone | gain (pt) | KP-100 | KP-1000 | WB | class floor | global floor | ε |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        inv = r["inversion"]
        cf = next((inv[lv]["class_floor"] for lv in LEVELS if inv.get(lv)), None)
        gf = next((inv[lv]["global_floor"] for lv in LEVELS if inv.get(lv)), None)
        eps = r["epsilon"]["epsilon"] if r["epsilon"] else None
        dref = (r["test_acc"] - ref["test_acc"]) * 100 if ref else None
        lines.append(
            f"| {r['model']} | {r['defense']} | {'×'.join(map(str, r['cut_shape']))} | {r['sigma']:g} | {_f(r['noise_to_signal'], 2)} | "
            f"{_f(r['test_acc'], 4)} | {_f(dref, 1)} | {_f(r['do_flop_share'], 3)} | {_f(r['do_alone_acc'], 4)} | "
            f"{_f(r['trainer_gain'] * 100, 1)} | "
            + " | ".join(_f(inv[lv]["ssim"]) if inv.get(lv) else "–" for lv in LEVELS)
            + f" | {_f(cf)} | {_f(gf)} | {'∞' if eps is None else _f(eps, 1)} |"
        )
    lines += ["", "Informative on the undefended reference (beats its global floor): "
              + ", ".join(f"{lv}: {'yes' if v else 'NO (not informative)'}" for lv, v in info.items()), ""]
    path.write_text("\n".join(lines) + "\n")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5), sharey=True)
    shares = [r["do_flop_share"] for r in rows]
    vmin, vmax = min(shares), max(shares)
    sc = None
    for ax, lv, title in zip(axes, LEVELS, ("known-plaintext, 100 pairs", "known-plaintext, 1,000 pairs",
                                            "white-box (head leaked)"), strict=True):
        cf = []
        for r in rows:
            x = r["inversion"].get(lv)
            if not x:
                continue
            cf.append(x["class_floor"])
            sc = ax.scatter(x["ssim"], r["test_acc"], s=60 + 1500 * r["do_flop_share"], c=r["do_flop_share"],
                            cmap="viridis", vmin=vmin, vmax=vmax, edgecolors="k",
                            marker="*" if r["defense"] == "none" else "o")
            ax.annotate(f"{r['model'].replace('fmnist-', '')}"
                        + (f" [{r['defense']}]" if r["defense"] != "clicooper" else f" σ={r['sigma']:g}"), (x["ssim"], r["test_acc"]),
                        fontsize=7, xytext=(4, 4), textcoords="offset points")
        ref = next((r for r in rows if r["model"] == REFERENCE and r["defense"] == "none"), None)
        if ref is not None:
            ax.axhline(ref["test_acc"] - 0.01, color="grey", ls=":", lw=1, label="undefended − 1 pt")
        if cf:
            c = sum(cf) / len(cf)
            ax.axvline(c, color="r", ls="--", lw=1, label=f"class floor ≈ {c:.3f}")
            ax.axvline(c + 0.03, color="r", ls=":", lw=1, label="class floor + 0.03")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_title(title)
        ax.set_xlabel("inversion SSIM (T1)")
    axes[0].set_ylabel("test accuracy")
    if sc is not None:
        fig.colorbar(sc, ax=axes, label="DO FLOP share (marker size too)")
    fig.suptitle("CliCooper privacy frontier, Fashion-MNIST (★ = no activation noise/labels defense; 'cnn [none]' = the undefended reference)")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs/frontier", help="where the run directories go")
    ap.add_argument("--results", default="results", help="where frontier.{json,md,png} go")
    ap.add_argument("--train", type=int, default=15000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--victims", type=int, default=300)
    ap.add_argument("--attack-steps", type=int, default=400)
    ap.add_argument("--only", default="", help="comma-separated tags or model names to run (default: whole grid)")
    ap.add_argument("--extra", default="", help="extra points MODEL:SIGMA[:DEFENSE],… (default defense clicooper)")
    ap.add_argument("--quick", action="store_true", help="first 3 grid points only")
    ap.add_argument("--report-only", action="store_true", help="rebuild the report from cached rows")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="training and attack seed (use one --runs directory per seed)")
    ap.add_argument("--summary", default="", help="comma-separated --runs directories (one per seed): print the "
                    "mean and 95 %% interval per setting over them (and write RESULTS/frontier_seeds.{json,md})")
    a = ap.parse_args(argv)
    if a.summary:
        rows, table = seed_summary([Path(d) for d in a.summary.split(",")])
        res = Path(a.results)
        res.mkdir(parents=True, exist_ok=True)
        (res / "frontier_seeds.json").write_text(json.dumps({"runs": a.summary.split(","), "rows": rows}, indent=2))
        (res / "frontier_seeds.md").write_text(table)
        print(table)
        return 0
    torch.set_num_threads(a.threads)
    b = Budget(train=a.train, epochs=a.epochs, victims=a.victims, attack_steps=a.attack_steps, seed=a.seed)
    grid = default_grid(a.quick)
    for item in filter(None, a.extra.split(",")):
        m, s, *d = item.split(":")
        grid.append(Setting(m, float(s), d[0] if d else "clicooper"))
    if a.only:
        keep = set(a.only.split(","))
        extra = grid[len(default_grid(a.quick)):]
        grid = [g for g in grid[: len(grid) - len(extra)]
                if g.tag in keep or g.model in keep or (g.model == REFERENCE and "ref" in keep)] + extra
    runs, res = Path(a.runs), Path(a.results)
    runs.mkdir(parents=True, exist_ok=True)
    res.mkdir(parents=True, exist_ok=True)
    if not a.report_only:
        dataset = load_dataset("fashion-mnist")
        for s in grid:
            t = time.time()
            row = measure(s, b, runs, dataset)
            print(f"[frontier] {s.tag}: acc {row['test_acc']:.4f} alone {row['do_alone_acc']:.4f} "
                  f"share {row['do_flop_share']:.3f} "
                  + " ".join(f"{lv} {row['inversion'][lv]['ssim']:.3f}" for lv in LEVELS if row['inversion'].get(lv))
                  + f" ({time.time() - t:.0f} s)", flush=True)
    rows = [json.loads(p.read_text()) for p in sorted(runs.glob("*/frontier_row.json"))]
    order = {g.tag: i for i, g in enumerate(default_grid())}
    rows.sort(key=lambda r: (order.get(r["tag"], 999), r["model"], r["sigma"]))
    command = "python -m clicooper.research.frontier " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    (res / "frontier.json").write_text(json.dumps({"command": command, "informative": informative_levels(rows),
                                                   "rows": rows}, indent=2))
    write_markdown(rows, res / "frontier.md", command)
    if rows:
        plot(rows, res / "frontier.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
