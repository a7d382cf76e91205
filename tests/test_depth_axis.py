"""The depth-axis sweep's definition (experiments/research/depth_axis.py), without training: its points,
σ at ρ = 1 from each variant's cut, the refusal of unknown points, and one task's wiring (the recipe, the
budget and the rows it writes) with the trainer and report replaced by a recorder."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from experiments.research import depth_axis


def test_mechanisms_follow_the_residual_frontier() -> None:
    none, noise, nopeek = (depth_axis.point("fmnist-resnet20-h1", m) for m in ("none", "noise", "nopeek"))
    assert none["setting"].defense == "none" and none["sigma"] == 0.0 and none["nopeek"] == 0.0
    # ρ = σ·√d = 1 at clip norm 1 on the 16×28×28 cut
    assert noise["setting"].defense == "clicooper" and noise["sigma"] == pytest.approx(1 / math.sqrt(16 * 28 * 28))
    assert nopeek["setting"].nopeek == 1.0 and nopeek["sigma"] == noise["sigma"]
    assert noise["do_flop_share"] == pytest.approx(0.1190, abs=5e-5) and noise["share_fits"]


def test_default_grid_is_the_variants_within_the_share() -> None:
    pairs = depth_axis.grid()
    fitting = ["fmnist-resnet20", "fmnist-resnet20-tmlp", "fmnist-resnet20-tblock", "fmnist-resnet20-h1",
               "fmnist-resnet20-h1-tmlp"]
    assert pairs == [(v, m) for v in fitting for m in ("none", "noise", "nopeek", "labels", "labels8")]


def test_label_mechanisms_are_the_secret_mapping_alone() -> None:
    from experiments.research.frontier import Budget, run_config

    two, eight = (depth_axis.point("fmnist-resnet20-tblock", m) for m in ("labels", "labels8"))
    for p in (two, eight):
        assert p["setting"].defense == "labels" and p["sigma"] == 0.0 and p["nopeek"] == 0.0
        assert "dp" not in run_config(p["setting"], Budget())  # no activation noise
    assert two["expansion"] is None and two["setting"].expansion is None  # labels.expansion's default, m = 2
    assert eight["setting"].expansion == 8 and run_config(eight["setting"], Budget())["labels"] == {"expansion": 8}
    assert eight["name"] == "fmnist-resnet20-tblock-labels8" and eight["setting"].tag.endswith("_m8")
    assert depth_axis.grid(points_arg="fmnist-resnet20-h2:noise") == [("fmnist-resnet20-h2", "noise")]


@pytest.mark.parametrize("kw", [{"points_arg": "fmnist-resnet20-h9:none"}, {"points_arg": "fmnist-resnet20-h1"},
                                {"variants_arg": "fmnist-resnet20", "mechanisms_arg": "dp"}])
def test_unknown_points_are_refused(kw: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="unknown variant"):
        depth_axis.grid(**kw)


def test_cli_refuses_an_unknown_point_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        depth_axis.main(["--points", "fmnist-resnet20-h9:none"])
    assert e.value.code == 2
    assert "unknown variant" in capsys.readouterr().err


def test_task_trains_with_the_recipe_and_writes_its_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_one_seed(setting: Any, seed: int, runs: Path, **kw: Any) -> dict[str, Any]:
        seen.update(kw, setting=setting, seed=seed)
        return {"seed": seed, "test_acc": 0.5, "do_alone_acc": 0.4, "rows": {}}

    monkeypatch.setattr(depth_axis, "one_seed", fake_one_seed)
    p = depth_axis.point("fmnist-resnet20-tmlp", "noise")
    doc = depth_axis.task({"point": p, "seed": 3, "runs": str(tmp_path / "runs"), "results": str(tmp_path / "res"),
                           "budget": "smoke", "attacks": "clustering", "known_counts": (100,), "known_ks": (100,),
                           "train": 2000, "epochs": 1})
    assert seen["config_extra"] == {"lr_schedule": "cosine", "data": {"flip": True}}
    assert (seen["train_rows"], seen["epochs"], seen["budget"]) == (2000, 1, "smoke")
    assert seen["baseline_model"] == "fmnist-resnet20" and seen["setting"].model == "fmnist-resnet20-tmlp"
    stored = json.loads((tmp_path / "res" / "rows" / "fmnist-resnet20-tmlp-noise_s3.json").read_text())
    assert stored["point"]["rho"] == 1.0 and stored["row"]["test_acc"] == 0.5 and stored == json.loads(json.dumps(doc))


def test_one_seed_trains_the_given_rows_epochs_and_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """converged_point.one_seed's overrides reach the run's config (its defaults stay the sweep's 15,000 × 3)."""
    from experiments.research import converged_point

    got: list[dict[str, Any]] = []

    class Stop(Exception):
        pass

    def fake_train(cfg: dict[str, Any], out: Path) -> None:
        got.append(cfg)
        raise Stop

    monkeypatch.setattr(converged_point, "train", fake_train)
    p = depth_axis.point("fmnist-resnet20-h1", "nopeek")
    for kw in ({"train_rows": 2000, "epochs": 1, "config_extra": depth_axis.RECIPE}, {}):
        with pytest.raises(Stop):
            converged_point.one_seed(p["setting"], 0, tmp_path / str(len(got)), budget="smoke",
                                     baseline_model="fmnist-resnet20", attacks="clustering", **kw)
    cfg, default = got
    assert (cfg["train_range"], cfg["epochs"], cfg["lr_schedule"], cfg["data"]) == ((0, 2000), 1, "cosine", {"flip": True})
    assert cfg["nopeek"] == 1.0 and cfg["dp"]["sigma"] == pytest.approx(1 / 112) and cfg["model"] == "fmnist-resnet20-h1"
    assert (default["train_range"], default["epochs"]) == ((0, 15000), 3) and "lr_schedule" not in default
