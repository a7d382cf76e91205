"""BatchNorm, GroupNorm and LayerNorm in split training (issue 13): equivalence with centralized training,
running statistics saved / resumed / exported / used in eval mode, the watermark over segments with
buffers, and BatchNorm kept out of a differentially private head."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from clicooper.cli import app
from clicooper.config import make_config
from clicooper.data import epoch_order, load_dataset
from clicooper.errors import ConfigError
from clicooper.export import export_run
from clicooper.models.blocks import Residual
from clicooper.models.blueprint import blueprint_for
from clicooper.provenance.marks import module_layout
from clicooper.runs import load_run
from clicooper.training import Session, train

_NORMS = {  # a model file's layer for each normalisation, and its hand-written twin
    "batch": ({"type": "BatchNorm2d"}, lambda c: nn.BatchNorm2d(c)),
    "group": ({"type": "GroupNorm", "num_groups": 2}, lambda c: nn.GroupNorm(2, c)),
    "layer": ({"type": "LayerNorm"}, lambda c: nn.LayerNorm([c, 8, 8])),
}


def norm_spec(norm: str) -> list[dict]:
    """head conv | norm relu | residual(conv norm relu conv) relu | flatten fc32 BatchNorm1d relu | fc."""
    n = _NORMS[norm][0]
    conv = {"type": "Conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1}
    return [conv, n, {"type": "ReLU"}, {"type": "Residual", "body": [conv, n, {"type": "ReLU"}, conv]},
            {"type": "ReLU"}, {"type": "Flatten"}, {"type": "Linear", "out_features": 32},
            {"type": "BatchNorm1d"}, {"type": "ReLU"}, {"type": "Linear", "out_features": "outputs"}]


def reference(norm: str) -> nn.Sequential:
    """The same architecture written out by hand (shares nothing with the spec builder)."""
    n = _NORMS[norm][1]
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), n(8), nn.ReLU(),
        Residual(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), n(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))),
        nn.ReLU(), nn.Flatten(), nn.Linear(512, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))


@pytest.fixture
def float64() -> Iterator[None]:
    """Default dtype float64 for one test (see tests/test_equivalence.py for why)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@pytest.mark.parametrize("norm", ["batch", "group", "layer"])
@pytest.mark.parametrize("micro", [1, 3])
def test_split_equals_centralized_with_per_micro_batch_statistics(norm: str, micro: int, float64: None) -> None:
    # prepare: K = 2; the reference runs each micro-batch through the whole model on its own (GPipe's
    # semantics: BatchNorm's statistics per micro-batch), which at M = 1 is plain centralized training
    ds = load_dataset("digits")
    ds = dataclasses.replace(ds, x_train=ds.x_train.double(), x_test=ds.x_test.double())
    cfg = make_config(dataset="digits", model="norms", model_spec=norm_spec(norm), trainers=2, batch_size=24,
                      micro_batches=micro, seed=3, device="cpu", provenance=False)
    session = Session(cfg, ds, run_dir=None)
    assert {p.party for p in session.plan.parties if p.layer_names[0] == "BatchNorm1d"} <= {"T1", "T2"}
    ref = reference(norm)
    ref.load_state_dict(session.model.state_dict())
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    order = epoch_order(session.train_ids, seed=3, epoch=0)
    # execute: 30 steps of each
    for s in range(30):
        ids = order[s * 24 : (s + 1) * 24]
        session.net.send_all(session.do.start_step(0, s, ids))
        session.net.run_until_idle()
        assert session.do.step_done
        opt.zero_grad()
        for chunk in torch.tensor_split(ids, micro):
            (F.cross_entropy(ref(ds.x_train[chunk]), ds.y_train[chunk], reduction="sum") / len(ids)).backward()
        opt.step()
    # assert: every parameter and every buffer (running mean / var, batches tracked)
    split_sd, ref_sd = session.model.state_dict(), ref.state_dict()
    assert split_sd.keys() == ref_sd.keys() and any("running_mean" in k for k in ref_sd)
    worst = max(float((split_sd[k].double() - ref_sd[k].double()).abs().max()) for k in ref_sd)
    assert worst <= 1e-6, f"max |Δ| = {worst}"
    tracked = [int(v) for k, v in split_sd.items() if k.endswith("num_batches_tracked")]
    assert tracked and set(tracked) == {30 * micro}


BN_RUN = {"dataset": "digits", "model": "bn-net", "model_spec": norm_spec("batch"), "trainers": 2, "epochs": 2,
          "train_range": [0, 160], "provenance": False}


def test_running_statistics_are_saved_resumed_and_exported(tmp_path: Path) -> None:
    # prepare
    def stop_after_first(_: dict) -> None:
        raise KeyboardInterrupt

    full = train(BN_RUN, out=tmp_path / "full")
    with pytest.raises(Exception, match="interrupted"):
        train(BN_RUN, out=tmp_path / "cut", on_epoch=stop_after_first)
    # execute
    train(resume=tmp_path / "cut")
    export_run(tmp_path / "cut", tmp_path / "m.safetensors")
    # assert: bit-identical to the uninterrupted run, buffers included, in model files and checkpoints
    for f in sorted((tmp_path / "full" / "model").iterdir()):
        a, b = load_file(f), load_file(tmp_path / "cut" / "model" / f.name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f.name
    seg = load_file(tmp_path / "cut" / "model" / "seg_1.safetensors")
    ckpt = load_file(tmp_path / "cut" / "checkpoints" / "round_1" / "T1.weights.safetensors")
    assert any(k.endswith("running_var") for k in seg) and any(k.endswith("running_var") for k in ckpt)
    exported = load_file(tmp_path / "m.safetensors")
    model_sd = full.full_model().state_dict()
    assert exported.keys() == model_sd.keys() and torch.equal(exported["7.running_mean"], model_sd["7.running_mean"])


def test_evaluate_and_predict_use_running_statistics_and_restore_train_mode(tmp_path: Path) -> None:
    # prepare
    run = train(BN_RUN | {"epochs": 1}, out=tmp_path / "run")
    ds = load_dataset("digits")
    session = Session(make_config(**json.loads((tmp_path / "run" / "config.json").read_text())), ds, None)
    before = {k: v.clone() for k, v in session.model.state_dict().items()}
    handle = load_run(tmp_path / "run")
    x = ds.x_test[:5]
    # execute
    acc = session.test_accuracy()
    probs = handle.predict(x)
    # assert: eval-mode outputs (one sample's prediction does not depend on the others), no buffer moved,
    # every module back in train mode
    assert 0.0 <= acc <= 1.0
    assert all(m.training for m in session.model.modules())
    assert all(torch.equal(v, before[k]) for k, v in session.model.state_dict().items())
    assert torch.allclose(handle.predict(x[:1]), probs[:1], atol=1e-6)
    assert all(m.training for m in handle.model.modules()) and run.config.model == "bn-net"


def test_provenance_watermarks_segments_with_buffers_and_verify_accepts(tmp_path: Path) -> None:
    # prepare: marks on every segment (min_params low), BatchNorm in both trainers' segments
    cfg = BN_RUN | {"epochs": 1, "provenance": True, "watermark": {"min_params": 100}}
    # execute
    run = train(cfg, out=tmp_path / "run")
    res = CliRunner().invoke(app, ["verify", str(tmp_path / "run"), "--json"])
    # assert
    assert res.exit_code == 0, res.output
    for seg in run.segments:
        names = [n for n, _ in module_layout(seg)]
        buffers = [n for n, _ in seg.named_buffers()]
        assert buffers and not set(buffers) & set(names)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["extra"]["watermark"]


def test_batchnorm_is_kept_out_of_a_private_head() -> None:
    # prepare: a parameter-free BatchNorm (affine=False) joins the head's unit
    spec = norm_spec("group")
    spec.insert(1, {"type": "BatchNorm2d", "affine": False})
    cfg = make_config(dataset="digits", model="x", model_spec=spec, defense="dp", dp={"sigma": 1.0})
    # execute / assert
    with pytest.raises(ConfigError, match="DO:head holds a BatchNorm layer"):
        blueprint_for(cfg, (1, 8, 8), 10)
    bp = blueprint_for(cfg.model_copy(update={"model_spec": norm_spec("batch")}), (1, 8, 8), 10)
    assert bp.plan.head.layer_names == ["Conv2d"]  # BatchNorm at the trainers is fine
