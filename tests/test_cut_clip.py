"""The DO clips its head's output (per sample, to dp.clip_norm) before anything leaves it: the trainers learn
on clip(head(x)) + noise. The local inference path (session test accuracy, evaluate, predict, the raw query
oracle) applies the same clip, without the noise; the export says where it goes."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from clicooper import rundir
from clicooper.export import export_run
from clicooper.privacy.activation import clip_per_sample
from clicooper.runs import load_run
from clicooper.training import train

CFG = {"dataset": "digits", "model": "digits-mlp", "trainers": 2, "epochs": 1, "train_range": (0, 320),
       "provenance": False, "defense": "dp", "dp": {"sigma": 0.05, "clip_norm": 0.5}}


def test_local_path_clips_at_the_cut_as_training_did(tmp_path: Path) -> None:
    train(CFG, out=tmp_path / "r")
    run = load_run(tmp_path / "r")
    assert run.config.cut_clip_norm == 0.5
    ds = run.dataset()
    x = ds.x_test[:64].float()
    with torch.no_grad():
        h = run.head(x)
        assert float(h.flatten(1).norm(dim=1).min()) > 0.5  # the clip is active on every row
        manual = clip_per_sample(h, 0.5)
        for seg in run.segments:
            manual = seg(manual)
        manual = run.tail(manual)
        assert torch.equal(run.forward(x), manual)
        assert not torch.allclose(run.forward(x), run.full_model()(x))
    # the session's per-epoch test accuracy is the reloaded run's: the same local path
    final = rundir.read_json(tmp_path / "r" / "metrics.json")["final_test_acc"]
    assert run.accuracy(ds.x_test, ds.y_test) == final
    cut = run.plan.head.layers[-1]
    assert f"{cut + 1}: ClipPerSample(norm=0.5)" in export_run(tmp_path / "r", tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["cut_clip"]) == {"after_layer": cut, "norm": 0.5, "module_index": cut + 1}


def test_undefended_run_has_no_clip(tmp_path: Path) -> None:
    train(CFG | {"defense": "none"}, out=tmp_path / "r")
    run = load_run(tmp_path / "r")
    assert run.config.cut_clip_norm is None
    x = run.dataset().x_test[:16].float()
    with torch.no_grad():
        assert torch.equal(run.forward(x), run.full_model()(x))
