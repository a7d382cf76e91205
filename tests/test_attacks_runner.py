"""run_attack on a run directory: stored JSON, schema, artifacts, defaults, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clicooper.attacks import informative, run_attack, runner
from clicooper.errors import AttackError
from test_attacks_common import ARCH, digits, trained_split, write_run


@pytest.fixture()
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A hand-written run directory; the core's loaders are replaced by the test architecture."""
    root = write_run(tmp_path / "run", rows=700)
    head, t1, t2, tail = trained_split()

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(tail(t2(t1(head(x)))), 1)

    monkeypatch.setattr(runner, "_load_core", lambda reader, need_predict, own=None: (digits(), ARCH, predict))
    return root


def test_writes_json_with_settings_results_and_headline(run_dir: Path) -> None:
    out = run_attack(run_dir, "clustering", known_k=10, config={"n_init": 2, "known_ks": (1, 10)})
    stored = json.loads((run_dir / "attacks" / "clustering.json").read_text())
    assert stored == out
    assert out["settings"]["parties"] == ["T1", "T2"] and out["settings"]["epochs"] == [1]
    assert {r["party"] for r in out["results"]} == {"T1", "T2"}
    lv = out["headline"]["T2"]["zero-knowledge"]
    assert set(lv) == {"primary", "score", "floor", "higher_is_better", "beats_floor", "metrics", "convergence",
                       "converged"}
    assert lv["convergence"] is None and lv["converged"] is None  # k-means has no step budget to check
    assert informative(lv)
    assert "sample_ids" not in json.dumps(out)


def test_inversion_stores_reconstruction_grid(run_dir: Path) -> None:
    cfg = {"modes": ("white-box",), "width": 16, "steps": 50, "refine_steps": 5}
    out = run_attack(run_dir, "inversion", knowledge=("zero", "aux", "white-box"), victims=100, config=cfg)
    assert out["settings"]["parties"] == ["T1"] and out["results"][0]["views"]["victims"] == 100
    grids = load_file(str(run_dir / out["artifacts"]))
    assert grids["T1/epoch_1/grid/white-box"].shape == (2, 8, 1, 16, 16)


def test_gradient_leak_defaults_to_last_trainer(run_dir: Path) -> None:
    out = run_attack(run_dir, "gradient-leak", config={"n_init": 2}, write=False)
    assert out["settings"]["parties"] == ["T2"] and not (run_dir / "attacks").exists()


def test_errors(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(AttackError, match="unknown attack"):
        run_attack(run_dir, "nope")
    with pytest.raises(AttackError, match="not recorded"):
        run_attack(run_dir, "clustering", epochs=[5])
    (tmp_path / "empty").mkdir()
    with pytest.raises(AttackError, match="without recording observations"):
        run_attack(tmp_path / "empty", "clustering")


def test_on_a_real_training_run(digits_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end on the core's own run directory (digits-mlp, 2 trainers, observations recorded)."""
    run = Path(shutil.copytree(digits_run, tmp_path / "run"))  # the session run is shared read-only
    for decoy in ("secrets/noise_secret", "keys/T2.key"):  # present or not in this run: plant decoys
        (run / decoy).parent.mkdir(exist_ok=True)
        (run / decoy).write_bytes(b"\0" * 32)
    opened: list[Path] = []
    real_rb = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: (opened.append(self.resolve()), real_rb(self))[1])
    out = run_attack(run, "gradient-leak", config={"n_init": 2})
    assert any("observations" in p.parts for p in opened)
    assert not [p for p in opened if {"secrets", "keys", "checkpoints"} & set(p.relative_to(run.resolve()).parts)]
    assert out["headline"]["T2"]["zero-knowledge"]["beats_floor"], out["headline"]
    out = run_attack(run, "extraction", knowledge=("zero", "aux", "query"), config={"modes": ("query",), "steps": 200})
    assert out["headline"]["pool"]["query-hard"]["score"] > 0.5
    assert (run / "attacks" / "extraction.json").is_file()


def test_attacks_flush_denormals_and_restore_the_setting() -> None:
    import pytest
    import torch

    from clicooper.attacks.runner import flush_denormals

    tiny = torch.tensor([1e-39])  # a denormal float32
    if float(tiny * 1.0) == 0.0:
        pytest.skip("denormals are already flushed here")
    with flush_denormals():
        flushed = float(tiny * 1.0) == 0.0
    if not flushed:
        pytest.skip("this CPU cannot flush denormals")
    assert float(tiny * 1.0) > 0.0  # training outside an attack keeps IEEE arithmetic
