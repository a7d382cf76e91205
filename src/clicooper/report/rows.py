"""The report's figures gathered from attack results: one row per (attack, party, level) beside the same
attack on the baseline, per-epoch series for the plots, and the settings that differ between the two.
Results are read from ``RUN/attacks/<name>.json`` when their budget matches, else the attack is run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clicooper.attacks import informative
from clicooper.attacks.base import CONVERGENCE_TOL, converged, convergence
from clicooper.attacks.budgets import run_suite, scaled, settings_for
from clicooper.errors import AttackError
from clicooper.report.runs import Progress, read_json

#: Settings of an attack result compared between run and baseline (a difference is a warning).
SETTINGS_COMPARED = ("knowledge", "parties", "epochs", "victims", "known_k", "aux", "seed", "config", "budget")


def load_or_run(run_dir: Path, name: str, budget: str, rerun: bool, progress: Progress | None, *,
                scale: float = 1.0, accept: tuple[float, ...] = (), own: Any = None) -> dict[str, Any]:
    """Attack ``name``'s result on ``run_dir``: the stored one if it used ``budget`` with that budget's current
    settings at ``scale`` of its steps, or at one of the ``accept`` scales (and not ``rerun``); a result made
    under an older version of the budget is run again, at ``scale``. ``own``: the user's own module and data
    (:class:`clicooper.attacks.runner.OwnObjects`) for a run that cannot rebuild them."""
    path = run_dir / "attacks" / f"{name}.json"
    if path.is_file() and not rerun:
        res = read_json(path)
        got = res.get("settings", {})
        if got.get("budget", budget) == budget and any(
                float(got.get("budget_scale", 1.0)) == sc and _current(got, budget, name, sc)
                for sc in (scale, *accept)):
            if progress:
                progress(f"reusing {path}")
            return res
    if progress:
        progress(f"{run_dir}:")
    return run_suite(run_dir, [name], budget=budget, progress=progress, scale=scale,
                     overrides={"own": own})["attacks"][name]


def _current(settings: dict[str, Any], budget: str, name: str, scale: float = 1.0) -> bool:
    """Whether a stored result's config holds every value the budget (at ``scale`` of its steps) now sets for
    ``name``."""
    try:
        want = scaled(settings_for(budget, name), scale).get("config", {})
    except AttackError:
        return True  # a budget this version does not know: the stored result is all there is
    got = settings.get("config") or {}
    return all(json.dumps(got.get(k)) == json.dumps(v) for k, v in want.items())  # tuples dump as lists


def needs_whole_budget(res: dict[str, Any]) -> bool:
    """Whether a baseline result run at a share of the budget's steps has a figure that is below its floor
    and has not converged: more steps could still make the attack informative, so it runs again at the whole
    budget before the report calls the attack *not informative*."""
    if float(res.get("settings", {}).get("budget_scale", 1.0)) == 1.0:
        return False
    return any(not lv.get("beats_floor") and converged(lv) is False
               for levels in res.get("headline", {}).values() for lv in levels.values())


def level_rows(name: str, res: dict[str, Any], base: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per party and level of the last epoch, with the baseline's figures and the informative flag."""
    rows = []
    for party, levels in res.get("headline", {}).items():
        for lv, r in levels.items():
            b = ((base or {}).get("headline", {}).get(party) or {}).get(lv)
            row = {
                "key": f"{name}/{party}/{lv}", "attack": name, "party": party, "level": lv,
                "primary": r["primary"], "higher_is_better": r.get("higher_is_better", True),
                "score": r["score"], "floor": r["floor"], "beats_floor": r["beats_floor"],
                "baseline_score": None if b is None else b["score"],
                "baseline_floor": None if b is None else b["floor"],
                "baseline_beats_floor": None if b is None else b["beats_floor"],
                "informative": b is not None and b.get("score") is not None and informative(b),
            }
            m = r.get("metrics", {})
            if "class_floor" in m:
                row["class_floor"] = m["class_floor"]
                row["baseline_class_floor"] = None if b is None else b.get("metrics", {}).get("class_floor")
            if "training" in m:  # the attack's own training record (FORA, SDAR): fitted its auxiliary data?
                row["training"] = m["training"]
                row["baseline_training"] = None if b is None else b.get("metrics", {}).get("training")
            if "best_method" in m:
                row["best_method"] = m["best_method"]
            if "relative" in m:
                row["relative"] = m["relative"]
                row["baseline_relative"] = None if b is None else b.get("metrics", {}).get("relative")
            if "strong" in m:  # the paper's metrics (issue 14): the strong attacker's figure beside each
                row["strong"] = m["strong"]
                row["baseline_strong"] = None if b is None else b.get("metrics", {}).get("strong")
                row["why"] = m.get("why")
            _convergence(row, r, b)
            rows.append(row)
    return rows


def _convergence(row: dict[str, Any], r: dict[str, Any], b: dict[str, Any] | None) -> None:
    """Issue 14: each figure read at ¼, ½ and the full budget on both runs; a figure whose last doubling
    changed it by ≥ the tolerance is a bound, not a converged figure.

    The defence is judged on the run's figure, so a row is judged only when that figure converged. The
    baseline's figure only shows that the attack is informative (it beats its floor on the undefended run);
    an unconverged one is a lower bound of what the attack reaches there, so one that already beats the floor
    shows it as well as a converged one would. The verdict still says that it is a bound."""
    r, b = rejudged(r), None if b is None else rejudged(b)
    row["convergence"] = r.get("convergence")
    row["baseline_convergence"] = None if b is None else b.get("convergence")
    row["converged"] = converged(r)
    row["baseline_converged"] = None if b is None else converged(b)
    row["judged"] = bool(row["informative"]) and row["converged"] is not False
    row["verdict"] = verdict(row)


def rejudged(level: dict[str, Any]) -> dict[str, Any]:
    """``level`` with its convergence judged by the current rule where its result file predates it: a level
    with the attack's own training record but a convergence record that did not consult it (written before a
    figure needed the attack to have trained to count as converged) gets it recomputed from the stored
    readings and that record."""
    conv, training = level.get("convergence"), (level.get("metrics") or {}).get("training")
    if not conv or not training or "trained" in conv:
        return level
    return {**level, "convergence": convergence(conv["values"], conv.get("budget"), what=conv.get("unit", "steps"),
                                                tol=conv.get("tol", CONVERGENCE_TOL), training=training)}


def not_converged(row: dict[str, Any], why: str) -> dict[str, Any]:
    """``row`` with its run figure (and the baseline's) marked not converged because of ``why`` (a budget
    whose figures are stand-ins): a bound, not judged; its verdict says so."""
    out = {**row, "converged": False, "baseline_converged": False, "judged": False, "not_converged_why": why}
    if not row["informative"]:
        out["verdict"] = f"{row['verdict']} (at {why})"
        return out
    ref, ref_name = ((row["class_floor"], "class floor") if row.get("class_floor") is not None
                     else (row["floor"], "floor"))
    better = row["score"] > ref if row.get("higher_is_better", True) else row["score"] < ref
    out["verdict"] = f"not judged: the run's figure is a {bound_word(row)} from {why}" + (
        f"; it already beats the {ref_name} {ref:.3f}, so the defence does not hide this one" if better else "")
    return out


def bound_word(row: dict[str, Any]) -> str:
    """"lower bound" for an attack figure where higher is better (the attack would only get stronger)."""
    return "lower bound" if row.get("higher_is_better", True) else "upper bound"


def verdict(row: dict[str, Any]) -> str:
    """One line per row: whether the defence is judged on this figure, and what it shows."""
    def moved(conv: dict[str, Any] | None) -> str:
        return f"last doubling changed it by {conv['last_doubling']:.3f}" if conv else ""
    if not row["informative"]:
        return "not informative: the attack does not beat its floor on the undefended baseline"
    ref, ref_name = (row["class_floor"], "class floor") if row.get("class_floor") is not None else (row["floor"], "floor")
    better = row["score"] > ref if row.get("higher_is_better", True) else row["score"] < ref
    base_note = ""
    if row["baseline_converged"] is False:
        bwhy = (row.get("baseline_convergence") or {}).get("not_trained_why")
        base_note = (f" (the baseline's figure is a {bound_word(row)}, not converged: "
                     f"{'the attack did not finish training there' if bwhy else moved(row['baseline_convergence'])}; "
                     "it beats its floor all the same)")
    if row["converged"] is False:
        why = (row.get("convergence") or {}).get("not_trained_why")
        if why and not better and below_mean_image(row):
            return (f"no better than the mean image, and not judged: {row['score']:.3f} does not beat the global floor "
                    f"{row['floor']:.3f}, but the attack did not finish training ({why}), so this figure says nothing "
                    "about the defence; run it with more steps or at the reference size" + base_note)
        head = (f"not judged: the attack did not finish training ({why}), so the run's figure is a {bound_word(row)}"
                if why else f"not judged: the run's figure is a {bound_word(row)} (not converged: {moved(row['convergence'])})")
        if better:
            head += f"; it already beats the {ref_name} {ref:.3f}, so the defence does not hide this one"
        return head + base_note
    if better:
        return f"leaks: {row['score']:.3f} beats the {ref_name} {ref:.3f}" + base_note
    if below_mean_image(row):
        return (f"no better than the mean image: {row['score']:.3f} does not beat the global floor {row['floor']:.3f} "
                f"(the auxiliary mean image's SSIM); {mean_image_cause(row)}" + base_note)
    return f"protected at this budget: {row['score']:.3f} does not beat the {ref_name} {ref:.3f}" + base_note


def below_mean_image(row: dict[str, Any]) -> bool:
    """Whether an inversion row's figure (SSIM against the victims, with a class floor) does not beat its
    global floor, the SSIM of the auxiliary mean image: the attack reconstructs nothing a constant guess does
    not, which is not evidence of protection by itself."""
    if row.get("class_floor") is None or row.get("score") is None or not row.get("higher_is_better", True):
        return False
    return float(row["score"]) <= float(row["floor"])


def mean_image_cause(row: dict[str, Any]) -> str:
    """Which of "extracted nothing" and "failed to train" a figure at the mean image's level shows, from the
    attack's own training record (did its inverse network fit its own auxiliary images?) and the same attack
    on the undefended baseline."""
    tr, btr = row.get("training"), row.get("baseline_training")
    base = row.get("baseline_score")
    if not tr:
        return ("it cannot tell whether the attack extracted nothing or failed to train (the result has no "
                "training record); the same attack at the reference size with more steps would tell")
    fit = f"MSE {tr['aux_mse'][-1]:.4f} against the mean image's {tr['mean_image_mse']:.4f}"
    if not tr.get("fitted") and tr.get("noise_simulated"):
        base_fit = "" if btr is None else (" (on the undefended baseline it did fit them)" if btr.get("fitted")
                                           else " (it did not fit them on the undefended baseline either)")
        return (f"it cannot tell whether the attack extracted nothing or failed to train: its inverse network did not "
                f"fit its own auxiliary images through the simulated public noise ({fit}){base_fit}, so either the "
                "noise leaves nothing to decode or the attack did not train; the same attack at the reference size "
                "with more steps would tell")
    if not tr.get("fitted"):
        return (f"the attack failed to train: its inverse network did not fit its own auxiliary images ({fit}), so "
                "this figure says nothing about the defence; run it at the reference size with more steps")
    same = (f"; the same attack reaches {base:.3f} on the undefended baseline"
            + ("" if btr is None or btr.get("fitted") else ", though it did not fit its auxiliary images there")
            if base is not None else "")
    mmd = tr.get("mmd")
    align = (f"; its substitute's MK-MMD to the received data went {mmd[0]:.3f} → {mmd[-1]:.3f}" if mmd else "")
    return (f"the attack most likely extracted nothing: it trained (its inverse network fits its own auxiliary images, "
            f"{fit}{same}{align}), yet what it reconstructs from the received data is no better than the mean "
            "image. A simulator that never aligned with the received data reads the same (an undefended run can "
            "show it at one seed and not another), so the same attack at other seeds is the check")


def per_epoch(name: str, res: dict[str, Any], base: dict[str, Any] | None,
              flags: dict[str, bool]) -> list[dict[str, Any]]:
    """Per (party, level): the run's and the baseline's score and the run's floor by epoch."""
    series: dict[str, dict[str, Any]] = {}
    for which, data in (("run", res), ("base", base or {})):
        for r in data.get("results", []):
            for lv, v in r.get("levels", {}).items():
                key = f"{name}/{r['party']}/{lv}"
                s = series.setdefault(key, {"attack": name, "party": r["party"], "level": lv, "run": {},
                                            "base": {}, "floor": {}, "informative": flags.get(key, False),
                                            "primary": v.get("primary")})
                if v.get("score") is not None:
                    s[which][int(r["epoch"])] = v["score"]
                if which == "run" and v.get("floor") is not None:
                    s["floor"][int(r["epoch"])] = v["floor"]
    return list(series.values())


def settings_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The :data:`SETTINGS_COMPARED` keys whose values differ between two attack results. When ``b`` ran at
    a declared share of the budget (``budget_scale``), its step counts are not a difference: they are
    compared as ``a``'s scaled by that share."""
    sa, sb = a.get("settings", {}), b.get("settings", {})
    sb_scale = float(sb.get("budget_scale", 1.0))
    if sb_scale != float(sa.get("budget_scale", 1.0)):
        sa = {**sa, "config": scaled({"config": dict(sa.get("config") or {})}, sb_scale)["config"]}
    return [k for k in SETTINGS_COMPARED if json.dumps(sa.get(k), sort_keys=True) != json.dumps(sb.get(k), sort_keys=True)]
