"""Core behaviour: run directory, resume, observations, partition plans, export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from clicooper import load_run, rundir
from clicooper.errors import ConfigError, InterruptedRun, RunDirError
from clicooper.models import zoo
from clicooper.models.partition import make_plan
from clicooper.training import train

CFG = {"dataset": "digits", "model": "digits-mlp", "trainers": 2, "epochs": 3, "provenance": False}


def test_resume_after_interrupt_matches_uninterrupted(tmp_path: Path) -> None:
    # prepare
    full = train(CFG, out=tmp_path / "full")
    calls = []

    def stop_after_first(m: dict) -> None:
        calls.append(m["epoch"])
        if m["epoch"] == 1:
            raise KeyboardInterrupt

    # execute
    with pytest.raises(InterruptedRun, match="--resume"):
        train(CFG, out=tmp_path / "cut", on_epoch=stop_after_first)
    resumed = train(resume=tmp_path / "cut")

    # assert
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    metrics = rundir.read_json(tmp_path / "cut" / "metrics.json")
    assert [m["epoch"] for m in metrics["epochs"]] == [1, 2, 3]


def test_existing_run_dir_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "r"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(RunDirError, match="already exists"):
        train(CFG, out=out)
    assert (out / "precious.txt").read_text() == "keep me"


def test_observation_format(digits_run: Path) -> None:
    run = load_run(digits_run)
    n_train = len(run.dataset().x_train)
    for party, shape_in, shape_out in (("T1", (256,), (256,)), ("T2", (256,), (64,))):
        obs = run.observations(party, 2)
        ids = obs["sample_ids"]
        assert ids.dtype == torch.int64 and len(ids) == n_train  # fewer than 5,000: all recorded
        assert len(set(ids.tolist())) == len(ids)
        assert tuple(obs["activations"].shape[1:]) == shape_in
        assert tuple(obs["gradients"].shape[1:]) == shape_out
        seg = load_file(digits_run / "observations" / party / "segment_epoch_2.safetensors")
        assert set(seg) == set(run.modules[party].state_dict())
    # T1 received exactly the head's output on those samples (no defense in this run)
    obs = run.observations("T1", 2)
    head_out = run.head(run.dataset().x_train[obs["sample_ids"][:50]])
    epoch2_head = load_run(digits_run).head  # final head = end of epoch 2; T1 saw it during epoch 2
    assert head_out.shape == obs["activations"][:50].shape
    assert epoch2_head is not None


def test_evaluate_matches_training(digits_run: Path) -> None:
    run = load_run(digits_run)
    ds = run.dataset()
    metrics = rundir.read_json(digits_run / "metrics.json")
    assert run.accuracy(ds.x_test, ds.y_test) == pytest.approx(metrics["final_test_acc"], abs=1e-12)


def test_plan_is_flop_proportional_and_saved(digits_run: Path) -> None:
    model = zoo.build("digits-mlp", (1, 8, 8), 10, seed=0)
    plan = make_plan(model, model_name="digits-mlp", input_shape=(1, 8, 8), trainers=2, capacities=[1, 2])
    t1, t2 = plan.segments
    assert t2.flops > t1.flops  # more capacity, more work
    assert sum(p.flop_share for p in plan.parties) == pytest.approx(1.0)
    saved = rundir.read_json(digits_run / "plan.json")
    assert saved["parties"][0]["party"] == "DO:head" and "do_flop_share" in saved


def test_fmnist_cnn_plan_matches_design() -> None:
    model = zoo.build("fmnist-cnn", (1, 28, 28), 10, seed=0)
    plan = make_plan(model, model_name="fmnist-cnn", input_shape=(1, 28, 28), trainers=2)
    assert [p.layer_names for p in plan.parties] == [
        ["Conv2d", "ReLU", "MaxPool2d"], ["Conv2d", "ReLU", "MaxPool2d"], ["Flatten", "Linear", "ReLU"], ["Linear"],
    ]
    assert plan.do_flop_share < 0.06


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"trainers": 5}, "use fewer --trainers"),
        ({"trainers": 2, "capacities": [1, 0]}, "capacity must be > 0"),
        ({"trainers": 2, "capacities": [1]}, "one per trainer"),
    ],
)
def test_invalid_plans(kwargs: dict, match: str) -> None:
    model = zoo.build("digits-mlp", (1, 8, 8), 10, seed=0)
    with pytest.raises(ConfigError, match=match):
        make_plan(model, model_name="digits-mlp", input_shape=(1, 8, 8), **kwargs)


def test_batchnorm_is_planned_like_any_parametrised_layer() -> None:
    # BatchNorm is allowed (issue 13): per-micro-batch statistics, see tests/test_model_spec.py
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 4), nn.Linear(4, 2))
    plan = make_plan(model, model_name="x", input_shape=(4,), trainers=1)
    assert [p.layer_names for p in plan.parties] == [["Linear"], ["BatchNorm1d", "Linear"], ["Linear"]]


def test_export_loads_into_plain_sequential(digits_run: Path, tmp_path: Path) -> None:
    from clicooper.export import export_run

    export_run(digits_run, tmp_path / "m.safetensors")
    sd = load_file(tmp_path / "m.safetensors")
    plain = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 10),
    )
    plain.load_state_dict(sd)
    run = load_run(digits_run)
    x = run.dataset().x_test[:20]
    assert torch.allclose(plain(x).softmax(1), run.predict(x), atol=1e-6)


def test_npz_dataset(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8, 8)).astype(np.float32)
    y = (x.mean(axis=(1, 2)) > 0).astype(np.int64)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    run = train({"dataset": f"npz:{tmp_path / 'd.npz'}", "model": "digits-mlp", "trainers": 1, "epochs": 2,
                 "provenance": False}, out=tmp_path / "r")
    assert run.plan_num_classes == 2
    assert run.predict(torch.from_numpy(x[:3, None])).shape == (3, 2)
