"""``clicooper attack`` and ``clicooper report`` (docs/design/metrics.md).

Thin: ``attack`` calls :func:`clicooper.attacks.budgets.run_suite`, ``report`` calls
:func:`clicooper.report.make_report`. Both print one JSON object as the last stdout line (``--json``
only changes whether a human summary goes to stderr as well). Both libraries import torch (≈3 s), so they
are imported inside the commands ("lazy: torch"), keeping ``clicooper --help`` fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from clicooper.cli.common import emit_json, err, guarded
from clicooper.errors import AttackError


def parse_aux_range(text: str | None) -> tuple[int, int] | None:
    """``"A:B"`` → ``(A, B)``; raises :class:`AttackError` with what to type otherwise."""
    if text is None:
        return None
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        raise AttackError(f"--aux-range must be START:STOP (e.g. 0:5000), got {text!r}") from None
    if not 0 <= a < b:
        raise AttackError(f"--aux-range {text} is empty or negative; use START:STOP with 0 ≤ START < STOP")
    return a, b


def parse_epochs(text: str | None) -> Any:
    """``last`` | ``all`` | ``1,3`` → what ``run_attack`` takes."""
    if text is None:
        return None
    if text in ("last", "all"):
        return text
    try:
        eps = [int(e) for e in text.split(",") if e.strip()]
    except ValueError:
        raise AttackError(f"--epochs must be last, all or comma-separated epoch numbers, got {text!r}") from None
    if not eps or min(eps) < 1:
        raise AttackError(f"--epochs must be last, all or epoch numbers ≥ 1 (1-based), got {text!r}")
    return eps


def summarize(suite: dict[str, Any]) -> dict[str, Any]:
    """The compact JSON the CLI prints: per attack its file, settings and headline numbers."""
    out: dict[str, Any] = {"budget": suite["budget"], "budget_description": suite["budget_description"],
                           "attacks": {}}
    for name, res in suite["attacks"].items():
        st = res["settings"]
        out["attacks"][name] = {
            "file": f"attacks/{name}.json",
            "seconds": res.get("seconds"),
            "settings": {k: st.get(k) for k in ("knowledge", "parties", "epochs", "victims", "known_k", "aux", "seed")},
            "headline": {party: {lv: {k: r.get(k) for k in ("primary", "score", "floor", "beats_floor")}
                                 for lv, r in levels.items()}
                         for party, levels in res["headline"].items()},
        }
    return out


def _print_headlines(summary: dict[str, Any], budget_description: str) -> None:
    """One stderr line per (attack, party, level): the score against its floor; then the settings."""
    for name, a in summary["attacks"].items():
        for p, levels in a["headline"].items():
            for lv, r in levels.items():
                word, flag = "floor", "beats floor" if r["beats_floor"] else "does NOT beat floor"
                if name in ("removal", "forgery"):  # the defender's figures: the floor is the target
                    word, flag = "target", "met" if r["score"] == r["floor"] else "NOT met"
                score, floor = (f"{v:.4f}" if isinstance(v, int | float) else "n/a" for v in (r["score"], r["floor"]))
                err.print(f"{name} {p} {lv}: {r['primary']} {score} ({word} {floor}, {flag})", highlight=False)
    err.print(f"settings: {budget_description}", highlight=False)


@guarded
def attack(
    run_dir: Path = typer.Argument(..., help="run directory trained with --record-observations"),
    attack_name: str = typer.Option("all", "--attack",
                                    help="clustering | gradient-leak | paper-metrics | completion | extraction | "
                                         "fora | sdar | inversion | all (or a comma-separated list); removal | "
                                         "forgery (the watermark and ledger of a provenance run; not in all)"),
    knowledge: str = typer.Option(None, help="comma-separated levels: zero,known,aux,white-box,query "
                                             "(default: every level the attack uses)"),
    party: str = typer.Option(None, help="T1…TK, each, last or pool (default: the attack's natural attacker)"),
    aux_range: str = typer.Option(None, "--aux-range",
                                  help="START:STOP of the auxiliary data (default: first half of the test split)"),
    aux_source: str = typer.Option(None, "--aux-source", help="test (default) | train (must not overlap "
                                                              "the DO's --train-range)"),
    victims: int = typer.Option(None, help="victims scored (default: from --budget)"),
    epochs: str = typer.Option(None, help="last | all | 1,3 (default: from --budget)"),
    known_k: int = typer.Option(None, "--known-k", help="known samples per class in the known level"),
    seed: int = typer.Option(None, help="attacker's seed (victims, known samples)"),
    budget: str = typer.Option("demo", help="demo (converged on the demo run; minutes on 2 CPU cores) | full (every level, one doubling more) | sweep | smoke"),
    as_json: bool = typer.Option(False, "--json", help="only the JSON object on stdout (no summary)"),
) -> None:
    """Run attacks on a run directory; writes RUN/attacks/<attack>.json and prints a JSON summary."""
    from clicooper.attacks.budgets import ALL_ATTACKS, DESCRIPTIONS, run_suite  # lazy: torch
    from clicooper.attacks.provenance_suite import PROVENANCE_ATTACKS, run_provenance_attacks

    if victims is not None and victims < 1:
        raise AttackError(f"--victims must be ≥ 1, got {victims}")
    if aux_source is not None and aux_source not in ("train", "test"):
        raise AttackError(f"--aux-source must be train or test, got {aux_source!r}")
    if not run_dir.is_dir():
        raise AttackError(f"run directory {run_dir} not found; train one with `clicooper train "
                          "--record-observations --out RUN`")
    overrides = {
        "knowledge": [s.strip() for s in knowledge.split(",") if s.strip()] if knowledge else None,
        "party": party, "aux_range": parse_aux_range(aux_range), "aux_source": aux_source,
        "victims": victims, "epochs": parse_epochs(epochs), "known_k": known_k, "seed": seed,
    }
    names = [s.strip() for s in attack_name.split(",") if s.strip()]
    bad = [n for n in names if n not in (*ALL_ATTACKS, "all", *PROVENANCE_ATTACKS)]
    if bad or not names:
        raise AttackError(f"unknown attack {bad[0] if bad else attack_name!r}; choose one of {', '.join(ALL_ATTACKS)} "
                          f"or all (a comma-separated list), or on a run with provenance {' or '.join(PROVENANCE_ATTACKS)}")
    prov = [n for n in names if n in PROVENANCE_ATTACKS]
    if prov:  # they read the delivered model and the ledger, not a trainer's views
        view_opts = [k for k, v in overrides.items() if v is not None and k != "seed"]
        if view_opts:
            raise AttackError(f"--{view_opts[0].replace('_', '-')} does not apply to {', '.join(prov)} (they attack "
                              "the delivered model and the ledger); drop it or run those attacks apart")
    rest = [n for n in names if n not in PROVENANCE_ATTACKS]
    suite = (run_suite(run_dir, rest or attack_name, budget=budget, overrides=overrides,
                       progress=lambda m: err.print(m, highlight=False)) if rest or not prov else
             {"budget": budget, "budget_description": DESCRIPTIONS.get(budget, budget), "attacks": {}})
    suite["attacks"].update(run_provenance_attacks(run_dir, prov, budget=budget, seed=seed,
                                                   progress=lambda m: err.print(m, highlight=False)))
    summary = {"run": str(run_dir), **summarize(suite),
               "overrides": {k: v for k, v in overrides.items() if v is not None}}
    if not as_json:
        _print_headlines(summary, suite["budget_description"])
    emit_json(summary)


@guarded
def report(
    run_dir: Path = typer.Argument(..., help="run directory (trained with --record-observations)"),
    baseline: Path = typer.Option(None, help="undefended run with the same model, data and seed "
                                             "(default: one is trained into OUT/baseline)"),
    out_dir: Path = typer.Option(..., "--out", help="report directory (report.md, report.json, PNGs)"),
    baseline_model: str = typer.Option(None, "--baseline-model",
                                       help="architecture of the undefended baseline when it is not the run's "
                                            "(e.g. fmnist-cnn, the reference, beside a private model)"),
    budget: str = typer.Option("demo", help="attack budget for attacks not yet run: demo | full | sweep | smoke"),
    attack_name: str = typer.Option("all", "--attack", help="attacks to report (default all)"),
    rerun: bool = typer.Option(False, "--rerun", help="re-run attacks whose results the run already holds "
                                                                "(in RUN/attacks/)"),
    do_alone: bool = typer.Option(True, "--do-alone/--no-do-alone",
                                  help="train each one's DO alone (head + linear tail; a thick DO tail: the better of "
                                       "that and head + adapter + its own tail; no trainers) and report the "
                                       "trainers' gain (cached in RUN/do_alone.json)"),
    baseline_scale: float = typer.Option(0.25, "--baseline-scale", min=0.01, max=1.0,
                                         help="share of the budget's steps the attacks get on the undefended "
                                              "baseline, which only has to show that each beats its floor (an "
                                              "attack below its floor there before converging runs again at the "
                                              "whole budget); 1: the run's budget on both"),
    as_json: bool = typer.Option(False, "--json", help="only the JSON object on stdout"),
) -> None:
    """Attack a run and its undefended baseline, and write report.md, report.json and plots."""
    from clicooper.report import make_report  # lazy: torch

    rep = make_report(run_dir, out_dir, baseline=baseline, budget=budget, attacks=attack_name, rerun=rerun,
                      progress=lambda m: err.print(m, highlight=False), baseline_model=baseline_model,
                      do_alone=do_alone, baseline_scale=baseline_scale)
    if not as_json:
        err.print(f"wrote {out_dir / 'report.md'}", highlight=False)
    emit_json({"report": str(out_dir / "report.md"), "json": str(out_dir / "report.json"),
               "baseline": rep["baseline"]["run"], "budget": rep["budget"], "summary": rep.get("summary"),
               "figures": rep["figures"],
               "informative": {k: v["informative"] for k, v in rep["rows_by_key"].items()}})
