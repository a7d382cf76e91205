"""``clicooper report``: every metric beside the undefended baseline, the not-informative flag, plots,
the trained baseline, and refusing a baseline that is not comparable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clicooper.cli import app
from clicooper.errors import ConfigError
from clicooper.report import make_report, render_markdown
from clicooper.report.report import _level_rows

runner = CliRunner()


def _level(score: float, floor: float, **metrics: float) -> dict:
    return {"primary": "ssim", "score": score, "floor": floor, "higher_is_better": True,
            "beats_floor": score > floor, "metrics": metrics}


def test_not_informative_flag_logic() -> None:
    run = {"headline": {"T1": {"white-box": _level(0.2, 0.13, class_floor=0.36),
                               "aux": _level(0.05, 0.13, class_floor=0.36),
                               "only-in-run": _level(0.9, 0.1)}}}
    base = {"headline": {"T1": {"white-box": _level(0.96, 0.13, class_floor=0.36),
                                "aux": _level(0.10, 0.13, class_floor=0.36)}}}  # baseline below its floor
    rows = {r["level"]: r for r in _level_rows("inversion", run, base)}
    assert rows["white-box"]["informative"] and rows["white-box"]["baseline_score"] == 0.96
    assert not rows["aux"]["informative"]  # the same attack does not beat its floor undefended
    assert not rows["only-in-run"]["informative"] and rows["only-in-run"]["baseline_score"] is None
    assert rows["white-box"]["class_floor"] == 0.36 and rows["white-box"]["baseline_class_floor"] == 0.36
    md = render_markdown({
        "run": {"run": "R", "dataset": "d", "model": "m", "trainers": 2, "topology": "u-shape", "epochs": 1,
                "seed": 0, "train_range": None, "defense": "clicooper", "test_acc": 0.8, "do_flop_share": 0.01,
                "epsilon": [{"epsilon": 3.0, "delta": 1e-5, "covers": "per-release, head fixed",
                             "released": "head activations"}]},
        "baseline": {"run": "B", "defense": "none", "test_acc": 0.9, "do_flop_share": 0.01},
        "budget": "demo", "budget_description": ["demo budget: …"], "warnings": [], "rows": list(rows.values()),
        "figures": [{"file": "x.png", "kind": "accuracy vs attack metric", "not_informative": ["inversion/T1/aux"]}],
        "attacks": {}, "created": "now", "seconds": 1.0})
    aux_line = next(ln for ln in md.splitlines() if "| aux |" in ln)
    assert "**not informative**" in aux_line and "0.1000" in aux_line
    wb_line = next(ln for ln in md.splitlines() if "| white-box |" in ln and "ssim" in ln)
    assert "| informative |" in wb_line and "0.2000" in wb_line and "0.9600" in wb_line
    assert "covers: *per-release, head fixed*" in md and "ε = 3.0000" in md
    assert "**not informative:** inversion/T1/aux" in md and "DO FLOP share" in md and "Attack budget:** demo" in md


@pytest.fixture(scope="module")
def defended_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clicooper.training import train

    out = tmp_path_factory.mktemp("rep") / "labels"
    train({"dataset": "digits", "model": "digits-mlp", "trainers": 2, "epochs": 1, "record_observations": True,
           "defense": "labels", "observe_count": 600}, out=out)
    return out


def test_report_with_baseline(defended_run: Path, digits_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(defended_run, tmp_path / "run"))
    base = Path(shutil.copytree(digits_run, tmp_path / "base"))
    out = tmp_path / "report"
    r = runner.invoke(app, ["report", str(run), "--baseline", str(base), "--out", str(out), "--budget", "smoke",
                            "--attack", "gradient-leak,clustering", "--json"])
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["budget"] == "smoke" and summary["baseline"] == str(base)
    rep = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    assert rep["run"]["defense"] == "labels" and rep["baseline"]["defense"] == "none"
    assert rep["run"]["do_flop_share"] > 0 and rep["run"]["test_acc"] > 0.5
    for key in ("test accuracy", "DO FLOP share", "Privacy", "Attack budget:** smoke", "undefended floor"):
        assert key in md
    assert {r["attack"] for r in rep["rows"]} == {"gradient-leak", "clustering"}
    for row in rep["rows"]:  # every metric beside the baseline's, with its status
        line = next(ln for ln in md.splitlines()
                    if ln.startswith(f"| {row['attack']} | {row['party']} | {row['level']} | {row['primary']}"))
        assert f"{row['score']:.4f}" in line and f"{row['baseline_score']:.4f}" in line
        assert ("**not informative**" in line) != row["informative"]
        assert row["informative"] == row["baseline_beats_floor"]
    for f in rep["figures"]:
        assert (out / f["file"]).stat().st_size > 1000 and f["file"] in md
    assert {f["kind"] for f in rep["figures"]} == {"accuracy vs attack metric", "attack metric per epoch"}
    # attacks were stored in both runs, with the budget; a second report reuses them
    assert json.loads((base / "attacks" / "clustering.json").read_text())["settings"]["budget"] == "smoke"
    rep2 = make_report(run, tmp_path / "report2", baseline=base, budget="smoke", attacks="gradient-leak")
    assert rep2["attacks"]["gradient-leak"]["seconds"] == rep["attacks"]["gradient-leak"]["seconds"]
    # DO-alone (head + linear tail, no trainers) beside accuracy and the FLOP share, for both; cached per run
    for who, d in (("run", run), ("baseline", base)):
        cached = json.loads((d / "do_alone.json").read_text())
        assert rep[who]["do_alone_acc"] == cached["do_alone_acc"] and 0.0 < cached["do_alone_acc"] <= 1.0
        assert rep[who]["trainer_gain"] == pytest.approx(rep[who]["test_acc"] - cached["do_alone_acc"])
        cfg = json.loads((d / "config.json").read_text())
        assert cached["settings"]["model"] == "digits-mlp" and cached["settings"]["epochs"] == cfg["epochs"]
    assert rep2["run"]["do_alone_acc"] == rep["run"]["do_alone_acc"]
    assert "DO-alone accuracy" in md and "trainers' gain" in md
    assert "| DO-alone model | head + a linear tail | head + a linear tail |" in md  # digits-mlp: a Linear tail
    assert rep["run"]["do_alone_model"] == cached["model"] == "head + a linear tail"
    rep3 = make_report(run, tmp_path / "report3", baseline=base, budget="smoke", attacks="gradient-leak",
                       do_alone=False)
    assert "do_alone_acc" not in rep3["run"] and "DO-alone" not in (tmp_path / "report3" / "report.md").read_text()


def test_baseline_must_be_comparable(digits_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(digits_run, tmp_path / "run"))
    base = Path(shutil.copytree(digits_run, tmp_path / "base"))
    cfg = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**cfg, "seed": 7}))
    with pytest.raises(ConfigError, match="same data and seed .* differ in seed"):
        make_report(run, tmp_path / "r", baseline=base, budget="smoke")
    # another architecture only when asked for (the undefended reference beside a private model)
    (base / "config.json").write_text(json.dumps({**cfg, "model": "digits-cnn"}))
    with pytest.raises(ConfigError, match="differ in model"):
        make_report(run, tmp_path / "r", baseline=base, budget="smoke")
    with pytest.raises(ConfigError, match="differ in model"):
        make_report(run, tmp_path / "r", baseline=base, budget="smoke", baseline_model="digits-mlp-x")
    older = {k: v for k, v in cfg.items() if k != "defenses"}
    for defended in ({**cfg, "defenses": [{"kind": "keyed-noise", "sigma": 0.1}]},  # the spec list
                     {**older, "defense": "dp", "dp": {"sigma": 0.1}}):  # a config.json in the older form
        (base / "config.json").write_text(json.dumps(defended))
        r = runner.invoke(app, ["report", str(run), "--baseline", str(base), "--out", str(tmp_path / "r")])
        assert r.exit_code != 0 and "must be undefended" in r.stderr and "Traceback" not in r.stderr
    shutil.rmtree(run / "observations")
    r = runner.invoke(app, ["report", str(run), "--baseline", str(base), "--out", str(tmp_path / "r")])
    assert r.exit_code != 0 and "--record-observations" in r.stderr


@pytest.mark.slow
def test_cli_inversion_then_report_trains_baseline(tmp_path: Path) -> None:
    """16×16 images (inversion needs ≥ 11×11): `clicooper attack --attack inversion`, then a report with no
    --baseline trains the undefended counterpart, reuses the run's stored attack and draws the grids."""
    import numpy as np
    import torch
    from safetensors.torch import load_file
    from sklearn.datasets import load_digits

    from clicooper.training import train

    d = load_digits()
    x = torch.nn.functional.interpolate(torch.tensor(d.images[:, None] / 16.0, dtype=torch.float32), size=(16, 16),
                                        mode="bilinear", align_corners=False).clamp(0, 1).numpy()
    npz = tmp_path / "d16.npz"
    np.savez(npz, x=x[:400], y=d.target[:400], x_test=x[400:600], y_test=d.target[400:600])
    run = tmp_path / "run"
    train({"dataset": f"npz:{npz}", "model": "digits-cnn", "trainers": 2, "epochs": 1, "record_observations": True,
           "batch_size": 64, "defense": "labels", "watermark": {"enabled": False}}, out=run)
    r = runner.invoke(app, ["attack", str(run), "--attack", "inversion", "--budget", "smoke", "--json"])
    assert r.exit_code == 0, r.stderr
    levels = json.loads(r.stdout.strip().splitlines()[-1])["attacks"]["inversion"]["headline"]["T1"]
    assert {"white-box", "known-plaintext-20", "aux"} <= set(levels)
    grid = load_file(str(run / "attacks" / "inversion_artifacts.safetensors"))["T1/epoch_1/grid/white-box"]
    assert grid.shape[0] == 2 and grid.shape[2:] == (1, 16, 16)
    seconds = json.loads((run / "attacks" / "inversion.json").read_text())["seconds"]

    out = tmp_path / "report"
    rep = make_report(run, out, budget="smoke", attacks="inversion")
    assert rep["attacks"]["inversion"]["seconds"] == seconds  # the stored run result was reused
    assert rep["baseline"]["trained_by_report"] and rep["baseline"]["defense"] == "none"
    assert json.loads((out / "baseline" / "config.json").read_text())["record_observations"] is True
    # the baseline's attack ran at ¼ of the steps, or again at the whole budget if a figure was below its floor
    b_settings = json.loads((out / "baseline" / "attacks" / "inversion.json").read_text())["settings"]
    scale = rep["attacks"]["inversion"]["baseline_scale"]
    assert b_settings["config"]["steps"] == {0.25: 5, 1.0: 20}[scale] and rep["baseline_scale"] == 0.25
    assert ("The baseline's budget" in (out / "report.md").read_text()) == (scale == 0.25)
    grids = [f for f in rep["figures"] if f["kind"].startswith("reconstruction grid")]
    assert {f["kind"] for f in grids} >= {"reconstruction grid (T1, white-box)", "reconstruction grid (T1, aux)"}
    assert all((out / f["file"]).is_file() for f in grids)
    md = (out / "report.md").read_text()
    assert "class floor" in md and "reconstructions_T1_white-box.png" in md
    for f in grids:  # a grid is flagged exactly when its undefended counterpart does not beat the floor
        row = rep["rows_by_key"]["inversion/T1/" + f["kind"].split(", ")[1].rstrip(")")]
        assert bool(f["not_informative"]) != row["informative"]
    # running it again reuses the trained baseline and its stored attacks
    again = make_report(run, out, budget="smoke", attacks="inversion")
    assert again["attacks"]["inversion"]["baseline_seconds"] == rep["attacks"]["inversion"]["baseline_seconds"]
