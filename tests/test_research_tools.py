"""The research sweeps behind docs/research/privacy-frontier.md run end to end at a toy budget (figures meaningless)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import needs_fmnist


def test_rr_keep_probability_matches_plain_rr() -> None:
    from experiments.research.label_dp import rr_keep_probability

    assert rr_keep_probability(math.log(9.0), 10) == pytest.approx(0.5)
    assert rr_keep_probability(1e-9, 10) == pytest.approx(0.1)


@needs_fmnist
def test_label_dp_sweep_trains_attacks_and_reports(tmp_path: Path) -> None:
    from experiments.research import label_dp

    runs, res = tmp_path / "runs", tmp_path / "res"
    argv = ["--runs", str(runs), "--results", str(res), "--train", "400", "--epochs", "1", "--eps", "2",
            "--no-reference"]
    assert label_dp.main(argv) == 0
    rows = json.loads((res / "label_dp.json").read_text())["rows"]
    assert len(rows) == 1
    r = rows[0]
    assert r["label_dp_epsilon"] == 2.0 and r["epsilon"]["label-DP (RR)"] == pytest.approx(2.0)
    assert r["budget"]["train"] == 400 and r["defense"] == "clicooper"
    for party in ("T1", "T2"):
        assert {"zero-knowledge", "known-1", "known-10"} <= set(r["attacks"][party])
    assert r["attacks"]["T2"]["known-10"]["labels"] is not None  # the last trainer received labels
    assert "| fmnist-private-d64w | clicooper | 2.0 |" in (res / "label_dp.md").read_text()
    # cached: a second call trains nothing and rebuilds the same report
    (runs / r["tag"] / "metrics.json").unlink()
    assert label_dp.main(argv) == 0
    assert json.loads((res / "label_dp.json").read_text())["rows"] == rows


@needs_fmnist
def test_accuracy_probe_reports_do_alone(tmp_path: Path) -> None:
    from experiments.research import accuracy_probe

    out = tmp_path / "p"
    assert accuracy_probe.main(["--model", "fmnist-private-d16", "--sigma", "0.25", "--epochs", "1", "--train",
                                "300", "--do-alone", "--out", str(out)]) == 0
    row = json.loads((out / "probe.json").read_text())
    assert 0.0 <= row["do_alone_acc"] <= 1.0
    assert row["trainer_gain"] == pytest.approx(row["acc"] - row["do_alone_acc"])
    assert row["epsilon"]["per-release, head fixed"] > 0


def test_frontier_reference_is_the_sweeps_own_undefended_model() -> None:
    from experiments.research.frontier_report import informative_levels, reference_row

    def row(model: str, defense: str, beats: bool) -> dict:
        lv = {"ssim": 0.5, "global_floor": 0.1, "class_floor": 0.3, "beats_floor": beats}
        return {"model": model, "defense": defense, "inversion": {"white-box": lv, "known-plaintext-100": lv, "known-plaintext-1000": lv}}

    resnet = [row("fmnist-resnet", "clicooper", False), row("fmnist-resnet", "none", True)]
    assert reference_row(resnet)["model"] == "fmnist-resnet"  # a sweep of another model is judged on its own
    assert all(informative_levels(resnet).values())
    mixed = [row("fmnist-resnet", "none", False), row("fmnist-cnn", "none", True)]
    assert reference_row(mixed)["model"] == "fmnist-cnn"  # the reference model wins where the sweep has it
    assert reference_row([row("fmnist-cnn", "clicooper", True)]) is None
    # an undefended private architecture sorted first is a control, not the reference
    controls = [row("fmnist-resnet-s8", "none", True), row("fmnist-resnet", "none", True)]
    assert reference_row(controls)["model"] == "fmnist-resnet"
    assert reference_row([row("fmnist-resnet-s8", "none", True)])["model"] == "fmnist-resnet-s8"  # nothing else


def test_frontier_tables_show_the_suite_attacks(tmp_path: Path) -> None:
    import json

    from experiments.research.frontier_report import seed_summary, write_markdown

    def row(seed: int, defense: str, fora: float, converged: bool) -> dict:
        lv = {"ssim": 0.5, "global_floor": 0.1, "class_floor": 0.3, "beats_floor": True}
        return {"tag": f"fmnist-resnet_{defense}", "model": "fmnist-resnet", "defense": defense, "sigma": 0.0,
                "cut_shape": [32, 14, 14], "noise_to_signal": 0.0, "test_acc": 0.85, "do_flop_share": 0.002,
                "do_alone_acc": 0.8, "trainer_gain": 0.05, "epsilon": None, "budget": {"seed": seed},
                "inversion": {"white-box": lv, "known-plaintext-100": lv, "known-plaintext-1000": lv},
                "suite": {"fora": {"fora": {"score": fora, "converged": converged}},
                          "completion": {"k10": {"score": 0.7, "advantage": 0.04, "converged": True}}}}

    rows = [row(0, "none", 0.61, True), row(0, "clicooper", 0.42, False)]
    write_markdown(rows, tmp_path / "f.md", "cmd")
    text = (tmp_path / "f.md").read_text()
    assert "| FORA |" in text and "completion adv. k=10 (pt)" in text and "SDAR" not in text  # only the columns a row has
    assert "| 0.610 |" in text and "≥0.420" in text and "+4.0" in text  # not converged: a lower bound
    for seed in (0, 1):
        d = tmp_path / f"s{seed}" / "fmnist-resnet_none"
        d.mkdir(parents=True)
        (d / "frontier_row.json").write_text(json.dumps(row(seed, "none", 0.6 + seed / 100, True)))
    out, table = seed_summary([tmp_path / "s0", tmp_path / "s1"])
    assert out[0]["suite"]["fora/fora/score"] == [0.6, 0.61] and "| FORA |" in table
    assert out[0]["converged"]["fora/fora/score"] and "≥" not in table
    # one seed whose attack stopped early makes the summary a lower bound
    d = tmp_path / "s1" / "fmnist-resnet_none" / "frontier_row.json"
    d.write_text(json.dumps(row(1, "none", 0.61, False)))
    out, table = seed_summary([tmp_path / "s0", tmp_path / "s1"])
    assert not out[0]["converged"]["fora/fora/score"] and "≥0.605 [" in table


def _digits16_run(tmp_path: Path) -> Path:
    """A recorded 1-epoch digits-cnn run on digits upsampled to 16×16 (SSIM needs 11×11 images at least)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    from clicooper.training import train

    d = load_digits()
    x = F.interpolate(torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0, size=(16, 16),
                      mode="bilinear", align_corners=False).clamp(0, 1).numpy()
    np.savez(tmp_path / "digits16.npz", x=x[:1200], y=d.target[:1200], x_test=x[1200:], y_test=d.target[1200:])
    run = tmp_path / "run"
    train({"dataset": f"npz:{tmp_path / 'digits16.npz'}", "model": "digits-cnn", "trainers": 2, "epochs": 1,
           "record_observations": True, "defense": "labels", "provenance": False, "seed": 0}, out=run)
    return run


def test_frontier_suite_runs_every_attack_on_a_real_run(tmp_path: Path) -> None:
    """Each ``--suite`` name runs on a recorded digits run (smoke budget) and yields the levels its columns read."""
    from experiments.research.frontier import SUITE, suite_figures
    from experiments.research.frontier_report import SUITE_COLUMNS

    run = _digits16_run(tmp_path)
    out = suite_figures(run, tuple(SUITE), 0, budget="smoke")
    assert set(out) == set(SUITE) and all(out.values())
    # every column the smoke budget's settings produce (it runs completion at k = 1 only, and its 500 clustered
    # rows hold the 100-per-class known rows but not always one of each class's first); the paper's cluster
    # naming has no label to read in the U-shape, so it says why instead
    smoke = {("unsplit", "aux"), ("fora", "fora"), ("sdar", "sdar"), ("sdar", "sdar-labels"), ("completion", "k1"),
             ("clustering", "known-100"), ("paper-metrics", "surrogate-obfuscated")}
    assert smoke <= {(a, lv) for a, lv, _, _ in SUITE_COLUMNS}
    for attack, level, figure, _ in SUITE_COLUMNS:
        if (attack, level) in smoke:
            v = out[attack][level][figure]
            assert v is not None and v == v, (attack, level, figure)
    assert out["unsplit"]["aux"]["converged"] in (True, False)


def test_frontier_extra_points_parse_their_options() -> None:
    from experiments.research.frontier import Budget, grid_of, run_config

    g = grid_of(False, "none", "fmnist-resnet-s8:0.05:clicooper:nopeek=3:m=8,fmnist-resnet-s8:0.05:clicooper:head=secret")
    assert [s.tag for s in g] == ["fmnist-resnet-s8_clicooper_s0.05_np3_m8", "fmnist-resnet-s8_clicooper_s0.05_rh"]
    cfg = run_config(g[0], Budget())
    assert cfg["nopeek"] == 3.0 and cfg["labels"] == {"expansion": 8} and cfg["dp"]["sigma"] == 0.05
    assert run_config(g[1], Budget())["head_mode"] == "secret-random"
    assert run_config(grid_of(False, "none", "m:0.1:clicooper:adv=5")[0], Budget())["adversarial_decoder"] == 5.0
    for bad in ("x:0.1:clicooper:foo=1", "x:0.1:clicooper:head=random", "x:0.1:clicooper:bare"):
        with pytest.raises(SystemExit, match="unknown option"):
            grid_of(False, "none", bad)


def test_goal_check_judges_the_strongest_converged_inversion() -> None:
    from experiments.research.frontier_report import goal_check, strongest_inversion

    lv = {"ssim": 0.30, "class_floor": 0.36, "converged": True}
    r = {"inversion": {"white-box": lv, "known-plaintext-100": lv | {"ssim": 0.2}},
         "suite": {"fora": {"fora": {"score": 0.41, "converged": True}}}}
    assert strongest_inversion(r) == {"level": "fora", "ssim": 0.41, "converged": True, "levels": 3}
    o = {"delta_vs_reference": [-0.005, -0.007], "trainer_gain": [0.05, 0.04], "class_floor": [0.36, 0.36],
         "do_flop_share": 0.03, "strongest": [strongest_inversion(r)] * 2}
    g = goal_check(o)
    assert g["parts"] == {"accuracy": True, "trainers' gain": True, "inversion": False, "DO share": True}
    assert g["strongest_minus_class_floor"] == pytest.approx(0.05) and not g["met"]
    r["suite"]["fora"]["fora"] = {"score": 0.38, "converged": False}  # at the floor, but a lower bound
    g = goal_check(o | {"strongest": [strongest_inversion(r)] * 2})
    assert g["parts"]["inversion"] is False and not g["strongest_converged"]
    r["suite"]["fora"]["fora"]["converged"] = True
    assert goal_check(o | {"strongest": [strongest_inversion(r)] * 2})["met"]


def test_patient_attacker_runs_on_a_copy(tmp_path: Path) -> None:
    """The patient attacks (tiny budgets here) write into a copy, never into the run they read."""
    from experiments.research.patient import main

    run = _digits16_run(tmp_path)
    before = sorted(p.name for p in run.rglob("*"))
    assert main([str(run), str(tmp_path / "copy"), "--steps", "8", "--adversarial-steps", "8", "--victims", "16"]) == 0
    assert sorted(p.name for p in run.rglob("*")) == before
    res = json.loads((tmp_path / "copy" / "patient.json").read_text())
    assert {"inversion/white-box", "inversion/known-plaintext-1000", "fora/fora", "sdar/sdar"} <= set(res["figures"])
    assert all(len(f["values"]) == 3 for f in res["figures"].values())
    with pytest.raises(SystemExit, match="no recorded observations"):
        main([str(tmp_path), str(tmp_path / "c2")])


def test_suite_unsplit_keeps_the_sweeps_inversion_file(tmp_path: Path) -> None:
    from clicooper.attacks.runner import run_attack
    from experiments.research.frontier import suite_figures

    run = _digits16_run(tmp_path)
    first = run_attack(run, "inversion", party="T1", victims=16, known_k=2,
                       config={"modes": ("white-box",), "victims": 16, "steps": 8, "width": 8, "refine_steps": 2})
    suite_figures(run, ("unsplit",), 0, budget="smoke")
    assert json.loads((run / "attacks" / "inversion.json").read_text())["headline"] == first["headline"]
    assert "aux" in json.loads((run / "attacks" / "unsplit.json").read_text())["headline"]["T1"]
    with pytest.raises(Exception, match="save_as"):
        run_attack(run, "fora", party="T1", victims=16, config={"victims": 16, "steps": 2, "width": 8},
                   save_as="../x")


def test_converged_point_counts_only_converged_inversion_figures() -> None:
    from experiments.research.converged_point import Setting, markdown, summarise, t_interval

    m, lo, hi = t_interval([0.30, 0.32, 0.34])
    assert abs(m - 0.32) < 1e-12 and lo < 0.30 and hi > 0.34 and abs((hi - m) - (m - lo)) < 1e-12
    assert t_interval([0.5]) == (0.5, 0.5, 0.5)

    def seed(s: int, wb: float, wb_conv: bool) -> dict:
        row = {"floor": 0.13, "class_floor": 0.36, "informative": True, "baseline_score": 0.9,
               "baseline_converged": False, "verdict": "", "convergence": None}
        return {"seed": s, "test_acc": 0.80, "baseline_acc": 0.85, "do_alone_acc": 0.74, "trainer_gain": 0.06,
                "do_flop_share": 0.026, "rows": {
                    "inversion/T1/white-box": {**row, "score": wb, "converged": wb_conv},
                    "fora/T1/fora": {**row, "score": 0.30, "converged": True}}}

    s = summarise([seed(0, 0.37, True), seed(1, 0.38, True), seed(2, 0.39, True)])
    g = s["goal"]
    assert not g["accuracy"] and g["gain"] and g["share"]  # −5 pt, +6 pt, 2.6 %
    assert g["inversion"] and g["inversion_all_converged"]  # strongest 0.38 ≤ 0.36 + 0.03
    assert abs(g["inversion_worst_over_class_floor"][0] - 0.02) < 1e-9
    s2 = summarise([seed(0, 0.37, True), seed(1, 0.38, False), seed(2, 0.39, True)])
    # a lower bound under the bound decides nothing; SDAR's pooled view counts as an inversion level too
    assert s2["goal"]["inversion"] is None and s2["figures"]["inversion/T1/white-box"]["converged_seeds"] == 2
    s4 = summarise([{**p, "rows": {**p["rows"], "sdar/pool/sdar": {**p["rows"]["fora/T1/fora"], "score": 0.45,
                                                                   "converged": False}}}
                    for p in (seed(0, 0.37, True), seed(1, 0.38, True), seed(2, 0.39, True))])
    assert s4["goal"]["inversion"] is False  # a lower bound of 0.45 is already above 0.39
    s3 = summarise([seed(0, 0.41, True), seed(1, 0.42, True), seed(2, 0.43, True)])
    assert s3["goal"]["inversion"] is False  # 0.42 > 0.39
    md = markdown(Setting("fmnist-resnet-s8", 0.0505, "clicooper", nopeek=3), "demo", s2)
    assert "| inversion/T1/white-box | 0.380 [" in md and "| 2/3 |" in md and "not every figure converged" in md
    assert "undetermined" in md


def test_converged_frontier_table_and_plot(tmp_path: Path) -> None:
    from clicooper import rundir
    from experiments.research.converged_frontier import _epsilon, collect, main

    def seed(s: int, acc: float, wb: float, wb_conv: bool, fora: float) -> dict:
        row = {"floor": 0.13, "class_floor": 0.36, "informative": True, "verdict": "", "convergence": None}
        return {"seed": s, "test_acc": acc, "baseline_acc": 0.85, "do_alone_acc": 0.74, "trainer_gain": acc - 0.74,
                "do_flop_share": 0.026, "baseline_do_alone_acc": 0.81, "baseline_do_flop_share": 0.002, "rows": {
                    "inversion/T1/white-box": {**row, "score": wb, "converged": wb_conv, "baseline_score": 0.95,
                                               "baseline_converged": True},
                    "fora/T1/fora": {**row, "score": fora, "converged": True, "baseline_score": 0.7,
                                     "baseline_converged": False},
                    "extraction/pool/query-soft": {**row, "class_floor": None, "score": 0.8, "converged": True,
                                                   "baseline_score": 0.85, "baseline_converged": True},
                    "completion/T1/k10": {**row, "class_floor": None, "floor": 0.70, "score": 0.75, "converged": True,
                                          "baseline_score": 0.78, "baseline_floor": 0.70, "baseline_converged": True},
                    "clustering/T1/known-10": {**row, "class_floor": None, "floor": 0.11, "score": 0.72,
                                               "converged": True, "baseline_score": 0.80, "baseline_converged": True},
                    # the last trainer (T2): the gradients it receives carry the labels
                    "completion/T2/k10": {**row, "class_floor": None, "floor": 0.60, "score": 0.88, "converged": True,
                                          "baseline_score": 0.89, "baseline_floor": 0.61, "baseline_converged": True},
                    "clustering/T2/known-10": {**row, "class_floor": None, "floor": 0.11, "score": 0.99,
                                               "converged": True, "baseline_score": 1.0, "baseline_converged": True}},
                "epsilon": [{"epsilon": 935.15, "delta": 1e-5, "covers": "per-release, head fixed"}]}

    pts = {"a": ({"model": "fmnist-resnet-s8", "sigma": 0.101, "defense": "clicooper"},
                 [seed(s, 0.77, 0.40, True, 0.30) for s in range(3)]),
           "b": ({"model": "fmnist-resnet-s8", "sigma": 0.0505, "defense": "clicooper", "nopeek": 3.0},
                 [seed(s, 0.845, 0.37 + 0.001 * s, s != 1, 0.30) for s in range(3)])}
    dirs = []
    for name, (setting, per_seed) in pts.items():
        rundir.write_json(tmp_path / name / "summary.json", {"setting": setting, "budget": "demo", "per_seed": per_seed})
        dirs.append(tmp_path / name)
    rows = collect(dirs, tmp_path / "out")
    ref, a, b = rows
    assert ref["point"] == "undefended reference" and ref["acc"][0] == 0.85 and abs(ref["gain_pt"][0] - 4.0) < 1e-9
    assert abs(ref["strongest_over_floor"][0] - 0.59) < 1e-9 and ref["goal"]["inversion"] is False
    assert a["point"] == "fmnist-resnet-s8 σ 0.101" and abs(a["delta_pt"][0] + 8.0) < 1e-9
    assert a["goal"] == {"accuracy": False, "gain": True, "inversion": False, "share": True}  # 0.40 − 0.36 > 0.03
    assert b["goal"]["accuracy"] and b["goal"]["inversion"] is None  # a seed's white-box had not converged
    md = (tmp_path / "out" / "frontier.md").read_text()
    assert "| fmnist-resnet-s8 NoPeek α=3 σ 0.0505 |" in md and "≥0.371 [" in md and "✓ / ✓ / ? / ✓" in md
    assert abs(a["labels"]["completion adv. k=10 (pt)"]["score"][0] - 5.0) < 1e-9 and "935 (δ 1e-05" in md
    # known-sample k = 10 (0.80 on the reference), its advantage over completion's from-scratch floor (0.80 −
    # 0.70) and the reference's completion advantage (0.78 − 0.70)
    assert "| undefended reference | 0.800 | 10.0 | 8.0 |" in md
    assert abs(a["labels"]["known-sample adv. k=10 (pt)"]["score"][0] - 2.0) < 1e-9  # 0.72 − 0.70
    assert "✗ / ✓ / ✗ / ✓" in md and (tmp_path / "out" / "frontier.png").stat().st_size > 10_000
    # the label attacks on T2's features get their own table: 0.99 − 0.60 = 39 pt, the reference 1.0 − 0.61
    t2 = md[md.index("## Label attacks on T2's features"):]
    assert "| undefended reference | 1.000 | 39.0 | 28.0 |" in t2 and "## Label attacks on T1" not in t2
    assert abs(a["labels_by_party"]["T2"]["known-sample adv. k=10 (pt)"]["score"][0] - 39.0) < 1e-9
    # a point swept with the label attacks only: its inversion part is undetermined, not met
    labels_only = {"setting": {"model": "m", "sigma": 0.0, "defense": "labels"}, "budget": "demo", "label": "m",
                   "per_seed": [{**seed(0, 0.84, 0.4, True, 0.3), "rows": {
                       k: v for k, v in seed(0, 0.84, 0.4, True, 0.3)["rows"].items() if k.startswith(("completion", "clustering"))}}]}
    from experiments.research.converged_frontier import point_row
    assert point_row(labels_only)["goal"]["inversion"] is None
    with pytest.raises(SystemExit, match="run converged_point"):
        main(["--results", str(tmp_path / "out2"), str(tmp_path / "missing")])
    # a point without noise: the accountant writes ε as the string "inf"
    assert _epsilon({"epsilon": [{"epsilon": "inf", "delta": 1e-5, "covers": "per-release, head fixed"}]}) == \
        "∞ (δ 1e-05, per-release, head fixed)"


def test_converged_point_adds_the_known_plaintext_levels_the_budget_leaves_out(tmp_path: Path) -> None:
    """KP-N beside the report's inversion: a row per count on run and baseline, cached while settings match."""
    import shutil

    from experiments.research.converged_point import known_plaintext_rows

    run = _digits16_run(tmp_path)
    base = tmp_path / "base"
    shutil.copytree(run, base)
    msgs: list[str] = []
    rows = known_plaintext_rows(run, base, budget="smoke", counts=(20,), progress=msgs.append)
    r = rows["inversion/T1/known-plaintext-20"]
    assert set(rows) == {"inversion/T1/known-plaintext-20"}
    assert 0 < r["score"] <= 1 and r["baseline_score"] is not None and r["class_floor"] is not None
    assert len(r["convergence"]["values"]) == 3 and r["converged"] in (True, False)
    assert not (run / "attacks" / "inversion.json").exists()  # the report's own file is left alone
    assert not any(m.startswith("reusing") for m in msgs)
    msgs.clear()
    again = known_plaintext_rows(run, base, budget="smoke", counts=(20,), progress=msgs.append)
    assert again["inversion/T1/known-plaintext-20"]["score"] == r["score"]
    assert sum(m.startswith("reusing") for m in msgs) == 2
    msgs.clear()
    known_plaintext_rows(run, base, budget="smoke", counts=(10, 20), progress=msgs.append)  # other settings: rerun
    assert not any(m.startswith("reusing") for m in msgs)
    from experiments.research.converged_point import known_sample_rows

    ks = known_sample_rows(run, base, budget="smoke", ks=(20,))  # enough per class among the 500 clustered rows
    assert set(ks) == {"clustering/T1/known-20", "clustering/T2/known-20"}
    assert all(0 <= r["score"] <= 1 and r["baseline_score"] is not None for r in ks.values())
    assert not (run / "attacks" / "clustering.json").exists()


def test_fuzz_inputs_runs_bounded_and_reports_figures(tmp_path: Path) -> None:
    from experiments.research.fuzz_inputs import main as fuzz_main

    out = fuzz_main(["--seconds", "4", "--surfaces", "npz,csv", "--out", str(tmp_path / "f.json")])
    saved = json.loads((tmp_path / "f.json").read_text())
    assert saved["total_crashes"] == 0 and saved["total_cases"] == out["total_cases"] > 0
    for s in saved["surfaces"].values():
        assert s["cases"] == s["accepted"] + s["refused"] + s["crashes"] and s["peak_rss_mib"] > 0
