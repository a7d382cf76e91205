"""The frontier of issue 14 under converged attackers: one table and one plot from several
:mod:`converged_point` summaries (each a point trained on several seeds and attacked by ``clicooper report``
at a converging budget).

    python -m experiments.research.converged_frontier --results results/frontier-resnet/converged \\
        results/frontier-resnet/converged/s8-np3-sigma0.0505 results/frontier-resnet/converged/s8-sigma0.101 ...

Per point: accuracy, Δ against the same seed's undefended reference, DO-alone accuracy and the trainers' gain,
the DO's FLOP share, every inversion level (mean and 95 % t-interval over the seeds; ``≥`` where some seed's
figure had not converged, so the mean is a lower bound), the class floor, the strongest inversion over the
class floor (per seed, then over the seeds) and the goal part by part. The undefended reference is the first
row, from the same reports (its attacks run at the report's baseline share of the steps, so its figures are
lower bounds unless marked converged).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from clicooper import rundir
from experiments.research.converged_point import GOAL, INVERSION, is_inversion, t_interval
from experiments.research.frontier import Setting
from experiments.research.frontier_report import finish_plot

#: Table headers of the inversion levels.
_HEADERS = {("inversion", "white-box"): "white-box", ("inversion", "known-plaintext-100"): "KP-100",
            ("inversion", "known-plaintext-1000"): "KP-1000", ("inversion", "aux"): "UnSplit",
            ("fora", "fora"): "FORA", ("sdar", "sdar"): "SDAR"}
#: Table columns: (header, attack, level) of the inversion levels, in :data:`INVERSION`'s order.
COLUMNS = [(_HEADERS.get((a, lv), f"{a}:{lv}"), a, lv) for a, lv in INVERSION]


def _fmt(c: tuple[float, float, float] | list[float], nd: int = 3, lower: bool = False) -> str:
    m, lo, hi = c
    if any(math.isnan(v) for v in c):
        return "–"
    body = f"{m:.{nd}f}" if hi - lo < 1e-9 else f"{m:.{nd}f} [{lo:.{nd}f}, {hi:.{nd}f}]"
    return ("≥" if lower else "") + body


def _rows_of(per_seed: list[dict[str, Any]], attack: str, level: str, *, baseline: bool) -> list[dict[str, Any]]:
    """Each seed's row of ``attack``/``level`` (any party), as (score, converged, class floor)."""
    out = []
    for p in per_seed:
        for k, r in p["rows"].items():
            a, _, lv = k.split("/")
            if (a, lv) == (attack, level):
                score = r["baseline_score"] if baseline else r["score"]
                conv = r["baseline_converged"] if baseline else r["converged"]
                if score is not None:
                    out.append({"score": score, "converged": conv is not False, "class_floor": r.get("class_floor")})
    return out


#: The label attacks on T1's features: (header, report key, the key whose floor is the same k samples alone
#: or None). Completion's floor is the same architecture trained on those k samples from scratch (on the same
#: run's activations); known-sample inference with k samples per class is read against that floor too, as an
#: advantage in points (issue 14, item 5: ≤ 5 pt over the k samples alone).
def label_columns(party: str) -> tuple[tuple[str, str, str | None], ...]:
    """The label-attack columns on ``party``'s features: (header, report key, the floor's key or None)."""
    return tuple((f"known-sample k={k}", f"clustering/{party}/known-{k}", None) for k in (1, 10, 100)) + tuple(
        (f"known-sample adv. k={k} (pt)", f"clustering/{party}/known-{k}", f"completion/{party}/k{k}")
        for k in (1, 10, 100)) + tuple(
        (f"completion adv. k={k} (pt)", f"completion/{party}/k{k}", f"completion/{party}/k{k}") for k in (1, 10, 100))


LABELS = label_columns("T1")
#: The trainers whose features the label attacks are read on: T1 (after the DO's head) and T2 (the last trainer
#: of a K = 2 U-shape, whose output the DO's tail consumes: the features nearest the labels)
LABEL_PARTIES = ("T1", "T2")


def _labels(per_seed: list[dict[str, Any]], *, baseline: bool, party: str = "T1") -> dict[str, Any]:
    """Each label attack's figure on ``party``'s features over the seeds (an advantage: over the same
    architecture trained on the k samples alone, in points)."""
    out = {}
    for head, key, alone in label_columns(party):
        vals, conv = [], 0
        for p in per_seed:
            r = p["rows"].get(key)
            score = None if r is None else (r["baseline_score"] if baseline else r["score"])
            ref = None if alone is None else p["rows"].get(alone)
            floor = None if ref is None else ref.get("baseline_floor" if baseline else "floor")
            if score is None or (alone is not None and floor is None):
                continue
            vals.append(100 * (score - floor) if alone is not None else score)
            conv += (r["baseline_converged"] if baseline else r["converged"]) is not False
        if vals:
            out[head] = {"score": t_interval(vals), "converged_seeds": conv, "seeds": len(vals)}
    return out


def _epsilon(p: dict[str, Any]) -> str:
    """The run's ε and what it covers (the accountant's first entry), or – for an undefended run."""
    eps = p.get("epsilon") or []
    if not eps:
        return "–"
    e = eps[0]
    v = float(e["epsilon"])  # the accountant writes "inf" for a release without noise
    return f"{'∞' if math.isinf(v) else f'{v:.3g}'} (δ {float(e['delta']):g}, {e['covers']})"


def _strongest(p: dict[str, Any], *, baseline: bool) -> dict[str, Any] | None:
    """One seed's strongest inversion over its class floor: (margin, level, converged)."""
    best = None
    for k, r in p["rows"].items():
        if not is_inversion(k) or r.get("class_floor") is None:
            continue
        score = r["baseline_score"] if baseline else r["score"]
        if score is None:
            continue
        conv = (r["baseline_converged"] if baseline else r["converged"]) is not False
        cand = {"margin": score - r["class_floor"], "score": score, "level": k, "converged": conv}
        if best is None or cand["margin"] > best["margin"]:
            best = cand
    return best


def point_row(summary: dict[str, Any], *, baseline: bool = False) -> dict[str, Any]:
    """The frontier row of one :mod:`converged_point` summary (``baseline``: its undefended reference)."""
    per_seed = summary["per_seed"]
    acc = [p["baseline_acc"] if baseline else p["test_acc"] for p in per_seed]
    alone = [p.get("baseline_do_alone_acc") if baseline else p["do_alone_acc"] for p in per_seed]
    alone = [a for a in alone if a is not None]
    row: dict[str, Any] = {
        "point": "undefended reference" if baseline else summary["label"],
        "seeds": [p["seed"] for p in per_seed], "budget": summary["budget"],
        "acc": t_interval(acc),
        "delta_pt": t_interval([0.0 if baseline else 100 * (p["test_acc"] - p["baseline_acc"]) for p in per_seed]),
        "do_alone": t_interval(alone) if alone else (math.nan,) * 3,
        "gain_pt": (t_interval([100 * (a - d) for a, d in zip(acc, alone, strict=True)])
                    if len(alone) == len(acc) else (math.nan,) * 3),
        "do_share": (per_seed[0].get("baseline_do_flop_share") if baseline else per_seed[0]["do_flop_share"]),
        "levels": {}, "labels": _labels(per_seed, baseline=baseline),
        "labels_by_party": {party: _labels(per_seed, baseline=baseline, party=party) for party in LABEL_PARTIES},
        "epsilon": "–" if baseline else _epsilon(per_seed[0]),
    }
    floors = []
    for head, attack, level in COLUMNS:
        got = _rows_of(per_seed, attack, level, baseline=baseline)
        if got:
            row["levels"][head] = {"score": t_interval([g["score"] for g in got]),
                                   "converged_seeds": sum(g["converged"] for g in got), "seeds": len(got)}
            floors += [g["class_floor"] for g in got if g["class_floor"] is not None]
    row["class_floor"] = t_interval(floors[: len(per_seed)]) if floors else (math.nan,) * 3
    strongest = [s for s in (_strongest(p, baseline=baseline) for p in per_seed) if s is not None]
    row["strongest_over_floor"] = t_interval([s["margin"] for s in strongest]) if strongest else (math.nan,) * 3
    row["strongest_levels"] = sorted({s["level"] for s in strongest})
    row["strongest_all_converged"] = all(s["converged"] for s in strongest)
    all_conv = all(e["converged_seeds"] == e["seeds"] for e in row["levels"].values())
    m = row["strongest_over_floor"][0]
    # no inversion figure at all (a point swept with the label attacks only) is undetermined, never met
    inversion = (None if not strongest else False if m > GOAL["inversion_over_class_floor"]
                 else (True if all_conv else None))
    row["goal"] = {"accuracy": row["delta_pt"][0] >= GOAL["accuracy_pt"], "gain": row["gain_pt"][0] >= GOAL["gain_pt"],
                   "inversion": inversion, "share": row["do_share"] is not None and row["do_share"] <= GOAL["do_share"]}
    return row


def _mark(v: bool | None) -> str:
    return "?" if v is None else ("✓" if v else "✗")


def markdown(rows: list[dict[str, Any]]) -> str:
    heads = [h for h, _, _ in COLUMNS if any(h in r["levels"] for r in rows)]
    L = ["# The residual-model frontier under converging attackers\n",
         "Written by `python -m experiments.research.converged_frontier` from `converged_point` summaries "
         "(commands in the README beside this file). Means with 95 % t-intervals over the seeds. `≥`: some seed's "
         "figure had not converged at the budget (its last doubling moved it by ≥ 0.01), so the mean is a lower "
         "bound. The reference's attacks ran at the report's baseline share of the steps (¼ by default). Goal: "
         "accuracy ≥ undefended − 1 pt / trainers' gain ≥ +3 pt / every inversion level ≤ class floor "
         "+ 0.03 / DO share ≤ 15 %; `?` = undetermined (a figure under the bound had not converged).\n",
         "| point | seeds | budget | acc | Δ (pt) | DO-alone | gain (pt) | DO share | ε (seed 0) | " + " | ".join(heads)
         + " | class floor (white-box victims) | strongest − class floor | goal |",
         "|" + "---|" * (11 + len(heads))]
    for r in rows:
        cells = []
        for h in heads:
            e = r["levels"].get(h)
            cells.append(_fmt(e["score"], lower=e["converged_seeds"] < e["seeds"]) if e else "–")
        g = r["goal"]
        share = f"{100 * r['do_share']:.1f} %" if r["do_share"] is not None else "–"
        strongest = _fmt(r["strongest_over_floor"], lower=not r["strongest_all_converged"])
        L.append(f"| {r['point']} | {','.join(map(str, r['seeds']))} | {r['budget']} | {_fmt(r['acc'], 4)} | "
                 f"{_fmt(r['delta_pt'], 2)} | {_fmt(r['do_alone'], 4)} | {_fmt(r['gain_pt'], 2)} | {share} | "
                 f"{r['epsilon']} | "
                 + " | ".join(cells) + f" | {_fmt(r['class_floor'])} | {strongest} "
                 f"({', '.join(lv.split('/')[-1] for lv in r['strongest_levels'])}) | "
                 f"{' / '.join(_mark(g[k]) for k in ('accuracy', 'gain', 'inversion', 'share'))} |")
    for party in LABEL_PARTIES:
        def got(r: dict[str, Any], p: str = party) -> dict[str, Any]:
            return r.get("labels_by_party", {}).get(p) or (r["labels"] if p == "T1" else {})
        lab = [h for h, _, _ in label_columns(party) if any(h in got(r) for r in rows)]
        if not lab:
            continue
        L += [f"\n## Label attacks on {party}'s features\n",
              "Known-sample inference (clustering with k labelled samples per class) as accuracy, and as its "
              "advantage over the k samples alone; model completion as its advantage. The k samples alone: the "
              "completion's architecture trained from scratch on those samples (the same run's activations; on the "
              "reference row, the reference's). Advantages in points; `≥` as above.\n",
              "| point | " + " | ".join(lab) + " |", "|" + "---|" * (1 + len(lab))]
        for r in rows:
            cells = []
            for h in lab:
                e = got(r).get(h)
                nd = 1 if "(pt)" in h else 3
                cells.append(_fmt(e["score"], nd, lower=e["converged_seeds"] < e["seeds"]) if e else "–")
            L.append(f"| {r['point']} | " + " | ".join(cells) + " |")
    return "\n".join(L) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Accuracy against the strongest inversion over the class floor (95 % error bars), colour = DO share,
    DO-alone as a hollow marker below each point; the goal's bounds as guides."""
    fig = Figure(figsize=(9, 6))
    ax = fig.subplots()
    shares = [r["do_share"] for r in rows if r["do_share"] is not None]
    vmin, vmax = min(shares), (max(shares) if max(shares) > min(shares) else min(shares) + 1e-3)
    sc = None
    for r in rows:
        (x, xl, xh), (y, yl, yh) = r["strongest_over_floor"], r["acc"]
        sc = ax.scatter([x], [y], c=[r["do_share"]], cmap="viridis", vmin=vmin, vmax=vmax, s=90, edgecolors="k",
                        marker="o" if r["strongest_all_converged"] else ">", zorder=3)
        ax.errorbar([x], [y], xerr=[[x - xl], [xh - x]], yerr=[[y - yl], [yh - y]], fmt="none", ecolor="grey", lw=1,
                    zorder=2)
        if not math.isnan(r["do_alone"][0]):
            ax.scatter([x], [r["do_alone"][0]], facecolors="none", edgecolors="k", s=50, zorder=3)
            ax.plot([x, x], [r["do_alone"][0], y], color="lightgrey", lw=1, ls="--", zorder=1)
        ax.annotate(r["point"].replace("fmnist-", ""), (x, y), fontsize=7, xytext=(5, 4), textcoords="offset points")
    ax.axvline(GOAL["inversion_over_class_floor"], color="r", ls=":", lw=1, label="class floor + 0.03")
    ref = rows[0]["acc"][0] if rows and rows[0]["point"] == "undefended reference" else None
    if ref is not None:
        ax.axhline(ref - 0.01, color="grey", ls=":", lw=1, label="undefended − 1 pt")
    finish_plot(fig, ax, sc, path, xlabel="strongest inversion SSIM − class floor (T1 / pooled; white-box, KP, "
                "UnSplit, FORA, SDAR; ▶ = a lower bound)",
                title="Residual-model frontier under converging attackers, seed means with 95 % intervals")


def collect(summaries: list[Path], results: Path) -> list[dict[str, Any]]:
    """frontier.{json,md,png} in ``results`` from the ``summary.json`` of each folder in ``summaries``."""
    loaded = []
    for d in summaries:
        f = d / "summary.json"
        if not f.is_file():
            raise SystemExit(f"{f} is missing: run converged_point for that point first")
        s = rundir.read_json(f)
        loaded.append({**s, "label": _label(s["setting"])})
    rows = [point_row(loaded[0], baseline=True)] + [point_row(s) for s in loaded]
    results.mkdir(parents=True, exist_ok=True)
    rundir.write_json(results / "frontier.json", {"rows": rows, "sources": [str(d) for d in summaries]})
    (results / "frontier.md").write_text(markdown(rows))
    plot(rows, results / "frontier.png")
    return rows


def _label(setting: dict[str, Any]) -> str:
    st = Setting(**setting)
    return f"{st.label} σ {st.sigma:g}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.research.converged_frontier",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", required=True, help="where frontier.{json,md,png} go")
    ap.add_argument("summaries", nargs="+", help="converged_point --results folders (each with summary.json)")
    args = ap.parse_args(argv)
    collect([Path(s) for s in args.summaries], Path(args.results))
    print((Path(args.results) / "frontier.md").read_text())


if __name__ == "__main__":
    main()
