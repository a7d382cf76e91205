"""The frontier sweep's reports: ``frontier.md`` / ``frontier.png`` from the cached rows, and the summary over seeds.

Reads only the rows :mod:`experiments.research.frontier` caches (``RUNS/<tag>/frontier_row.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # the object API: no pyplot, no backend to select

from clicooper.attacks.metrics import confidence_interval

#: The inversion levels every run is attacked at (the same settings for every run).
LEVELS = ("known-plaintext-100", "known-plaintext-1000", "white-box")
#: The undefended reference model; a level counts only if it beats its floor on this run (docs/design/metrics.md#informative-figures).
REFERENCE = "fmnist-cnn"


#: Columns of the ``--suite`` attacks where a row has them: (attack, level, figure, header).
SUITE_COLUMNS = (("unsplit", "aux", "score", "UnSplit"), ("fora", "fora", "score", "FORA"),
                 ("sdar", "sdar", "score", "SDAR"),
                 ("clustering", "known-1", "score", "known-sample k=1"), ("clustering", "known-10", "score", "known-sample k=10"),
                 ("clustering", "known-100", "score", "known-sample k=100"),
                 ("completion", "k1", "advantage", "completion adv. k=1 (pt)"),
                 ("completion", "k10", "advantage", "completion adv. k=10 (pt)"),
                 ("completion", "k100", "advantage", "completion adv. k=100 (pt)"),
                 ("sdar", "sdar-labels", "score", "SDAR labels"),
                 ("paper-metrics", "cluster-naming", "score", "paper: cluster naming"),
                 ("paper-metrics", "surrogate-obfuscated", "score", "paper: surrogate, obfuscated space"))


def _suite_value(r: dict[str, Any], attack: str, level: str, figure: str) -> float | None:
    v = r.get("suite", {}).get(attack, {}).get(level, {}).get(figure)
    return None if v is None else float(v)


def _suite_columns(rows: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    return [c for c in SUITE_COLUMNS if any(_suite_value(r, *c[:3]) is not None for r in rows)]


def _marked(text: str, figure: str, converged: bool | None) -> str:
    """``text`` marked where its attack did not converge: ≥ before a score (a lower bound), "(not converged)"
    after an advantage; ``None`` (no record) is left unmarked."""
    return text if converged in (True, None) else f"≥{text}" if figure == "score" else f"{text} (not converged)"


def _suite_cell(v: float | None, figure: str, converged: bool | None) -> str:
    if v is None:
        return "–"
    return _marked(f"{v * 100:+.1f}" if figure == "advantage" else f"{v:.3f}", figure, converged)


def _f(v: Any, nd: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


#: The undefended reference models, in order of preference: a sweep's reference is the first of these it ran
#: undefended (an undefended private architecture, e.g. ``fmnist-resnet-s8`` with ``none``, is a control, never
#: the reference), else its first undefended row.
REFERENCES = (REFERENCE, "fmnist-resnet", "cifar-resnet", "fmnist-resnet20")


def reference_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The undefended reference: the first of :data:`REFERENCES` the sweep ran undefended (plain: no NoPeek,
    secret head or adversary), else its first undefended row."""
    undefended = [r for r in rows if r["defense"] == "none" and not (r.get("nopeek") or r.get("secret_head")
                                                                     or r.get("adversary"))]
    for name in REFERENCES:
        if (hit := next((r for r in undefended if r["model"] == name), None)) is not None:
            return hit
    return undefended[0] if undefended else None


def informative_levels(rows: list[dict[str, Any]]) -> dict[str, bool]:
    """docs/design/metrics.md#informative-figures: a level counts only if it beats its (global) floor on the undefended reference run."""
    ref = reference_row(rows)
    out = {}
    for lv in LEVELS:
        x = ref["inversion"].get(lv) if ref else None
        out[lv] = bool(x and x["beats_floor"])
    return out


def _seed_rows(run_dirs: list[Path]) -> tuple[dict[str, list[dict[str, Any]]], dict[int, float]]:
    """The cached rows of every ``--runs`` directory by tag (sorted by seed), and the reference accuracy by seed."""
    per: dict[str, list[dict[str, Any]]] = {}
    ref: dict[int, float] = {}
    for d in run_dirs:
        rows = [json.loads(f.read_text()) for f in sorted(Path(d).glob("*/frontier_row.json"))]
        for r in rows:
            per.setdefault(r["tag"], []).append(r)
        base = reference_row(rows)
        if base is not None:
            ref[int(base["budget"]["seed"])] = base["test_acc"]
    for rows in per.values():
        rows.sort(key=lambda r: r["budget"]["seed"])
    return per, ref


def _ci(vals: list[float], nd: int = 4, scale: float = 1.0) -> str:
    c = confidence_interval([v * scale for v in vals])
    return f"{c['mean']:.{nd}f} [{c['low']:.{nd}f}, {c['high']:.{nd}f}]"


def _seed_setting(tag: str, rows: list[dict[str, Any]], ref: dict[int, float]) -> dict[str, Any]:
    """The per-seed figures of one setting (``rows``: its cached rows, one per seed)."""
    seeds = [int(r["budget"]["seed"]) for r in rows]
    return {
        "tag": tag, "seeds": seeds, "acc": [r["test_acc"] for r in rows],
        "delta_vs_reference": [r["test_acc"] - ref[s] for r, s in zip(rows, seeds, strict=True) if s in ref],
        "do_alone": [r["do_alone_acc"] for r in rows], "trainer_gain": [r["trainer_gain"] for r in rows],
        "inversion": {lv: [r["inversion"][lv]["ssim"] for r in rows if r["inversion"].get(lv)] for lv in LEVELS},
        "class_floor": [r["inversion"]["white-box"]["class_floor"] for r in rows
                        if r["inversion"].get("white-box") and r["inversion"]["white-box"].get("class_floor") is not None],
        "do_flop_share": rows[0]["do_flop_share"],
        "suite": {f"{a}/{lv}/{fig}": [v for r in rows if (v := _suite_value(r, a, lv, fig)) is not None]
                  for a, lv, fig, _ in SUITE_COLUMNS},
        "strongest": [strongest_inversion(r) for r in rows],
        # per figure: whether every seed's attack converged (a figure that did not is a lower bound)
        "converged": {**{lv: all(r["inversion"][lv].get("converged") in (True, None) for r in rows
                                 if r["inversion"].get(lv)) for lv in LEVELS},
                      **{f"{a}/{lv}/{fig}": all(r.get("suite", {}).get(a, {}).get(lv, {}).get("converged") in (True, None)
                                                for r in rows if _suite_value(r, a, lv, fig) is not None)
                         for a, lv, fig, _ in SUITE_COLUMNS}},
    }


#: The inversion figures of a row: the sweep's own levels and the suite's reconstruction attacks.
INVERSION_FIGURES = (*LEVELS, "unsplit", "fora", "sdar")
#: Issue 14's goal (docs/design/metrics.md#floors): accuracy ≥ undefended − 1 pt, trainers' gain ≥ +3 pt, every inversion
#: level ≤ class floor + 0.03, DO FLOP share ≤ 15 %.
GOAL = {"delta_pt": -1.0, "gain_pt": 3.0, "above_class_floor": 0.03, "do_share": 0.15}


def strongest_inversion(r: dict[str, Any]) -> dict[str, Any]:
    """The highest inversion SSIM of a row over :data:`INVERSION_FIGURES` (level, score, whether it converged)."""
    cands = [(lv, x["ssim"], x.get("converged")) for lv in LEVELS if (x := r["inversion"].get(lv))]
    for a, lv in (("unsplit", "aux"), ("fora", "fora"), ("sdar", "sdar")):
        if (x := r.get("suite", {}).get(a, {}).get(lv)) and x.get("score") is not None:
            cands.append((a, float(x["score"]), x.get("converged")))
    lv, score, conv = max(cands, key=lambda c: c[1])
    return {"level": lv, "ssim": score, "converged": conv, "levels": len(cands)}


def goal_check(o: dict[str, Any]) -> dict[str, Any]:
    """Issue 14's goal for one setting of :func:`seed_summary` (judged on the seed means; each with its
    95 % interval beside it in the table): per part, met or not, and why."""
    def mean(v: list[float]) -> float | None:
        return confidence_interval(v)["mean"] if v else None

    delta, gain = mean(o["delta_vs_reference"]), mean(o["trainer_gain"])
    strongest = [x["ssim"] for x in o["strongest"]]
    floor = mean(o["class_floor"])
    excess = None if not strongest or floor is None else mean(strongest) - floor
    every_converged = all(x["converged"] in (True, None) for x in o["strongest"])
    parts = {
        "accuracy": None if delta is None else delta * 100 >= GOAL["delta_pt"],
        "trainers' gain": None if gain is None else gain * 100 >= GOAL["gain_pt"],
        # a defense is judged on converged figures only: a lower bound at the floor does not meet it
        "inversion": None if excess is None else bool(excess <= GOAL["above_class_floor"] and every_converged),
        "DO share": o["do_flop_share"] <= GOAL["do_share"],
    }
    return {"parts": parts, "met": all(v is True for v in parts.values()),
            "strongest_minus_class_floor": excess, "strongest_converged": every_converged}


def _ci_cell(vals: list[float], figure: str, converged: bool) -> str:
    """Mean [95 % interval] of a score (SSIM, accuracy) or an advantage (in points); marked where some seed's
    attack did not converge: ≥ before a score (a lower bound), "(not converged)" after an advantage."""
    return _marked(_ci(vals, 1, 100) if figure == "advantage" else _ci(vals, 3), figure, converged)


def seed_summary(run_dirs: list[Path]) -> tuple[list[dict[str, Any]], str]:
    """Per setting (tag), the mean and 95 % t-interval over the seeds in ``run_dirs`` (one ``--runs``
    directory per seed) of accuracy, Δ vs the reference of the *same seed*, DO-alone, trainer gain and the
    three inversion SSIMs; returns the rows and a Markdown table."""
    per, ref = _seed_rows(run_dirs)
    out = [_seed_setting(tag, rows, ref) for tag, rows in per.items()]
    cols = _suite_columns([r for rows in per.values() for r in rows])
    lines = [
        "| setting | seeds | acc | Δ vs reference (pt) | DO-alone | trainer gain (pt) | DO share | KP-100 | KP-1000 | WB | "
        + "".join(f"{c[3]} | " for c in cols) + "class floor | strongest inversion − class floor | goal: acc / gain / "
        "inversion / share |",
        "|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(cols) + "---|---|---|",
    ]
    for o in out:
        o["goal"] = goal_check(o)
        delta, inv, floor = o["delta_vs_reference"], o["inversion"], o["class_floor"]
        suite = [o["suite"][f"{a}/{lv}/{fig}"] for a, lv, fig, _ in cols]
        lines.append(
            f"| {o['tag']} | {','.join(map(str, o['seeds']))} | {_ci(o['acc'])} | {_ci(delta, 2, 100) if delta else '–'} | "
            f"{_ci(o['do_alone'])} | {_ci(o['trainer_gain'], 2, 100)} | {o['do_flop_share']:.3f} | "
            + " | ".join(_ci_cell(inv[lv], "score", o["converged"][lv]) if inv[lv] else "–" for lv in LEVELS)
            + "".join(f" | {_ci_cell(v, fig, o['converged'][f'{a}/{lv}/{fig}'])}" if v else " | –"
                      for v, (a, lv, fig, _) in zip(suite, cols, strict=True))
            + f" | {_ci(floor, 3) if floor else '–'} | {_goal_cells(o)} |")
    return out, "\n".join(lines) + "\n"


def _goal_cells(o: dict[str, Any]) -> str:
    g, levels = o["goal"], sorted({x["level"] for x in o["strongest"]})
    excess = "–" if g["strongest_minus_class_floor"] is None else (
        ("" if g["strongest_converged"] else "≥") + f"{g['strongest_minus_class_floor']:+.3f} ({', '.join(levels)})")
    marks = " / ".join("–" if v is None else "✓" if v else "✗" for v in g["parts"].values())
    return f"{excess} | {marks}"


def write_markdown(rows: list[dict[str, Any]], path: Path, command: str) -> None:
    """``frontier.md``: one table row per setting, then which levels are informative."""
    info = informative_levels(rows)
    ref = reference_row(rows)
    cols = _suite_columns(rows)
    lines = [
        "# Privacy frontier (generated by `experiments.research.frontier`)",
        "",
        f"Command: `{command}`",
        "",
        f"Budget: {json.dumps(rows[0]['budget']) if rows else '–'}",
        "",
        f"acc = test accuracy (local path, 10,000 test images); Δref = acc − undefended {ref['model'] if ref else '–'}; "
        "DO-alone = same head + linear tail (a thick DO tail: the better of that and head + adapter + its own tail) "
        "trained by the DO without trainers (same rows, epochs, shuffling); "
        "gain = acc − DO-alone. SSIM: T1's inversion of the training victims (KP-k = known-plaintext decoder "
        "on k pairs; WB = white-box: leaked head, public noise simulated, + rMLE). cf = class floor (SSIM of the "
        "victim's class-mean image: what the label alone gives). ε: PLD/RDP, δ = 1e-5, **per-release, head fixed**.",
        "",
        "| model | defense | cut | σ | noise/signal | acc | Δref (pt) | DO FLOP share | DO-alone | gain (pt) | KP-100 | KP-1000 | WB | "
        + "".join(f"{c[3]} | " for c in cols) + "class floor | global floor | ε |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(cols) + "---|---|---|",
    ]
    for r in rows:
        inv = r["inversion"]
        cf = next((inv[lv]["class_floor"] for lv in LEVELS if inv.get(lv)), None)
        gf = next((inv[lv]["global_floor"] for lv in LEVELS if inv.get(lv)), None)
        eps = r["epsilon"]["epsilon"] if r["epsilon"] else None
        dref = (r["test_acc"] - ref["test_acc"]) * 100 if ref else None
        lines.append(
            f"| {r.get('label', r['model'])} | {r['defense']} | {'×'.join(map(str, r['cut_shape']))} | {r['sigma']:g} | {_f(r['noise_to_signal'], 2)} | "
            f"{_f(r['test_acc'], 4)} | {_f(dref, 1)} | {_f(r['do_flop_share'], 3)} | {_f(r['do_alone_acc'], 4)} | "
            f"{_f(r['trainer_gain'] * 100, 1)} | "
            + " | ".join(_suite_cell(inv[lv]["ssim"], "score", inv[lv].get("converged")) if inv.get(lv) else "–"
                         for lv in LEVELS)
            + "".join(" | " + _suite_cell(_suite_value(r, a, lv, fig), fig,
                                          r.get("suite", {}).get(a, {}).get(lv, {}).get("converged"))
                      for a, lv, fig, _ in cols)
            + f" | {_f(cf)} | {_f(gf)} | {'∞' if eps is None else _f(eps, 1)} |"
        )
    lines += ["", "Informative on the undefended reference (beats its global floor): "
              + ", ".join(f"{lv}: {'yes' if v else 'NO (not informative)'}" for lv, v in info.items()), ""]
    path.write_text("\n".join(lines) + "\n")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """``frontier.png``: accuracy against inversion SSIM per level, marker size and colour the DO's FLOP share."""
    fig = Figure(figsize=(16, 5))
    axes = fig.subplots(1, 3, sharey=True)
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
            ax.annotate(f"{r.get('label', r['model']).replace('fmnist-', '')}"
                        + (f" [{r['defense']}]" if r["defense"] != "clicooper" else f" σ={r['sigma']:g}"), (x["ssim"], r["test_acc"]),
                        fontsize=7, xytext=(4, 4), textcoords="offset points")
        ref = reference_row(rows)
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


def plot_seeds(out: list[dict[str, Any]], path: Path) -> None:
    """``frontier_seeds.png``: per setting, accuracy against the strongest inversion SSIM (seed means, 95 %
    intervals as error bars), colour = the DO's FLOP share, the DO-alone accuracy as a hollow marker below
    (the trainers' gain is the vertical gap); the class floor + 0.03 and undefended − 1 pt as guides."""
    fig = Figure(figsize=(9, 6))
    ax = fig.subplots()
    shares = [o["do_flop_share"] for o in out]
    vmin, vmax = min(shares), max(shares) if max(shares) > min(shares) else min(shares) + 1e-3
    sc, floors, refs = None, [], []
    for o in out:
        ci_x = confidence_interval([x["ssim"] for x in o["strongest"]])
        ci_y, ci_a = confidence_interval(o["acc"]), confidence_interval(o["do_alone"])
        x, y = ci_x["mean"], ci_y["mean"]
        sc = ax.scatter([x], [y], c=[o["do_flop_share"]], cmap="viridis", vmin=vmin, vmax=vmax, s=90, edgecolors="k",
                        zorder=3)
        ax.errorbar([x], [y], xerr=[[x - ci_x["low"]], [ci_x["high"] - x]], yerr=[[y - ci_y["low"]], [ci_y["high"] - y]],
                    fmt="none", ecolor="grey", lw=1, zorder=2)
        ax.scatter([x], [ci_a["mean"]], facecolors="none", edgecolors="k", s=50, zorder=3)
        ax.plot([x, x], [ci_a["mean"], y], color="lightgrey", lw=1, ls="--", zorder=1)
        ax.annotate(o["tag"].replace("fmnist-", ""), (x, y), fontsize=7, xytext=(5, 4), textcoords="offset points")
        floors += o["class_floor"]
        if o["tag"].split("_")[1:2] == ["none"] and o["tag"].startswith("fmnist-resnet_"):
            refs += o["acc"]
    if floors:
        c = sum(floors) / len(floors)
        ax.axvline(c + 0.03, color="r", ls=":", lw=1, label=f"class floor + 0.03 ≈ {c + 0.03:.3f}")
    if refs:
        ax.axhline(sum(refs) / len(refs) - 0.01, color="grey", ls=":", lw=1, label="undefended − 1 pt")
    finish_plot(fig, ax, sc, path, xlabel="strongest inversion SSIM (T1; max over KP-100, KP-1000, white-box, "
                "UnSplit, FORA, SDAR)", title="Privacy frontier on the residual models, seed means with 95 % intervals")


def finish_plot(fig: Any, ax: Any, sc: Any, path: Path, *, xlabel: str, title: str) -> None:
    """Label a frontier plot (accuracy against inversion; colour = the DO's share) and write it to ``path``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (● split model, ○ DO alone)")
    ax.legend(fontsize=8, loc="lower right")
    if sc is not None:
        fig.colorbar(sc, ax=ax, label="DO FLOP share")
    fig.suptitle(title)
    fig.savefig(path, dpi=110, bbox_inches="tight")
