"""Named attack budgets: the settings ``clicooper attack --budget`` and ``clicooper report`` use.

``demo`` is the budget at which every trained attack converged on ``make demo``'s defended run (its figure
moved by < 0.01 over the last doubling of its steps; docs/research/attack-budgets.md has the measurements), with
fewer victims and levels than ``full`` and smaller decoders (width 16) at a higher learning rate where that
was as strong. ``full`` has every level and 500 victims at one doubling beyond the demo's steps, and FORA and SDAR
at the reference code's size, learning rates and iteration counts (hours on a CPU). ``sweep`` is
the frontier sweeps' short budget (the demo budget until session 9). Each result file records the budget and
the settings used.
"""

from __future__ import annotations

import copy
from typing import Any

from clicooper.attacks.base import get, plugin_names
from clicooper.attacks.runner import run_attack
from clicooper.errors import AttackError

#: Attacks run by ``--attack all``, cheapest first.
ALL_ATTACKS: tuple[str, ...] = ("gradient-leak", "clustering", "paper-metrics", "completion", "extraction", "fora",
                                "sdar", "inversion")
#: The smoke budget's bound on every row count: rows clustered or fitted, held-out rows scored.
SMOKE_ROWS = 300
#: The smoke budget's bound on auxiliary images (the first of the aux range, by default the first half of the
#: test split): the decoders' held-out tenth of them was scored every few steps, most of inversion's smoke cost.
SMOKE_AUX_ROWS = 1000
#: Attacks whose ``victims`` option is also their config's (the reconstruction attacks).
_VICTIM_ATTACKS = ("inversion", "fora", "sdar")

#: The frontier sweeps' budget (results/frontier-*), and the demo's until session 9: short decoders.
_SWEEP: dict[str, dict[str, Any]] = {
    "gradient-leak": {"epochs": "all", "config": {"n_init": 3, "max_rows": 2000}},
    "clustering": {"config": {"n_init": 2, "max_rows": 2000, "clusterers": ("kmeans", "cosine-kmeans")}},
    "inversion": {"victims": 200,
                  "config": {"modes": ("white-box", "known-plaintext", "unsplit"), "victims": 200, "steps": 200,
                             "refine_steps": 60, "unsplit_rounds": 10, "unsplit_inner": 5, "known_counts": (1000,)}},
    "extraction": {"known_k": 10, "config": {"ks": (0, 10), "steps": 200, "queries": 2000}},
    "paper-metrics": {"config": {"steps": 300, "queries": 2000, "max_rows": 2000}},
    "completion": {"known_k": 100, "config": {"ks": (1, 10, 100), "steps": 300, "max_rows": 2000}},
    "fora": {"victims": 200, "config": {"victims": 200, "steps": 1200}},
    "sdar": {"victims": 200, "config": {"victims": 200, "steps": 1200}},
}
#: The demo's config changes over the sweep's: the steps at which each attack converged on ``make demo``'s
#: defended run (docs/research/attack-budgets.md), with the smaller, faster inversion decoder.
_DEMO_CHANGES: dict[str, dict[str, Any]] = {
    "inversion": {"steps": 3200, "width": 16, "lr": 3e-3, "refine_steps": 120, "unsplit_rounds": 80},
    "extraction": {"steps": 1600, "holdout": 0.1}, "paper-metrics": {"steps": 2400}, "fora": {"steps": 2400}, "sdar": {"steps": 2400},
}


def _with_config(base: dict[str, dict[str, Any]], changes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``base`` with each attack's config updated by its ``changes`` entry."""
    return {a: {**kw, "config": {**kw.get("config", {}), **changes[a]}} if a in changes else kw
            for a, kw in base.items()}


#: Per budget and attack: keyword arguments of ``run_attack`` (``victims``, ``epochs``, ``known_k``,
#: ``config``). Missing keys take ``run_attack``'s defaults.
BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "demo": _with_config(_SWEEP, _DEMO_CHANGES),
    "sweep": _SWEEP,
    # Every cost bounded, not only the trained steps: the rows clustered or scored (max_rows), k-means
    # restarts (n_init), and the held-out rows each surrogate is scored on at every reading (test_rows:
    # scoring 5,000 Fashion-MNIST rows three times per fit was most of a 346 s smoke report).
    "smoke": {
        "gradient-leak": {"epochs": "all", "known_k": 1, "test_rows": SMOKE_ROWS,
                          "config": {"n_init": 1, "known_ks": (1,), "max_rows": SMOKE_ROWS}},
        "clustering": {"epochs": "all", "known_k": 1, "test_rows": SMOKE_ROWS,
                       "config": {"n_init": 1, "max_rows": SMOKE_ROWS, "clusterers": ("kmeans",), "known_ks": (1,),
                                  "pca_dims": 16, "euclid_dims": 16, "exact_svd_max": 0}},
        "inversion": {"victims": 16, "known_k": 2, "test_rows": SMOKE_ROWS, "aux_rows": SMOKE_AUX_ROWS,
                      "config": {"modes": ("white-box", "known-plaintext", "unsplit"), "victims": 16, "steps": 20, "width": 8,
                                 "refine_steps": 3, "unsplit_rounds": 2,
                                 "unsplit_inner": 2, "known_counts": (20,)}},
        "extraction": {"known_k": 1, "test_rows": SMOKE_ROWS, "aux_rows": SMOKE_AUX_ROWS,
                       "config": {"ks": (0, 1), "steps": 10, "queries": 100, "n_init": 1}},
        "paper-metrics": {"known_k": 1, "test_rows": SMOKE_ROWS, "aux_rows": SMOKE_AUX_ROWS,
                          "config": {"steps": 10, "queries": 100, "named_k": 1, "max_rows": SMOKE_ROWS, "n_init": 1}},
        "completion": {"known_k": 1, "test_rows": SMOKE_ROWS, "config": {"ks": (1,), "steps": 10, "max_rows": SMOKE_ROWS}},
        "fora": {"victims": 16, "test_rows": SMOKE_ROWS, "aux_rows": SMOKE_AUX_ROWS,
                 "config": {"victims": 16, "steps": 8, "width": 8}},
        "sdar": {"victims": 16, "test_rows": SMOKE_ROWS, "aux_rows": SMOKE_AUX_ROWS,
                 "config": {"victims": 16, "steps": 8, "width": 8}},
    },
    "full": {  # every level and 500 victims, one doubling beyond the demo's steps
        "gradient-leak": {"epochs": "all"},
        "clustering": {"epochs": "all"},
        "inversion": {"config": {"steps": 6400, "width": 16, "lr": 3e-3, "refine_steps": 240,
                                 "unsplit_rounds": 160}},
        "extraction": {"config": {"steps": 3200, "holdout": 0.1}},
        "paper-metrics": {"config": {"steps": 4800}},
        "completion": {"config": {"steps": 600}},
        # FORA and SDAR at the reference code's networks, rates and iterations (X1aoyangXu/FORA run.sh: lr 1e-4,
        # 40,000 iterations, batch 64; zhxchd/SDAR_SplitNN run_sdar.py: batch 128, 20,000 iterations on CIFAR)
        "fora": {"config": {"arch": "reference", "lr": 1e-4, "steps": 40000}},
        "sdar": {"config": {"arch": "reference", "batch": 128, "steps": 20000}},
    },
}

DESCRIPTIONS = {
    "demo": "demo budget: the recorded subset, gradient-leak on every recorded epoch; on the last epoch: "
            "clustering (k-means, cosine k-means, 2 restarts), inversion on 200 victims (white-box decoder of 3,200 "
            "minibatches, width 16 at lr 3·10⁻³, + 120 rMLE steps; known-plaintext 1,000 pairs; UnSplit 80×5 "
            "rounds; no shadow head), FORA and SDAR of 2,400 steps, extraction k ∈ {0, 10} (1,600 steps) and "
            "query with 2,000 queries, the paper's surrogate of 2,400 steps, completion of 300 steps: the "
            "budgets at which each attack converged on the demo's defended run (docs/research/attack-budgets.md)",
    "sweep": "sweep budget (the frontier sweeps, and the demo budget until session 9): the recorded subset; "
             "inversion on 200 victims (white-box decoder of 200 minibatches + 60 rMLE steps, known-plaintext "
             "1,000 pairs, UnSplit 10×5 rounds), FORA and SDAR of 1,200 steps, extraction and completion of "
             "200 / 300 steps; most decoders have not converged at it, and the sweeps mark those figures ≥",
    "smoke": "smoke budget: seconds, for tests only (tiny decoders and step counts, at most 300 rows clustered, "
             "fitted or scored, 1,000 auxiliary images, no shadow heads; figures are not converged and not meaningful)",
    "full": "full budget: every level the library has (500 victims, known-plaintext 100 and 1,000 pairs, shadow "
            "heads, extraction k ∈ {0, 1, 10, 100}, 5,000 queries) at one doubling beyond the demo's steps "
            "(decoders of 6,400 minibatches); FORA and SDAR at the reference code's networks and learning rates, "
            "FORA 40,000 iterations at lr 10⁻⁴, SDAR 20,000 at batch 128 (hours on a CPU); clustering/gradient-leak "
            "on every recorded epoch, the others on the last",
}


#: Config keys that count an attack's trained steps or rounds; :func:`scaled` scales them together.
STEP_KEYS: tuple[str, ...] = ("steps", "known_steps", "refine_steps", "unsplit_rounds")
#: The share of the run's steps ``clicooper report`` gives the attacks on the undefended baseline by default.
#: The baseline only has to show that each attack beats its floor there (docs/design/metrics.md#informative-figures); the defence is judged
#: on the run's figures at the whole budget. A baseline figure that has not converged is a lower bound, and
#: one that is below its floor before converging is run again at the whole budget (``report.rows``).
BASELINE_SCALE = 0.25


def scaled(settings: dict[str, Any], scale: float) -> dict[str, Any]:
    """``settings`` (``run_attack`` keywords) with every :data:`STEP_KEYS` value of its config times ``scale``
    (at least 4, or the value itself when smaller, so that ¼ of it is still a step). Keys the budget leaves to
    the attack's defaults are not scaled."""
    if not (0 < scale <= 1):
        raise AttackError(f"a budget scale must be in (0, 1], got {scale}")
    out = copy.deepcopy(settings)
    cfg = out.get("config") or {}
    for k in STEP_KEYS:
        if isinstance(cfg.get(k), int) and cfg[k] > 0 and scale != 1:
            cfg[k] = max(min(cfg[k], 4), round(cfg[k] * scale))
    return out


def budget_names() -> list[str]:
    """Known budget names."""
    return sorted(BUDGETS)


def attack_names() -> list[str]:
    """Every attack ``--attack all`` runs: the built-ins (cheapest first), then installed packages' ones."""
    return [*ALL_ATTACKS, *(n for n in plugin_names() if n not in ALL_ATTACKS)]


def settings_for(budget: str, attack: str) -> dict[str, Any]:
    """A fresh copy of the ``run_attack`` keyword arguments of ``attack`` under ``budget`` (an installed
    package's attack: its class's ``budgets[budget]``, else its own defaults)."""
    if budget not in BUDGETS:
        raise AttackError(f"unknown budget {budget!r}; choose one of {', '.join(budget_names())}")
    if attack in plugin_names():
        return copy.deepcopy(dict(getattr(get(attack), "budgets", {}).get(budget, {})))
    if attack not in BUDGETS[budget]:
        raise AttackError(f"unknown attack {attack!r}; choose one of {', '.join(attack_names())} or all")
    return copy.deepcopy(BUDGETS[budget][attack])


def parse_attacks(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"all"``, one name, a comma-separated list or a sequence → attack names in run order."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    known = attack_names()
    if not items:
        raise AttackError("no attack given; choose one of " + ", ".join(known) + " or all")
    if "all" in items:
        return known
    bad = [s for s in items if s not in known]
    if bad:
        raise AttackError(f"unknown attack {bad[0]!r}; choose one of {', '.join(known)} or all")
    return [a for a in known if a in items]


def run_suite(run_dir: Any, attacks: str | list[str] | tuple[str, ...] = "all", *, budget: str = "demo",
              overrides: dict[str, Any] | None = None, progress: Any = None, scale: float = 1.0) -> dict[str, Any]:
    """Run several attacks on ``run_dir`` with a named budget; ``overrides`` (non-None values of
    ``run_attack`` keywords: ``knowledge``, ``party``, ``aux_range``, ``aux_source``, ``victims``,
    ``epochs``, ``known_k``, ``seed``) win over the budget. Each result gets ``settings["budget"]``, and
    ``settings["budget_scale"]`` when ``scale`` < 1 (:func:`scaled`: that share of the budget's steps).

    Returns ``{"budget": …, "budget_description": …, "attacks": {name: result dict}}``.
    """
    names = parse_attacks(attacks)
    over = {k: v for k, v in (overrides or {}).items() if v is not None}
    out: dict[str, Any] = {"budget": budget, "budget_description": DESCRIPTIONS.get(budget, budget), "attacks": {}}
    for name in names:
        whole = settings_for(budget, name)
        kw = scaled(whole, scale)
        kw.update(over)
        if "victims" in over and name in _VICTIM_ATTACKS:
            kw.setdefault("config", {})["victims"] = over["victims"]
        note = {"budget": budget, "budget_description": DESCRIPTIONS.get(budget, budget)}
        if scale != 1:
            note["budget_scale"] = scale
        if progress is not None:
            share = "" if kw.get("config") == whole.get("config") else f" × {scale:g} of its steps"
            progress(f"attack {name} ({budget} budget{share}) …")
        res = run_attack(run_dir, name, annotate=note, **kw)
        out["attacks"][name] = res
    return out

