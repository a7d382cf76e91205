"""The smoke budget takes seconds: every cost an attack has is bounded there (trained steps, rows clustered
or fitted, k-means restarts, victims, queries) and so is scoring, which ran every surrogate over the whole
held-out split at each reading (most of a 346 s smoke report on 2,000 Fashion-MNIST rows)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from clicooper.attacks.base import get
from clicooper.attacks.budgets import ALL_ATTACKS, BUDGETS, SMOKE_ROWS, settings_for

#: Config fields that scale an attack's cost; each must be set by the smoke budget (a default is a full run).
COST_FIELDS = {"steps", "refine_steps", "unsplit_rounds", "unsplit_inner", "max_rows", "n_init", "victims",
               "queries", "known_counts", "ks", "known_ks", "named_k"}


@pytest.mark.parametrize("attack", ALL_ATTACKS)
def test_smoke_sets_every_cost(attack: str) -> None:
    kw = settings_for("smoke", attack)
    cfg_cls = type(get(attack)(**kw.get("config", {})).config)
    costs = {f.name for f in dataclasses.fields(cfg_cls)} & COST_FIELDS
    missing = costs - set(kw.get("config", {}))
    assert not missing, f"{attack}: the smoke budget leaves {sorted(missing)} at their full defaults"
    assert kw.get("test_rows") == SMOKE_ROWS
    assert kw["config"].get("max_rows", 0) <= SMOKE_ROWS


def test_other_budgets_score_on_the_whole_held_out_split() -> None:
    for budget in set(BUDGETS) - {"smoke"}:
        assert all("test_rows" not in settings_for(budget, a) for a in ALL_ATTACKS), budget


def test_extraction_restarts_follow_the_config() -> None:
    assert get("extraction")(n_init=1).config.n_init == 1
    with pytest.raises(Exception, match="n_init"):
        get("extraction")(n_init=0)


def test_test_rows_caps_scoring(digits_run: Path) -> None:
    from clicooper.attacks.runner import run_attack

    res = run_attack(digits_run, "extraction", config={"ks": (0,), "steps": 4, "queries": 50, "n_init": 1,
                                                       "modes": ("query",)}, test_rows=40, write=False)
    assert res["settings"]["test_rows"] == 40
    assert all(r["views"]["test_rows"] == 40 for r in res["results"])
    full = run_attack(digits_run, "extraction", config={"ks": (0,), "steps": 4, "queries": 50, "n_init": 1,
                                                        "modes": ("query",)}, write=False)
    assert full["results"][0]["views"]["test_rows"] > 40 and "test_rows" not in full["settings"]
