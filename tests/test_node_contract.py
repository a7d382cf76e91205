"""Contract: the same config trained in-process and as one process per party over gRPC gives the same weights.

Also the per-party builder against ``Session`` and the ``launch`` / ``evaluate`` / ``certs`` CLI path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from clicooper.cli import app
from clicooper.config import make_config
from clicooper.core.builder import party_names
from clicooper.data import load_dataset
from clicooper.models.blueprint import blueprint_for
from clicooper.net.builder import node_party
from clicooper.net.launch import launch_local
from clicooper.runs import load_run
from clicooper.training import Session, train

TINY = {"dataset": "digits", "model": "digits-mlp", "train_range": (0, 320), "provenance": False}


def max_weight_diff(a: Path, b: Path) -> float:
    ra, rb = load_run(a), load_run(b)
    assert set(ra.modules) == set(rb.modules)
    return max(float((v - rb.modules[k].state_dict()[n]).abs().max())
               for k in ra.modules for n, v in ra.modules[k].state_dict().items())


def test_builder_mirrors_session() -> None:
    # prepare
    cfg = make_config(**(TINY | {"trainers": 3})).resolved(320)
    ds = load_dataset("digits")
    session = Session(cfg, ds, None)
    # execute
    built = {n: node_party(cfg, n, blueprint_for(cfg, ds.input_shape, ds.num_classes), dataset=ds if n == "DO" else None)
             for n in party_names(cfg)}
    # assert: same weights, same wiring, same optimizer settings
    for name, ref in session.parties.items():
        p = built[name].party
        assert type(p) is type(ref)
        for (k, v), (k2, v2) in zip(p.module.state_dict().items(), ref.module.state_dict().items(), strict=True):
            assert k == k2 and torch.equal(v, v2)
        assert p.optimizer.defaults["lr"] == ref.optimizer.defaults["lr"]
        if name != "DO":
            assert (p.left, p.right, p.holds_tail, p.input_shape) == (ref.left, ref.right, ref.holds_tail, ref.input_shape)


@pytest.mark.slow
def test_launch_matches_in_process_k3(tmp_path: Path) -> None:
    # prepare
    cfg = TINY | {"trainers": 3, "epochs": 2}
    ref = train(cfg, out=tmp_path / "inproc")
    # execute: plaintext loopback (TLS is covered by the K=2 CLI test)
    res = launch_local(cfg, tmp_path / "grpc", insecure_loopback=True, max_restarts=0, timeout_s=240)
    # assert
    assert res.restarts == 0
    assert max_weight_diff(ref.path, tmp_path / "grpc") < 1e-5
    m = json.loads((tmp_path / "grpc" / "metrics.json").read_text())
    m_ref = json.loads((ref.path / "metrics.json").read_text())
    assert [e["epoch"] for e in m["epochs"]] == [1, 2]
    assert abs(m["epochs"][-1]["loss"] - m_ref["epochs"][-1]["loss"]) < 1e-5


@pytest.mark.slow
def test_cli_launch_tls_k2_then_evaluate(tmp_path: Path) -> None:
    # prepare
    cfg = TINY | {"trainers": 2, "epochs": 1, "train_range": [0, 320]}
    cfg_file = tmp_path / "run.json"
    cfg_file.write_text(json.dumps(cfg))
    ref = train(TINY | {"trainers": 2, "epochs": 1}, out=tmp_path / "inproc")
    runner = CliRunner()
    # execute
    r = runner.invoke(app, ["launch", str(cfg_file), "--local", "--out", str(tmp_path / "run"), "--json"])
    ev = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--json"])
    # assert
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.strip().splitlines()[-1])
    assert summary["transport"] == "grpc pinned TLS" and summary["restarts"] == 0
    assert (tmp_path / "run" / "certs" / "fingerprints.json").is_file()
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.output.strip().splitlines()[-1])["test_acc"] == pytest.approx(summary["test_acc"])
    assert max_weight_diff(ref.path, tmp_path / "run") < 1e-5
    assert sorted(p.name for p in (tmp_path / "run" / "model").iterdir()) == sorted(
        p.name for p in (ref.path / "model").iterdir())


def test_cli_certs_lists_fingerprints(tmp_path: Path) -> None:
    # prepare
    cfg_file = tmp_path / "run.json"
    cfg_file.write_text(json.dumps(TINY | {"trainers": 3}))
    # execute
    r = CliRunner().invoke(app, ["certs", str(cfg_file), "--local", "--out", str(tmp_path / "certs"), "--json"])
    again = CliRunner().invoke(app, ["certs", str(cfg_file), "--local", "--out", str(tmp_path / "certs")])
    # assert
    assert r.exit_code == 0, r.output
    fps = json.loads(r.output.strip().splitlines()[-1])["fingerprints"]
    assert sorted(fps) == ["DO", "T1", "T2", "T3"] and all(len(v) == 64 for v in fps.values())
    assert (tmp_path / "certs" / "T2.key").stat().st_mode & 0o077 == 0
    assert again.exit_code != 0 and "already holds a certificate set" in again.output


# no bias before a BatchNorm: its gradient is zero up to rounding, which Adam would turn into ±lr steps
# that differ between two summation orders (tests/test_equivalence.py)
TINY_RESIDUAL_TOML = """
name = "tiny-residual"
[[layers]]
type = "Conv2d"
out_channels = 8
kernel_size = 3
padding = 1
bias = false
[[layers]]
type = "BatchNorm2d"
[[layers]]
type = "ReLU"
[[layers]]
type = "Residual"
body = [{ type = "Conv2d", out_channels = 8, kernel_size = 3, padding = 1, bias = false }, { type = "BatchNorm2d" },
        { type = "ReLU" }, { type = "Conv2d", out_channels = 8, kernel_size = 3, padding = 1 }]
[[layers]]
type = "ReLU"
[[layers]]
type = "Flatten"
[[layers]]
type = "Linear"
out_features = 32
[[layers]]
type = "ReLU"
[[layers]]
type = "Linear"
out_features = "outputs"
"""


@pytest.mark.slow
def test_launch_with_a_model_file_matches_in_process(tmp_path: Path) -> None:
    # prepare: a residual model with BatchNorm, from a model file, K = 2, one epoch, provenance off
    from clicooper.models.spec import load_model_file

    model_file = tmp_path / "tiny.toml"
    model_file.write_text(TINY_RESIDUAL_TOML)
    cfg = TINY | {"trainers": 2, "epochs": 1, "train_range": [0, 320]}
    cfg_file = tmp_path / "run.json"
    cfg_file.write_text(json.dumps(cfg))
    spec = load_model_file(model_file)
    ref = train(cfg | {"model": spec.name, "model_spec": spec.layers}, out=tmp_path / "inproc")
    # execute: every node builds its segment from RUN/config.json, which carries the model file's layers
    r = CliRunner().invoke(app, ["launch", str(cfg_file), "--local", "--insecure-loopback", "--model-file",
                                 str(model_file), "--out", str(tmp_path / "grpc"), "--json"])
    # assert
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "grpc" / "config.json").read_text())
    assert saved["model"] == "tiny-residual" and saved["model_spec"] == spec.layers
    assert max_weight_diff(ref.path, tmp_path / "grpc") < 1e-5
    assert any(k.endswith("running_mean") for k in load_run(tmp_path / "grpc").modules["T1"].state_dict())


@pytest.mark.slow
def test_launch_with_a_model_file_and_provenance_verifies(tmp_path: Path) -> None:
    # prepare
    from clicooper.models.spec import load_model_file

    (tmp_path / "tiny.toml").write_text(TINY_RESIDUAL_TOML)
    spec = load_model_file(tmp_path / "tiny.toml")
    cfg = TINY | {"trainers": 2, "epochs": 1, "provenance": True, "model": spec.name, "model_spec": spec.layers}
    # execute
    launch_local(cfg, tmp_path / "run", insecure_loopback=True, max_restarts=0, timeout_s=240)
    v = CliRunner().invoke(app, ["verify", str(tmp_path / "run"), "--json"])
    # assert: the genesis binds config.json (the layers included) and the rebuilt architecture
    assert v.exit_code == 0, v.output
    genesis = json.loads((tmp_path / "run" / "ledger.jsonl").read_text().splitlines()[0])
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert genesis["architecture_hash"] == plan["extra"]["architecture_hash"]
