"""``clicooper report``: every attack figure of a run beside the same attack on the undefended baseline
(DESIGN §7), in ``report.md`` + ``report.json`` + PNG plots.

A figure counts only if the same attack beats its floor on the undefended baseline
(:func:`clicooper.attacks.informative`); otherwise it is flagged *not informative*. When no baseline is
given, one is trained with the run's own config and ``defense = "none"`` (observations recorded) into
``REPORT_DIR/baseline`` and attacked with the same budget.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clicooper import rundir
from clicooper.attacks import informative
from clicooper.attacks.budgets import DESCRIPTIONS, parse_attacks, run_suite
from clicooper.errors import ConfigError, RunDirError

#: Config fields that must match between a run and its baseline (DESIGN §7: same data and seed). The model
#: may differ only on request (``baseline_model``: e.g. a private architecture against the undefended
#: reference ``fmnist-cnn``, issue 5); the report then says so in its header.
MUST_MATCH = ("dataset", "seed")
#: Fields that should match; a difference is reported as a warning.
SHOULD_MATCH = ("trainers", "topology", "epochs", "train_range", "observe", "observe_count", "batch_size", "lr")
#: Settings of an attack result compared between run and baseline (a difference is a warning).
SETTINGS_COMPARED = ("knowledge", "parties", "epochs", "victims", "known_k", "aux", "seed", "config", "budget")

Progress = Callable[[str], None]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{path} not found; is {path.parent} a complete run directory?") from None
    except (OSError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path} is unreadable ({e}); the run directory is corrupt") from e


def run_summary(run_dir: Path) -> dict[str, Any]:
    """Header facts of a run: config, accuracy, DO FLOP share, ε reports (each with its 'covers')."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} not found")
    cfg = _read_json(run_dir / "config.json")
    plan = _read_json(run_dir / "plan.json")
    metrics = _read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").is_file() else {}
    epochs = metrics.get("epochs") or []
    acc = metrics.get("final_test_acc", epochs[-1].get("test_acc") if epochs else None)
    privacy = _read_json(run_dir / "privacy.json") if (run_dir / "privacy.json").is_file() else None
    eps = []
    for r in (privacy or {}).get("reports", []):
        eps.append({"epsilon": r.get("epsilon"), "delta": r.get("delta"), "covers": r.get("covers"),
                    "released": r.get("released"), "accountant": r.get("accountant")})
    return {
        "run": str(run_dir), "dataset": cfg.get("dataset"), "model": cfg.get("model"),
        "trainers": cfg.get("trainers"), "topology": cfg.get("topology"), "epochs": cfg.get("epochs"),
        "seed": cfg.get("seed"), "defense": cfg.get("defense"), "train_range": cfg.get("train_range"),
        "test_acc": acc, "acc_per_epoch": {int(m["epoch"]): m.get("test_acc") for m in epochs if "epoch" in m},
        "do_flop_share": plan.get("do_flop_share"), "epsilon": eps,
        "privacy_note": (privacy or {}).get("note"), "config": cfg,
    }


def train_baseline(run_dir: Path, out: Path, progress: Progress | None = None, *, model: str | None = None) -> Path:
    """Train the undefended counterpart of ``run_dir`` (same config, ``defense="none"``, observations
    recorded; ``model`` replaces the run's model when given) into ``out``; reuse ``out`` if it already
    holds that finished run."""
    from clicooper.training.loop import train

    cfg = _read_json(Path(run_dir) / "config.json")
    want = {**cfg, "defense": "none", "record_observations": True, "model": model or cfg.get("model")}
    if "preset" in want:
        want["preset"] = None  # a preset would bring its own model and defense back
    if (out / "metrics.json").is_file() and (out / "config.json").is_file():
        have = _read_json(out / "config.json")
        if all(have.get(k) == want.get(k) for k in (*MUST_MATCH, *SHOULD_MATCH, "model", "defense")):
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
    train(want, out=out)
    return out


def _check_comparable(run: dict[str, Any], base: dict[str, Any], baseline_model: str | None = None) -> list[str]:
    bad = [k for k in MUST_MATCH if run["config"].get(k) != base["config"].get(k)]
    want_model = baseline_model or run["config"].get("model")
    if base["config"].get("model") != want_model:
        bad.append("model")
    if bad:
        raise ConfigError(
            "the baseline must be trained with the same data and seed and the same model (or the one given "
            "as the baseline model); they differ in "
            + ", ".join(f"{k} ({run['config'].get(k)!r} vs {base['config'].get(k)!r})" for k in bad)
            + " — retrain the baseline or omit --baseline to train one")
    if base["config"].get("defense", "none") != "none":
        raise ConfigError(f"the baseline {base['run']} has defense {base['config'].get('defense')!r}; "
                          "it must be undefended (defense none) — omit --baseline to train one")
    return [f"run and baseline differ in {k}: {run['config'].get(k)!r} vs {base['config'].get(k)!r}"
            for k in SHOULD_MATCH if run["config"].get(k) != base["config"].get(k)]


def do_alone_for(run_dir: Path, progress: Progress | None = None) -> dict[str, Any]:
    """DO-alone accuracy for a run's configuration (:mod:`clicooper.training.do_alone`: its head + a linear
    tail, same rows, epochs, seed, batch size and learning rate, no trainers), cached in
    ``RUN/do_alone.json`` together with the settings it was computed for."""
    from clicooper.data import load_dataset
    from clicooper.training.do_alone import do_alone_accuracy

    cfg = _read_json(Path(run_dir) / "config.json")
    rng = cfg.get("train_range")
    key = {"model": cfg.get("model"), "dataset": cfg.get("dataset"), "train_range": list(rng) if rng else None,
           "epochs": cfg.get("epochs"), "seed": cfg.get("seed"), "trainers": cfg.get("trainers"),
           "batch_size": cfg.get("batch_size") or 128, "lr": cfg.get("lr", 1e-3)}
    path = Path(run_dir) / "do_alone.json"
    if path.is_file():
        try:
            have = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            have = {}
        if have.get("settings") == key and isinstance(have.get("do_alone_acc"), float):
            return have
    if progress:
        progress(f"{run_dir}: training the DO alone (head + linear tail, no trainers) for the trainers' gain …")
    t0 = time.time()
    acc = do_alone_accuracy(key["model"], load_dataset(key["dataset"]), train_range=tuple(rng) if rng else None,
                            epochs=key["epochs"], seed=key["seed"], trainers=key["trainers"],
                            batch_size=key["batch_size"], lr=key["lr"])
    out = {"settings": key, "do_alone_acc": acc, "seconds": round(time.time() - t0, 1)}
    rundir.write_json(path, out)  # atomic: an interrupted report leaves no half-written file
    return out


def _load_or_run(run_dir: Path, name: str, budget: str, rerun: bool, progress: Progress | None) -> dict[str, Any]:
    path = run_dir / "attacks" / f"{name}.json"
    if path.is_file() and not rerun:
        res = _read_json(path)
        if res.get("settings", {}).get("budget", budget) == budget:
            if progress:
                progress(f"reusing {path}")
            return res
    if progress:
        progress(f"{run_dir}:")
    return run_suite(run_dir, [name], budget=budget, progress=progress)["attacks"][name]


def _level_rows(name: str, res: dict[str, Any], base: dict[str, Any] | None) -> list[dict[str, Any]]:
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
            if "best_method" in m:
                row["best_method"] = m["best_method"]
            if "relative" in m:
                row["relative"] = m["relative"]
                row["baseline_relative"] = None if b is None else b.get("metrics", {}).get("relative")
            rows.append(row)
    return rows


def _per_epoch(name: str, res: dict[str, Any], base: dict[str, Any] | None,
               flags: dict[str, bool]) -> list[dict[str, Any]]:
    series: dict[str, dict[str, Any]] = {}
    for which, data in (("run", res), ("base", base or {})):
        for r in data.get("results", []):
            for lv, v in r.get("levels", {}).items():
                key = f"{name}/{r['party']}/{lv}"
                s = series.setdefault(key, {"attack": name, "party": r["party"], "level": lv, "run": {},
                                            "base": {}, "floor": {}, "informative": flags.get(key, False)})
                if v.get("score") is not None:
                    s[which][int(r["epoch"])] = v["score"]
                if which == "run" and v.get("floor") is not None:
                    s["floor"][int(r["epoch"])] = v["floor"]
    return list(series.values())


def _settings_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    sa, sb = a.get("settings", {}), b.get("settings", {})
    return [k for k in SETTINGS_COMPARED if json.dumps(sa.get(k), sort_keys=True) != json.dumps(sb.get(k), sort_keys=True)]


def _fmt(v: Any, nd: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def make_report(run_dir: str | Path, out_dir: str | Path, *, baseline: str | Path | None = None,
                budget: str = "demo", attacks: str | list[str] = "all", rerun: bool = False,
                progress: Progress | None = None, baseline_model: str | None = None,
                do_alone: bool = True) -> dict[str, Any]:
    """Attack ``run_dir`` and its undefended baseline (trained if not given) and write the report.

    ``do_alone``: also train each one's DO alone (head + linear tail, no trainers; cached in
    ``RUN/do_alone.json``) and report the trainers' gain beside accuracy and the DO's FLOP share.

    ``baseline_model``: the baseline's architecture when it is not the run's (e.g. the undefended reference
    ``fmnist-cnn`` beside a private model); the report's header shows both models.

    Returns the ``report.json`` dict (plus ``rows_by_key``).
    """
    from clicooper.report import plots

    t0 = time.time()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if budget not in DESCRIPTIONS:
        raise ConfigError(f"unknown budget {budget!r}; choose one of {', '.join(sorted(DESCRIPTIONS))}")
    names = parse_attacks(attacks)
    run = run_summary(run_dir)
    if not (run_dir / "observations" / "index.json").is_file():
        from clicooper.errors import AttackError

        raise AttackError(f"{run_dir} has no observations: the run was trained without recording them; "
                          "retrain with --record-observations")
    out_dir.mkdir(parents=True, exist_ok=True)
    if baseline is None:
        base_dir = train_baseline(run_dir, out_dir / "baseline", progress, model=baseline_model)
        trained_baseline = True
    else:
        base_dir, trained_baseline = Path(baseline), False
        if base_dir.resolve() == run_dir.resolve():
            raise ConfigError("--baseline is the run itself; give the undefended run trained with the same "
                              "model, data and seed")
    base = run_summary(base_dir)
    warnings = _check_comparable(run, base, baseline_model)
    if do_alone:
        for summary, d in ((run, run_dir), (base, base_dir)):
            summary["do_alone_acc"] = do_alone_for(d, progress)["do_alone_acc"]
            summary["trainer_gain"] = (summary["test_acc"] - summary["do_alone_acc"]
                                       if summary["test_acc"] is not None else None)

    results: dict[str, dict[str, Any]] = {}
    base_results: dict[str, dict[str, Any]] = {}
    for name in names:
        results[name] = _load_or_run(run_dir, name, budget, rerun, progress)
        b_budget = results[name].get("settings", {}).get("budget", budget)
        base_results[name] = _load_or_run(base_dir, name, b_budget, rerun, progress)
        diff = _settings_diff(results[name], base_results[name])
        if diff:
            warnings.append(f"{name}: run and baseline attacked with different settings ({', '.join(diff)})")

    rows: list[dict[str, Any]] = []
    for name in names:
        rows += _level_rows(name, results[name], base_results[name])
    flags = {r["key"]: r["informative"] for r in rows}
    run_label = f"defense {run['defense']}"

    figures: list[dict[str, Any]] = []
    # reconstruction grids
    if "inversion" in names:
        figures += _grids(run_dir, base_dir, out_dir, results["inversion"], base_results["inversion"], rows,
                          run_label)
    acc_png = out_dir / "accuracy_vs_attack.png"
    plots.accuracy_vs_metric(acc_png, rows, run["test_acc"], base["test_acc"], run_label)
    if acc_png.is_file():
        figures.append({"file": acc_png.name, "kind": "accuracy vs attack metric",
                        "not_informative": sorted(r["key"] for r in rows if not r["informative"])})
    series = []
    for name in names:
        series += _per_epoch(name, results[name], base_results[name], flags)
    ep_png = out_dir / "attack_per_epoch.png"
    if plots.metric_per_epoch(ep_png, series, run_label):
        figures.append({"file": ep_png.name, "kind": "attack metric per epoch",
                        "not_informative": sorted(s_key for s in series
                                                  if not s["informative"] and (s_key := f"{s['attack']}/{s['party']}/{s['level']}"))})

    budgets_used = sorted({r.get("settings", {}).get("budget", "unrecorded") for r in results.values()})
    rep = {
        "version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run": {k: v for k, v in run.items() if k != "config"},
        "baseline": {**{k: v for k, v in base.items() if k != "config"}, "trained_by_report": trained_baseline},
        "budget": budgets_used[0] if len(budgets_used) == 1 else budgets_used,
        "budget_description": [DESCRIPTIONS.get(b, b) for b in budgets_used],
        "attacks": {n: {"settings": results[n].get("settings"), "seconds": results[n].get("seconds"),
                        "baseline_seconds": base_results[n].get("seconds")} for n in names},
        "rows": rows,
        "figures": figures,
        "warnings": warnings,
        "seconds": round(time.time() - t0, 1),
    }
    (out_dir / "report.json").write_text(json.dumps(rep, indent=2, default=str))
    (out_dir / "report.md").write_text(render_markdown(rep))
    return {**rep, "rows_by_key": {r["key"]: r for r in rows}}


def _grids(run_dir: Path, base_dir: Path, out_dir: Path, res: dict[str, Any], bres: dict[str, Any],
           rows: list[dict[str, Any]], run_label: str) -> list[dict[str, Any]]:
    from safetensors.torch import load_file

    from clicooper.report import plots

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


def render_markdown(rep: dict[str, Any]) -> str:
    """The human report."""
    run, base = rep["run"], rep["baseline"]
    L: list[str] = []
    L.append(f"# CliCooper attack report: `{run['run']}`\n")
    L.append(f"{run['dataset']} · {run['model']} · K = {run['trainers']} ({run['topology']}) · "
             f"{run['epochs']} epochs · seed {run['seed']} · train range {run['train_range']}\n")
    L.append("| | run | undefended baseline |\n|---|---|---|")
    L.append(f"| run directory | `{run['run']}` | `{base['run']}`"
             + (" (trained by this report)" if base.get("trained_by_report") else "") + " |")
    L.append(f"| model | {run.get('model')} | {base.get('model', run.get('model'))} |")
    L.append(f"| defense | {run['defense']} | {base['defense']} |")
    L.append(f"| test accuracy | {_fmt(run['test_acc'])} | {_fmt(base['test_acc'])} |")
    L.append(f"| DO FLOP share (plan.json `do_flop_share`) | {_fmt(run['do_flop_share'], 4)} | "
             f"{_fmt(base['do_flop_share'], 4)} |")
    if run.get("do_alone_acc") is not None:
        L.append(f"| DO-alone accuracy (its head + a linear tail, no trainers) | {_fmt(run['do_alone_acc'])} | "
                 f"{_fmt(base.get('do_alone_acc'))} |")
        gain = [f"{100 * g:+.2f} pt" if g is not None else "–"
                for g in (run.get("trainer_gain"), base.get("trainer_gain"))]
        L.append(f"| trainers' gain (accuracy − DO-alone) | {gain[0]} | {gain[1]} |")
    L.append("")
    L.append("**Privacy (ε from `privacy.json`, each with what it covers):**\n")
    if run["epsilon"]:
        for e in run["epsilon"]:
            L.append(f"- ε = {_fmt(e['epsilon'])} (δ = {e['delta']}) — covers: *{e['covers']}*"
                     + (f"; released: {e['released']}" if e.get("released") else ""))
        if run.get("privacy_note"):
            L.append(f"\n> {run['privacy_note']}")
    else:
        L.append("- no ε: this run releases nothing under a DP guarantee (no privacy.json reports)")
    L.append("")
    budgets = rep["budget"] if isinstance(rep["budget"], list) else [rep["budget"]]
    L.append(f"**Attack budget:** {', '.join(budgets)} — " + "; ".join(rep["budget_description"]) + "\n")
    L.append("Every figure is shown beside the same attack on the undefended baseline (DESIGN §7). A figure "
             "is **not informative** when the attack does not beat its floor on the undefended baseline: "
             "then the defended figure says nothing about protection (the attack is too weak or mis-aligned).\n")
    if rep["warnings"]:
        L.append("**Warnings:**\n")
        L += [f"- {w}" for w in rep["warnings"]]
        L.append("")
    L.append("## Attack results (last recorded epoch)\n")
    L.append("| attack | party | level | metric | run | run floor | undefended | undefended floor | "
             "undefended beats floor | status |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in rep["rows"]:
        status = "informative" if r["informative"] else "**not informative**"
        metric = r["primary"] + (f" ({r['best_method']})" if r.get("best_method") else "")
        L.append(f"| {r['attack']} | {r['party']} | {r['level']} | {metric} | {_fmt(r['score'])} | "
                 f"{_fmt(r['floor'])} | {_fmt(r['baseline_score'])} | {_fmt(r['baseline_floor'])} | "
                 f"{_fmt(r['baseline_beats_floor'])} | {status} |")
    extra = [r for r in rep["rows"] if "class_floor" in r or "relative" in r]
    if extra:
        L.append("\nSecondary floors: inversion class floor (what the label alone gives) and query-extraction "
                 "accuracy relative to the victim:\n")
        L.append("| attack | party | level | run | run class floor / relative | undefended | "
                 "undefended class floor / relative |\n|---|---|---|---|---|---|---|")
        for r in extra:
            a = r.get("class_floor", r.get("relative"))
            b = r.get("baseline_class_floor", r.get("baseline_relative"))
            L.append(f"| {r['attack']} | {r['party']} | {r['level']} | {_fmt(r['score'])} | {_fmt(a)} | "
                     f"{_fmt(r['baseline_score'])} | {_fmt(b)} |")
    L.append("\n## Figures\n")
    for f in rep["figures"]:
        flag = (" — **not informative:** " + ", ".join(f["not_informative"])) if f["not_informative"] else ""
        L.append(f"### {f['kind']}{flag}\n\n![{f['kind']}]({f['file']})\n")
    L.append("## Attack settings\n")
    for n, a in rep["attacks"].items():
        s = a["settings"] or {}
        L.append(f"- **{n}** ({_fmt(a['seconds'], 1)} s on the run, {_fmt(a['baseline_seconds'], 1)} s on the "
                 f"baseline): budget {s.get('budget', 'unrecorded')}, knowledge {s.get('knowledge')}, parties "
                 f"{s.get('parties')}, epochs {s.get('epochs')}, victims {s.get('victims')}, known_k "
                 f"{s.get('known_k')}, aux {s.get('aux')}, seed {s.get('seed')}, config `{json.dumps(s.get('config'))}`")
    L.append(f"\nGenerated {rep['created']} in {rep['seconds']} s. Numbers are one seed; see `make reproduce` "
             "for multi-seed confidence intervals.\n")
    return "\n".join(L)
