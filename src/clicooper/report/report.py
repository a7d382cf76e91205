"""``clicooper report``: every attack figure of a run beside the same attack on the undefended baseline
(docs/design/metrics.md#informative-figures), in ``report.md`` + ``report.json`` + PNG plots.

A figure counts only if the same attack beats its floor on the undefended baseline
(:func:`clicooper.attacks.informative`); otherwise it is flagged *not informative*. When no baseline is
given, one is trained with the run's own config and ``defense = "none"`` (observations recorded) into
``REPORT_DIR/baseline`` and attacked with the same budget.

This module runs the report: it trains what is missing (the baseline, each DO alone), attacks both runs,
draws the figures and writes the files. Gathering is :mod:`.runs` (the two runs) and :mod:`.rows` (the
attack figures); rendering is :mod:`.markdown` and :mod:`.plots`.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from clicooper import rundir
from clicooper.attacks.budgets import BASELINE_SCALE, DESCRIPTIONS, parse_attacks
from clicooper.attacks.runner import OwnObjects
from clicooper.config import make_config
from clicooper.config.defenses import SHORTHAND_FIELDS, defense_kinds_of
from clicooper.data.augment import augmenter_for
from clicooper.data.given import is_owner_code, open_dataset
from clicooper.errors import AttackError, ConfigError, DataError, RunDirError
from clicooper.models.describe import is_own_module
from clicooper.report import plots
from clicooper.report.markdown import render_markdown
from clicooper.report.rows import (
    SETTINGS_COMPARED,
    level_rows,
    load_or_run,
    needs_whole_budget,
    not_converged,
    per_epoch,
    settings_diff,
)
from clicooper.report.runs import MUST_MATCH, SHOULD_MATCH, Progress, check_comparable, read_json, run_summary
from clicooper.report.summary import UNCONVERGED_BUDGETS, summarize
from clicooper.training import train
from clicooper.training.do_alone import LINEAR_TAIL, THICK_TAIL, do_alone_net, do_alone_result

__all__ = ["MUST_MATCH", "SETTINGS_COMPARED", "SHOULD_MATCH", "Progress", "do_alone_for", "make_report",
           "render_markdown", "run_summary", "train_baseline"]

_level_rows = level_rows  # the name tests and older callers import from here


def reference_differences(res: dict[str, Any]) -> list[dict[str, str]] | None:
    """The settings in which an attack result differs from the attack's reference code (FORA, SDAR record
    them in each epoch's ``info``), or None for an attack that records none."""
    for r in reversed(res.get("results") or []):
        got = (r.get("info") or {}).get("differences_from_reference")
        if got is not None:
            return list(got)
    return None


def train_baseline(run_dir: Path, out: Path, progress: Progress | None = None, *, model: str | None = None,
                   own: OwnObjects | None = None) -> Path:
    """Train the undefended counterpart of ``run_dir`` (same config, ``defense="none"``, observations
    recorded; ``model`` replaces the run's model when given) into ``out``; reuse ``out`` if it already
    holds that finished run. ``own``: the user's own module and data of a run that cannot rebuild them."""
    cfg = read_json(Path(run_dir) / "config.json")
    want = {k: v for k, v in cfg.items() if k not in SHORTHAND_FIELDS}
    want |= {"defenses": [], "record_observations": True, "model": model or cfg.get("model")}
    if model is not None:
        want["model_spec"] = None  # --baseline-model names a built-in, not the run's model file
    if "preset" in want:
        want["preset"] = None  # a preset would bring its own model and defense back
    if (out / "metrics.json").is_file() and (out / "config.json").is_file():
        have = read_json(out / "config.json")
        same = all(have.get(k) == want.get(k) for k in (*MUST_MATCH, *SHOULD_MATCH, "model", "model_spec"))
        if same and not defense_kinds_of(have):
            if progress:
                progress(f"reusing the undefended baseline in {out}")
            return out
        raise RunDirError(f"{out} holds another run; remove it or pass --baseline / another --out")
    if out.exists() and any(out.iterdir()):
        raise RunDirError(f"{out} exists but is not a finished baseline run; remove it and run the report again")
    if out.exists():
        out.rmdir()
    if progress:
        progress(f"training the undefended baseline (defense none, same config) into {out} …")
    own = own or OwnObjects()
    if is_owner_code(str(want.get("dataset"))) and own.data is None:  # never run from the run's config.json
        raise DataError(f"{run_dir} trained on the data owner's own Python data ({want['dataset']}); pass it again "
                        "to the report: make_report(…, own=OwnObjects(data=…))")
    mine = own.model if model is None and is_own_module(str(cfg.get("model"))) else None
    train(want, out=out, model=mine, data=own.data, test_data=own.test_data)
    return out


def _do_alone_dataset(key: dict[str, Any], cfg: dict[str, Any], own: OwnObjects, plan: dict[str, Any]) -> Any:
    """The run's dataset, for training the DO alone."""
    return open_dataset(key["dataset"], cfg.get("data"), own.data, own.test_data,
                        fingerprint_of_run=plan.get("extra", {}).get("data_fingerprint"))


def do_alone_for(run_dir: Path, progress: Progress | None = None, own: OwnObjects | None = None,
                 known: dict[str, Any] | None = None) -> dict[str, Any]:
    """DO-alone accuracy for a run's configuration (:mod:`clicooper.training.do_alone`: its head + a linear
    tail, or, when the DO's tail is more than one ``Linear``, the better of that and its head + an adapter +
    its own tail; same rows, epochs, seed, batch size and learning rate, no trainers), cached in
    ``RUN/do_alone.json`` together with the settings it was computed for, ``model`` (a one-line description
    of the DO-alone model that reached it) and, for a thick tail, ``candidates`` (each model's accuracy).
    ``known``: another run's result (this function's return value), taken instead of training when it was
    computed for the same settings: the DO alone never sees the defences, so a run and its undefended
    baseline share it."""
    cfg = read_json(Path(run_dir) / "config.json")
    rng = cfg.get("train_range")
    key = {"model": cfg.get("model"), "dataset": cfg.get("dataset"), "train_range": list(rng) if rng else None,
           "epochs": cfg.get("epochs"), "seed": cfg.get("seed"), "trainers": cfg.get("trainers"),
           "batch_size": cfg.get("batch_size") or 128, "lr": cfg.get("lr", 1e-3)}
    if cfg.get("model_spec"):  # a model file's run: its layers are part of the settings
        key["model_spec"] = cfg["model_spec"]
    run_cfg = make_config(**cfg)  # the settings below beyond the defaults are part of the key too
    if run_cfg.lr_schedule != "constant":
        key["lr_schedule"] = run_cfg.lr_schedule
    if run_cfg.weight_decay:
        key["weight_decay"] = run_cfg.weight_decay
    if run_cfg.optimizer != "adam":
        key["optimizer"], key["momentum"] = run_cfg.optimizer, run_cfg.momentum
    if run_cfg.data.crop_padding or run_cfg.data.flip:  # the DO's training augmentation applies alone too
        key["augment"] = {"crop_padding": run_cfg.data.crop_padding, "flip": run_cfg.data.flip}
    own = own or OwnObjects()
    module = own.model if is_own_module(str(key["model"])) else None
    plan = read_json(Path(run_dir) / "plan.json") if (Path(run_dir) / "plan.json").is_file() else {}
    dataset = None
    if is_own_module(str(key["model"])) and module is None:
        tail = "linear"  # nothing to build it from: training below refuses, as it always did; a cache still answers
    else:
        if not plan.get("input_shape"):
            dataset = _do_alone_dataset(key, cfg, own, plan)
        shape = plan.get("input_shape") or dataset.input_shape
        # which DO-alone model (module docstring of clicooper.training.do_alone): the kind of tail does not
        # depend on the number of classes (any count builds the same layers)
        thick = do_alone_net(key["model"], shape, 2, seed=key["seed"], trainers=key["trainers"],
                             model_spec=key.get("model_spec"), module=module).thick
        tail = THICK_TAIL if thick else "linear"
    if tail != "linear":  # a linear tail adds nothing to the key: the caches from before it stay valid
        key["tail"] = tail
    path = Path(run_dir) / "do_alone.json"
    if path.is_file():
        try:
            have = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            have = {}
        if have.get("settings") == key and isinstance(have.get("do_alone_acc"), float):
            return {**have, "run": str(run_dir)}
    if known is not None and known.get("settings") == key and isinstance(known.get("do_alone_acc"), float):
        out = {"settings": key, "do_alone_acc": known["do_alone_acc"], "seconds": 0.0,
               "model": known.get("model") or LINEAR_TAIL, "same_as": known.get("same_as") or known.get("run")}
        if known.get("candidates"):
            out["candidates"] = known["candidates"]
        rundir.write_json(path, out)
        return {**out, "run": str(run_dir)}
    t0 = time.time()
    dataset = dataset or _do_alone_dataset(key, cfg, own, plan)
    if progress:
        what = LINEAR_TAIL if tail == "linear" else f"{LINEAR_TAIL}, and head + adapter + its own tail"
        progress(f"{run_dir}: training the DO alone ({what}, no trainers) for the trainers' gain …")
    res = do_alone_result(key["model"], dataset, module=module, train_range=tuple(rng) if rng else None,
                          epochs=key["epochs"], seed=key["seed"], trainers=key["trainers"],
                          batch_size=key["batch_size"], lr=key["lr"], model_spec=key.get("model_spec"),
                          lr_at=run_cfg.lr_at,
                          augment=augmenter_for(run_cfg.data, seed=run_cfg.seed),
                          weight_decay=run_cfg.weight_decay, optimizer=run_cfg.optimizer,
                          momentum=run_cfg.momentum)
    out = {"settings": key, "do_alone_acc": res.accuracy, "model": res.description,
           "seconds": round(time.time() - t0, 1)}
    if len(res.candidates) > 1:
        out["candidates"] = res.candidates
    rundir.write_json(path, out)  # atomic: an interrupted report leaves no half-written file
    return {**out, "run": str(run_dir)}


def _baseline_dir(run_dir: Path, out_dir: Path, baseline: str | Path | None, baseline_model: str | None,
                  progress: Progress | None, own: OwnObjects | None = None) -> tuple[Path, bool]:
    """The baseline run directory, and whether this report trained it."""
    if baseline is None:
        return train_baseline(run_dir, out_dir / "baseline", progress, model=baseline_model, own=own), True
    base_dir = Path(baseline)
    if base_dir.resolve() == run_dir.resolve():
        raise ConfigError("--baseline is the run itself; give the undefended run trained with the same "
                          "model, data and seed")
    return base_dir, False


def _attack_both(names: list[str], run_dir: Path, base_dir: Path, budget: str, rerun: bool,
                 progress: Progress | None, warnings: list[str],
                 baseline_scale: float = BASELINE_SCALE, own: OwnObjects | None = None
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each attack's result on the run and on the baseline (with the run's budget, at ``baseline_scale`` of
    its steps; again at the whole budget when a figure there is below its floor before converging); settings
    that differ are added to ``warnings``."""
    results: dict[str, dict[str, Any]] = {}
    base_results: dict[str, dict[str, Any]] = {}
    for name in names:
        results[name] = load_or_run(run_dir, name, budget, rerun, progress, own=own)
        b_budget = results[name].get("settings", {}).get("budget", budget)
        base_results[name] = load_or_run(base_dir, name, b_budget, rerun, progress, scale=baseline_scale,
                                         accept=(1.0,), own=own)
        if needs_whole_budget(base_results[name]):
            if progress:
                progress(f"{name}: a baseline figure is below its floor and not converged at × {baseline_scale:g} "
                         "of the steps; running it again at the whole budget")
            base_results[name] = load_or_run(base_dir, name, b_budget, True, progress, own=own)
        diff = settings_diff(results[name], base_results[name])
        if diff:
            warnings.append(f"{name}: run and baseline attacked with different settings ({', '.join(diff)})")
    return results, base_results


def _figures(dirs: tuple[Path, Path, Path], names: list[str], results: dict[str, Any], base_results: dict[str, Any],
             rows: list[dict[str, Any]], accs: tuple[float | None, float | None], run_label: str) -> list[dict[str, Any]]:
    """Draw the PNGs into the report folder; one entry per figure drawn, with its not-informative rows.
    ``dirs`` = (run, baseline, report folder); ``accs`` = (run, baseline) test accuracy."""
    run_dir, base_dir, out_dir = dirs
    figures: list[dict[str, Any]] = []
    if "inversion" in names:  # reconstruction grids
        figures += _grids(run_dir, base_dir, out_dir, results["inversion"], base_results["inversion"], rows,
                          run_label)
    acc_png = out_dir / "accuracy_vs_attack.png"
    plots.accuracy_vs_metric(acc_png, rows, accs[0], accs[1], run_label)
    if acc_png.is_file():
        figures.append({"file": acc_png.name, "kind": "accuracy vs attack metric",
                        "not_informative": sorted(r["key"] for r in rows if not r["informative"])})
    flags = {r["key"]: r["informative"] for r in rows}
    series = []
    for name in names:
        series += per_epoch(name, results[name], base_results[name], flags)
    ep_png = out_dir / "attack_per_epoch.png"
    if plots.metric_per_epoch(ep_png, series, run_label):
        figures.append({"file": ep_png.name, "kind": "attack metric per epoch",
                        "not_informative": sorted(s_key for s in series
                                                  if not s["informative"] and (s_key := f"{s['attack']}/{s['party']}/{s['level']}"))})
    return figures


def make_report(run_dir: str | Path, out_dir: str | Path, *, baseline: str | Path | None = None,
                budget: str = "demo", attacks: str | list[str] = "all", rerun: bool = False,
                progress: Progress | None = None, baseline_model: str | None = None,
                do_alone: bool = True, baseline_scale: float = BASELINE_SCALE,
                own: OwnObjects | None = None) -> dict[str, Any]:
    """Attack ``run_dir`` and its undefended baseline (trained if not given) and write the report.

    ``own``: what a run of the user's own objects takes back (:class:`~clicooper.attacks.runner.OwnObjects`:
    the module of a run of their own module classes, the data given in Python); the baseline is trained
    with them, and the attacks rebuild the architecture from them.

    ``do_alone``: also train each one's DO alone (head + linear tail; when the DO's tail is more than one
    ``Linear``, also head + adapter + that tail, the better counting; no trainers; cached in
    ``RUN/do_alone.json``) and report the trainers' gain beside accuracy and the DO's FLOP share.

    ``baseline_model``: the baseline's architecture when it is not the run's (e.g. the undefended reference
    ``fmnist-cnn`` beside a private model); the report's header shows both models.

    ``baseline_scale``: the share of the budget's steps the attacks get on the baseline (default ¼). The
    baseline only shows that each attack beats its floor; its unconverged figures are lower bounds, and an
    attack with a figure below its floor before converging is run again there at the whole budget. 1: the
    run's budget on both.

    Returns the ``report.json`` dict (plus ``rows_by_key``).
    """
    t0 = time.time()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not (0 < baseline_scale <= 1):
        raise ConfigError(f"--baseline-scale must be in (0, 1], got {baseline_scale}: the share of the budget's "
                          "steps the attacks get on the undefended baseline")
    if budget not in DESCRIPTIONS:
        raise ConfigError(f"unknown budget {budget!r}; choose one of {', '.join(sorted(DESCRIPTIONS))}")
    names = parse_attacks(attacks)
    run = run_summary(run_dir)
    if not (run_dir / "observations" / "index.json").is_file():
        raise AttackError(f"{run_dir} has no observations: the run was trained without recording them; "
                          "retrain with --record-observations")
    out_dir.mkdir(parents=True, exist_ok=True)
    marks = {"start": time.time()}  # seconds per phase, in report.json
    base_dir, trained_baseline = _baseline_dir(run_dir, out_dir, baseline, baseline_model, progress, own)
    base = run_summary(base_dir)
    warnings = check_comparable(run, base, baseline_model)
    marks["baseline"] = time.time()
    if do_alone:
        known = None
        for summary, d in ((run, run_dir), (base, base_dir)):
            known = do_alone_for(d, progress, own, known=known)
            summary["do_alone_acc"] = known["do_alone_acc"]
            summary["do_alone_model"] = known.get("model") or LINEAR_TAIL  # caches from before: a linear tail
            summary["trainer_gain"] = (summary["test_acc"] - summary["do_alone_acc"]
                                       if summary["test_acc"] is not None else None)
    marks["do_alone"] = time.time()
    results, base_results = _attack_both(names, run_dir, base_dir, budget, rerun, progress, warnings,
                                         baseline_scale, own)
    rows: list[dict[str, Any]] = []
    for name in names:
        rows += level_rows(name, results[name], base_results[name])
    for why in (UNCONVERGED_BUDGETS[b] for b in {budget} if b in UNCONVERGED_BUDGETS):
        rows = [not_converged(r, why) for r in rows]
    marks["attacks"] = time.time()
    figures = _figures((run_dir, base_dir, out_dir), names, results, base_results, rows,
                       (run["test_acc"], base["test_acc"]), f"defense {run['defense']}")
    budgets_used = sorted({r.get("settings", {}).get("budget", "unrecorded") for r in results.values()})
    rep = {
        "version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run": {k: v for k, v in run.items() if k != "config"},
        "baseline": {**{k: v for k, v in base.items() if k != "config"}, "trained_by_report": trained_baseline},
        "budget": budgets_used[0] if len(budgets_used) == 1 else budgets_used,
        "budget_description": [DESCRIPTIONS.get(b, b) for b in budgets_used],
        "attacks": {n: {"settings": results[n].get("settings"), "seconds": results[n].get("seconds"),
                        "baseline_seconds": base_results[n].get("seconds"),
                        "baseline_scale": float(base_results[n].get("settings", {}).get("budget_scale", 1.0)),
                        "differences_from_reference": reference_differences(results[n])}
                    for n in names},
        "baseline_scale": baseline_scale,
        "rows": rows,
        "figures": figures,
        "warnings": warnings,
        "seconds": round(time.time() - t0, 1),
        "phase_seconds": {k: round(marks[k] - marks[p], 1) for p, k in itertools.pairwise(marks)}
                         | {"figures": round(time.time() - marks["attacks"], 1)},
    }
    rep["summary"] = summarize(rep)
    (out_dir / "report.json").write_text(json.dumps(rep, indent=2, default=str))
    (out_dir / "report.md").write_text(render_markdown(rep))
    return {**rep, "rows_by_key": {r["key"]: r for r in rows}}


def _grids(run_dir: Path, base_dir: Path, out_dir: Path, res: dict[str, Any], bres: dict[str, Any],
           rows: list[dict[str, Any]], run_label: str) -> list[dict[str, Any]]:
    def load(d: Path, r: dict[str, Any]) -> dict[str, Any]:
        f = r.get("artifacts")
        return load_file(str(d / f)) if f and (d / f).is_file() else {}

    ra, ba = load(run_dir, res), load(base_dir, bres)
    figs = []
    last = max((r["epoch"] for r in res.get("results", [])), default=None)
    blast = max((r["epoch"] for r in bres.get("results", [])), default=None)
    for key in sorted(ra):
        party, ep, _, level = key.split("/", 3)
        if int(ep.removeprefix("epoch_")) != last:
            continue
        bkey = f"{party}/epoch_{blast}/grid/{level}"
        row = next((r for r in rows if r["key"] == f"inversion/{party}/{level}"), None)
        if row is None:
            continue
        png = out_dir / f"reconstructions_{party}_{level}.png"
        plots.reconstruction_grid(png, level, ra[key], ba.get(bkey), run_label=run_label, run_score=row["score"],
                                  base_score=row["baseline_score"], floor=row["floor"],
                                  informative=row["informative"])
        figs.append({"file": png.name, "kind": f"reconstruction grid ({party}, {level})",
                     "not_informative": [] if row["informative"] else [row["key"]]})
    return figs
