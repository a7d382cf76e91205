"""The report's answer first: what leaked, what was protected, the accuracy cost, the trainers' gain and
what the ε shown means, gathered from the rows and the two runs' facts (rendered at the top of report.md,
stored as ``report.json``'s ``summary``)."""

from __future__ import annotations

import math
from typing import Any

from clicooper.report.rows import below_mean_image, mean_image_cause

#: Budgets whose figures are stand-ins, never converged: every row of a report at one is marked so.
UNCONVERGED_BUDGETS = {"smoke": "the smoke budget (a few steps, tiny decoders: for tests, not conclusions)"}


def _reference(row: dict[str, Any]) -> tuple[float, str]:
    """What a row's figure is judged against: the class floor where the attack has one, else its floor."""
    if row.get("class_floor") is not None:
        return float(row["class_floor"]), "class floor"
    return float(row["floor"]), "floor"


def _beats(row: dict[str, Any]) -> bool:
    ref, _ = _reference(row)
    if row.get("score") is None:
        return False
    return row["score"] > ref if row.get("higher_is_better", True) else row["score"] < ref


def classify(row: dict[str, Any]) -> str:
    """``leaked`` (a converged figure, or a bound, beyond its reference), ``protected`` (a converged figure
    that is not, but beats the mean image), ``mean image`` (a converged inversion figure no better than the
    auxiliary mean image: the attack extracted nothing or failed to train, which is not protection by itself),
    ``undecided`` (a bound that is not beyond it yet) or ``not informative``."""
    if not row.get("informative"):
        return "not informative"
    if _beats(row):
        return "leaked"
    if row.get("converged") is False:
        return "undecided"
    return "mean image" if below_mean_image(row) else "protected"


def _figure(row: dict[str, Any]) -> str:
    ref, name = _reference(row)
    bound = ("≥ " if row.get("higher_is_better", True) else "≤ ") if row.get("converged") is False else ""
    return f"{row['party']} {row['level']} {row['primary']} {bound}{row['score']:.3f} vs {name} {ref:.3f}"


def _by_attack(rows: list[dict[str, Any]], kind: str, all_rows: list[dict[str, Any]]) -> list[str]:
    """Per attack with rows of ``kind``: how many of its informative figures, and the clearest one (largest
    margin for a leak, smallest for a protection)."""
    out = []
    for attack in dict.fromkeys(r["attack"] for r in rows):
        mine = [r for r in rows if r["attack"] == attack]
        informative = sum(1 for r in all_rows if r["attack"] == attack and r.get("informative"))

        def margin(r: dict[str, Any]) -> float:
            ref, _ = _reference(r)
            d = r["score"] - ref
            return d if r.get("higher_is_better", True) else -d

        pick = max(mine, key=margin) if kind == "leaked" else min(mine, key=lambda r: abs(margin(r)))
        what = "clearest" if kind == "leaked" else "closest"
        out.append(f"{attack} ({len(mine)} of {informative} informative figures; {what}: {_figure(pick)})")
    return out


def epsilon_meaning(eps: dict[str, Any] | None) -> str:
    """One line: what the ε shown bounds, and whether that bound says anything at its size."""
    if not eps or eps.get("epsilon") is None:
        return ("no ε: nothing this run releases is under a differential-privacy guarantee; protection is only "
                "what the attack figures show")
    e, delta = float(eps["epsilon"]), eps.get("delta")
    covers = eps.get("covers") or "the releases"
    released = f"; released: {eps['released']}" if eps.get("released") else ""
    if math.isinf(e):
        return f"ε = ∞ ({covers}): no formal guarantee; protection is only what the attack figures show"
    factor = f"e^ε ≈ {math.exp(e):.3g}" if e < 50 else f"e^ε ≈ 10^{e / math.log(10):.0f}"
    line = (f"ε = {e:.3g} (δ = {delta:g}; covers: {covers}{released}): one training sample changes the probability of "
            f"anything an observer of those releases concludes by at most a factor {factor}, except with "
            f"probability δ")
    if e <= 1:
        return line + " — a strong guarantee"
    if e <= 10:
        return line + " — a moderate guarantee"
    return line + " — too large to bound anything in practice: judge the protection by the attack figures"


def summarize(rep: dict[str, Any]) -> dict[str, Any]:
    """The summary of a report dict (``report.json`` without its summary)."""
    run, base, rows = rep["run"], rep["baseline"], rep["rows"]
    kinds: dict[str, list[dict[str, Any]]] = {"leaked": [], "protected": [], "mean image": [], "undecided": [],
                                              "not informative": []}
    for r in rows:
        kinds[classify(r)].append(r)
    acc, bacc = run.get("test_acc"), base.get("test_acc")
    gain = run.get("trainer_gain")
    budgets = rep["budget"] if isinstance(rep["budget"], list) else [rep["budget"]]
    return {
        "leaked": _by_attack(kinds["leaked"], "leaked", rows),
        "protected": _by_attack(kinds["protected"], "protected", rows),
        "mean_image": [f"{r['attack']} ({_figure(r)}, global floor {float(r['floor']):.3f}: {mean_image_cause(r)})"
                       for r in kinds["mean image"]],
        "undecided": [r["key"] for r in kinds["undecided"]],
        "not_informative": [r["key"] for r in kinds["not informative"]],
        "accuracy": acc, "baseline_accuracy": bacc,
        "accuracy_cost_pt": None if acc is None or bacc is None else round(100 * (bacc - acc), 2),
        "trainer_gain_pt": None if gain is None else round(100 * gain, 2),
        "do_alone_accuracy": run.get("do_alone_acc"),
        "do_alone_model": run.get("do_alone_model"),
        "epsilon": epsilon_meaning((run.get("epsilon") or [None])[0]),
        "unconverged_budget": next((UNCONVERGED_BUDGETS[b] for b in budgets if b in UNCONVERGED_BUDGETS), None),
    }
