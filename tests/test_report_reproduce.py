"""``experiments.reproduce``: anchor extraction, multi-seed intervals and the markdown (no training here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments import reproduce as rp


def _lv(score: float, floor: float, primary: str = "accuracy", **metrics: object) -> dict:
    return {"primary": primary, "score": score, "floor": floor, "higher_is_better": True,
            "beats_floor": score > floor, "metrics": metrics}


def _results(ssim: float) -> dict:
    return {
        "inversion": {"headline": {"T1": {"white-box": _lv(ssim, 0.13, "ssim", class_floor=0.36),
                                          "known-plaintext-1000": _lv(0.6, 0.13, "ssim", class_floor=0.36)}}},
        "clustering": {"headline": {"T2": {
            "zero-knowledge": _lv(0.9, 0.11, "oracle_accuracy", by_source={
                "output": {"kmeans": {"oracle_accuracy": 0.8, "chance": 0.11, "ari": 0.6}}}),
            "known-10": _lv(0.9, 0.1, by_source={"output": {"best": 0.85, "probe": 0.85}})}}},
        "extraction": {"headline": {"pool": {
            "query-soft": _lv(0.85, 0.1, relative=0.95, victim_accuracy=0.9),
            "query-hard": _lv(0.84, 0.1, relative=0.94, victim_accuracy=0.9)}}},
    }


def test_anchors_read_the_right_levels() -> None:
    ot = {"headline": {"T2": {"zero-knowledge": _lv(1.0, 0.1, "oracle_accuracy", by_source={
        "labels": {"kmeans": {"oracle_accuracy": 1.0, "chance": 0.1}, "gmm": {"oracle_accuracy": 0.7, "chance": 0.1}}})}}}
    a = rp.anchors(_results(0.95), ot)
    assert a["inversion_white_box_ssim"]["value"] == 0.95
    assert a["inversion_known_plaintext_1000_ssim"]["floor"] == 0.36  # judged against the class floor
    assert a["clustering_oracle_kmeans_T2_output"]["value"] == 0.8
    assert a["clustering_known10_T2_output"]["value"] == 0.85
    assert a["open_tail_zero_knowledge_label_accuracy"]["value"] == 1.0
    assert a["query_extraction_relative"]["value"] == 0.95
    assert set(rp.anchors({}, None)) == set()


def test_summary_intervals_and_markdown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two seeds × two defenses with training and attacks replaced by stored numbers."""
    ssim = {("none", 0): 0.95, ("none", 1): 0.97, ("clicooper", 0): 0.10, ("clicooper", 1): 0.12}

    def fake_train(out: Path, **kw: object) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text('{"final_test_acc": 0.88}')
        (out / "who").write_text(f"{kw['defense']} {kw['seed']}")
        return out

    def fake_attacks(run: Path, names: list[str], budget: str, log: object) -> dict:
        d, s = (run / "who").read_text().split()
        return _results(ssim[(d, int(s))])

    monkeypatch.setattr(rp, "_train", fake_train)
    monkeypatch.setattr(rp, "_attacks", fake_attacks)
    rep = rp.reproduce(tmp_path, runs_dir=tmp_path / "runs", seeds=[0, 1], budget="demo", epochs=3, defenses=["none", "clicooper"],
                       open_tail=False, observe_count=2000, attacks=["inversion"], log=lambda m: None)
    wb = rep["summary"]["none"]["anchors"]["inversion_white_box_ssim"]["value"]
    assert wb["n"] == 2 and wb["mean"] == pytest.approx(0.96) and wb["low"] < 0.95 < 0.97 < wb["high"]
    assert rep["summary"]["clicooper"]["levels"]["inversion/T1/white-box"]["informative"]
    md = (tmp_path / "headline.md").read_text()
    assert "0.9600 [" in md and "(n = 2)" in md and "defense clicooper" in md and "budget **demo**" in md
    assert (tmp_path / "headline.json").is_file()
