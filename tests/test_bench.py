"""`make bench` runs end to end at a toy size and reports every ratio it promises (figures meaningless here)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import needs_fmnist


@needs_fmnist
def test_bench_reports_reference_and_preset_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import inprocess as bench

    bench.main(["--steps", "2", "--repeats", "1", "--threads", "1"])
    out = json.loads(capsys.readouterr().out)
    med = out["samples_per_s_median"]
    assert set(med) == {"centralized", "split", "split_clicooper_defense", "split_provenance",
                        "preset_model_split", "preset_defended"}
    assert all(v > 0 for v in med.values())
    assert out["preset"] == "private-accurate" and out["preset_model"] == "fmnist-private-d64w"
    assert out["preset_defended_vs_split"] == pytest.approx(med["preset_defended"] / med["split"])
    assert out["preset_defended_vs_preset_model_split"] == pytest.approx(
        med["preset_defended"] / med["preset_model_split"])


def test_bench_refuses_an_unknown_preset() -> None:
    from benchmarks import inprocess as bench

    with pytest.raises(SystemExit, match="unknown preset"):
        bench.main(["--steps", "1", "--repeats", "1", "--preset", "nope"])
