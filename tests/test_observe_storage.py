"""Observations that fit: float16 / bfloat16 storage halves the files, the attacks and the Python API read
every stored dtype as float32, and a value beyond float16's range keeps its tensor in float32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clicooper.core.observe import stored
from clicooper.errors import ConfigError

_BASE = {"dataset": "digits", "model": "digits-mlp", "trainers": 2, "epochs": 1, "record_observations": True,
         "observe_count": 200, "provenance": False}


def _obs_bytes(run: Path) -> int:
    return sum(f.stat().st_size for f in (run / "observations").glob("T*/epoch_*.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from clicooper.training import train

    root = tmp_path_factory.mktemp("obs")
    out = {}
    for dtype in ("float32", "float16"):
        out[dtype] = root / dtype
        train({**_BASE, "observe_dtype": dtype}, out=out[dtype])
    return out


def test_float16_halves_the_files_and_reads_back_as_float32(runs: dict[str, Path]) -> None:
    from clicooper.rundir import load_tensors, read_json
    from clicooper.runs import load_run

    full, half = _obs_bytes(runs["float32"]), _obs_bytes(runs["float16"])
    assert half < 0.6 * full, (half, full)
    raw, _ = load_tensors(runs["float16"] / "observations" / "T1" / "epoch_1.safetensors")
    assert raw["activations"].dtype == torch.float16 and raw["gradients"].dtype == torch.float16
    assert raw["sample_ids"].dtype == torch.int64
    assert read_json(runs["float16"] / "observations" / "index.json")["dtype"] == "float16"
    a, b = load_run(runs["float32"]).observations("T1", 1), load_run(runs["float16"]).observations("T1", 1)
    assert b["activations"].dtype == torch.float32 and torch.equal(a["sample_ids"], b["sample_ids"])
    rel = (a["activations"] - b["activations"]).norm() / a["activations"].norm()
    assert 0 < rel < 1e-3  # the same run, stored at half precision


def test_attacks_read_both_formats(runs: dict[str, Path]) -> None:
    from clicooper.attacks.runner import run_attack

    scores = {}
    for dtype, run in runs.items():
        res = run_attack(run, "gradient-leak", config={"n_init": 1, "known_ks": (1,)}, known_k=1, write=False)
        scores[dtype] = {lv: r["score"] for lv, r in res["headline"]["T2"].items()}
    assert scores["float16"].keys() == scores["float32"].keys()
    for lv, s in scores["float32"].items():
        assert scores["float16"][lv] == pytest.approx(s, abs=0.02), lv


def test_float16_keeps_a_tensor_that_would_overflow() -> None:
    x = torch.tensor([1.0, 7e4])
    assert stored(x, torch.float16).dtype == torch.float32  # 70,000 > 65,504: kept exact
    assert stored(torch.tensor([1.0, -3.5]), torch.float16).dtype == torch.float16
    assert stored(x, torch.bfloat16).dtype == torch.bfloat16
    assert torch.equal(stored(torch.arange(3), torch.float16), torch.arange(3))  # ids untouched


def test_unknown_dtype_is_refused() -> None:
    from clicooper.config import make_config

    with pytest.raises(ConfigError, match="observe_dtype"):
        make_config(**{**_BASE, "observe_dtype": "int8"})
