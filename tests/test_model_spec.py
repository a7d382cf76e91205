"""Declarative models (issue 13): model files, the allowlist, errors that name the layer, built-ins written as
specs (bit-identical weights), the Python API's own ``nn.Sequential`` and the CLI's ``--model-file``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

import clicooper
from clicooper.cli import app
from clicooper.errors import ConfigError
from clicooper.export import export_run
from clicooper.models import zoo
from clicooper.models.blocks import Residual
from clicooper.models.describe import describe
from clicooper.models.partition import make_plan
from clicooper.models.spec import build_model, load_model_file

TINY_RESNET_TOML = """
name = "tiny-resnet"
[[layers]]
type = "Conv2d"
out_channels = 8
kernel_size = 3
padding = 1
[[layers]]
type = "BatchNorm2d"
[[layers]]
type = "ReLU"
[[layers]]
type = "Residual"
body = [
  { type = "Conv2d", out_channels = 16, kernel_size = 3, stride = 2, padding = 1 },
  { type = "GroupNorm", num_groups = 4 },
  { type = "ReLU" },
  { type = "Conv2d", out_channels = 16, kernel_size = 3, padding = 1 },
]
shortcut = [{ type = "Conv2d", out_channels = 16, kernel_size = 1, stride = 2 }]
[[layers]]
type = "ReLU"
[[layers]]
type = "Flatten"
[[layers]]
type = "Linear"
out_features = 32
[[layers]]
type = "LayerNorm"
[[layers]]
type = "ReLU"
[[layers]]
type = "Linear"
out_features = "outputs"
"""


# -------------------------------------------------------------------------------- the builders before issue 13
def _fmnist_cnn_code(c: int, n: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, n))


def _digits_mlp_code(f: int, n: int) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(f, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, n))


def _digits_cnn_code(c: int, h: int, w: int, n: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * (h // 2) * (w // 2), 64), nn.ReLU(),
                         nn.Linear(64, n))


@pytest.mark.parametrize(("name", "shape", "code"), [
    ("fmnist-cnn", (1, 28, 28), lambda n: _fmnist_cnn_code(1, n)),
    ("digits-mlp", (1, 8, 8), lambda n: _digits_mlp_code(64, n)),
    ("digits-cnn", (1, 8, 8), lambda n: _digits_cnn_code(1, 8, 8, n)),
])
@pytest.mark.parametrize(("seed", "outputs"), [(0, 10), (7, 20)])
def test_builtin_specs_give_the_code_builders_weights_bit_for_bit(name: str, shape: tuple[int, ...], code,  # noqa: ANN001
                                                                   seed: int, outputs: int) -> None:
    # prepare: the builder as it was written in code before the zoo moved to specs
    torch.manual_seed(seed)
    ref = code(outputs)
    # execute
    got = zoo.build(name, shape, outputs, seed=seed)
    # assert
    assert zoo.spec_of(name) is not None and repr(got) == repr(ref)
    assert got.state_dict().keys() == ref.state_dict().keys()
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in got.state_dict().items())


def test_toml_and_json_model_files_build_the_same_model(tmp_path: Path) -> None:
    # prepare
    (tmp_path / "m.toml").write_text(TINY_RESNET_TOML)
    spec = load_model_file(tmp_path / "m.toml")
    (tmp_path / "m.json").write_text(json.dumps({"layers": spec.layers}))
    # execute
    again = load_model_file(tmp_path / "m.json")
    model = zoo.build_spec(spec.layers, (1, 8, 8), 10, seed=3)
    # assert
    assert spec.name == "tiny-resnet" and again.name == "m" and again.layers == spec.layers
    assert isinstance(model[3], Residual) and model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert repr(zoo.build_spec(again.layers, (1, 8, 8), 10, seed=3)) == repr(model)


_CONV8 = {"type": "Conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1}
_HEAD = [{"type": "Flatten"}, {"type": "Linear", "out_features": "outputs"}]


@pytest.mark.parametrize(("layers", "message"), [
    ([{"type": "Conv3d"}], "layer 0: unknown layer type 'Conv3d'; allowed: "),
    ([_CONV8 | {"kernal": 3}], "layer 0 (Conv2d): unknown argument 'kernal'"),
    ([_CONV8 | {"out_channels": 8.0}], "layer 0 (Conv2d): out_channels=8.0 is invalid"),
    ([{"type": "Conv2d", "out_channels": 8}], "layer 0 (Conv2d): missing argument kernel_size"),
    ([_CONV8, {"type": "ReLU"}, _CONV8, _CONV8 | {"in_channels": 16}, *_HEAD],
     "layer 3 (Conv2d): in_channels=16 but the input has 8 channels"),
    ([_CONV8, {"type": "Flatten"}, {"type": "Linear", "in_features": 5, "out_features": "outputs"}],
     "layer 2 (Linear): in_features=5 but the input has 512 features"),
    ([_CONV8, {"type": "Residual", "body": [_CONV8 | {"stride": 2}]}, *_HEAD],
     "layer 1 (Residual): the body gives (8, 4, 4) per sample but the shortcut gives (8, 8, 8)"),
    ([_CONV8, {"type": "Residual", "body": [{"type": "BatchNorm2d", "num_features": 4}]}, *_HEAD],
     "layer 1 (Residual) body layer 0 (BatchNorm2d): num_features=4 but the input has 8 channels"),
    ([_CONV8, {"type": "Flatten"}, {"type": "Linear", "out_features": 7}], "needs (10,)"),
    ([_CONV8, {"type": "BatchNorm1d"}], "layer 1 (BatchNorm1d): takes inputs of 1 or 2 dimension(s)"),
    ([{"type": "GroupNorm", "num_groups": 3}], "layer 0 (GroupNorm): num_channels (1) must be divisible"),
    ([{"type": "Conv2d", "out_channels": 8, "kernel_size": 30}], "layer 0 (Conv2d): cannot take an input"),
    ([{"type": "Flatten", "start_dim": 0}, *_HEAD], "layer 0 (Flatten): its output mixes the samples"),
    ([{"type": "Residual", "body": [], "extra": 1}], "layer 0 (Residual): unknown key extra"),
    ({"type": "ReLU"}, "layers must be a non-empty list"),
])
def test_errors_name_the_layer(layers: object, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        build_model(layers, (1, 8, 8), 10)
    assert message in str(e.value)


def test_model_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[layers]]\ntype = "Lambda"\n')
    with pytest.raises(ConfigError, match=r"bad.toml: layer 0: unknown layer type 'Lambda'"):
        load_model_file(bad)
    (tmp_path / "x.toml").write_text('layers = 3\nimport = "os"\n')
    with pytest.raises(ConfigError, match="unknown top-level key import"):
        load_model_file(tmp_path / "x.toml")


def _user_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8, momentum=0.2), nn.ReLU(inplace=True),
        Residual(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.LeakyReLU(0.1)),
                 nn.Sequential(nn.Identity())),
        nn.MaxPool2d(2), nn.Dropout(0.1), nn.Flatten(), nn.Linear(128, 32), nn.LayerNorm(32), nn.GELU(),
        nn.Linear(32, 10))


def test_describe_rebuilds_the_users_sequential() -> None:
    # prepare
    torch.manual_seed(0)
    user = _user_model()
    # execute
    spec = describe(user)
    rebuilt = build_model(json.loads(json.dumps(spec)), (1, 8, 8), 10)  # the spec is plain JSON
    rebuilt.load_state_dict(user.state_dict())
    # assert
    assert repr(rebuilt) == repr(user).replace("inplace=True", "")
    user.eval(), rebuilt.eval()
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(rebuilt(x), user(x))


class _Scaled(nn.Linear):
    pass


@pytest.mark.parametrize("bad", [
    nn.Sequential(nn.Flatten(), _Scaled(64, 10)),
    nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(64, 10))),
    nn.Sequential(nn.Flatten(), nn.Bilinear(64, 64, 10)),
])
def test_describe_refuses_what_it_cannot_rebuild(bad: nn.Sequential) -> None:
    with pytest.raises(ConfigError, match=r"layer 1 \(\w+\) is not an allowlisted layer.*model file"):
        describe(bad)


def test_python_api_trains_the_users_sequential_and_export_loads_into_it(tmp_path: Path) -> None:
    # prepare
    torch.manual_seed(5)
    user = _user_model()
    initial = {k: v.clone() for k, v in user.state_dict().items()}
    cfg = {"dataset": "digits", "model": "my-net", "trainers": 2, "epochs": 1, "train_range": [0, 160],
           "provenance": False}
    # execute
    run = clicooper.train(cfg, out=tmp_path / "run", model=user)
    export_run(tmp_path / "run", tmp_path / "m.safetensors")
    # assert: the run started from the user's weights and its export loads into the user's own object
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"] == "my-net" and saved["model_spec"] == describe(user)
    start = load_file(tmp_path / "run" / "initial_model.safetensors")
    assert all(torch.equal(start[k], v) for k, v in initial.items())
    user.load_state_dict(load_file(tmp_path / "m.safetensors"))
    x = run.dataset().x_test[:64]
    assert torch.allclose(user.eval()(x).softmax(1), clicooper.load_run(tmp_path / "run").predict(x), atol=1e-6)
    assert not all(torch.equal(user.state_dict()[k], v) for k, v in initial.items())  # it trained


def test_a_cut_never_falls_inside_a_residual_block() -> None:
    # prepare: the residual block holds nearly all FLOPs, so a FLOP-balanced cut would want to split it
    heavy = {"type": "Residual", "body": [_CONV8 | {"out_channels": 64}, {"type": "ReLU"}, _CONV8 | {"out_channels": 64},
                                          {"type": "ReLU"}, _CONV8]}
    layers = [_CONV8, heavy, {"type": "ReLU"}, _CONV8, {"type": "Flatten"}, {"type": "Linear", "out_features": 16},
              {"type": "Linear", "out_features": "outputs"}]
    model = build_model(layers, (1, 8, 8), 10)
    # execute
    plan = make_plan(model, model_name="x", input_shape=(1, 8, 8), trainers=2)
    # assert: layer 1 (the block) and its ReLU belong to one trainer, whole
    owner = [p for p in plan.parties if 1 in p.layers]
    assert len(owner) == 1 and owner[0].party == "T1" and {1, 2} <= set(owner[0].layers)
    assert owner[0].layer_names[:2] == ["Residual", "ReLU"]


def test_cli_plan_and_train_take_a_model_file(tmp_path: Path) -> None:
    # prepare
    f = tmp_path / "tiny.toml"
    f.write_text(TINY_RESNET_TOML)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"layers": [_CONV8, _CONV8 | {"in_channels": 3}]}))
    runner = CliRunner()
    # execute
    plan = runner.invoke(app, ["plan", "--dataset", "digits", "--model-file", str(f), "--json"])
    refused = runner.invoke(app, ["plan", "--dataset", "digits", "--model-file", str(bad)])
    both = runner.invoke(app, ["plan", "--dataset", "digits", "--model", "digits-mlp", "--model-file", str(f)])
    trained = runner.invoke(app, ["train", "--dataset", "digits", "--model-file", str(f), "--epochs", "1",
                                  "--train-range", "0:96", "--out", str(tmp_path / "run"), "--json"])
    # assert
    assert plan.exit_code == 0, plan.output
    p = json.loads(plan.output.strip().splitlines()[-1])
    assert p["model"] == "tiny-resnet" and len(p["extra"]["architecture_hash"]) == 64
    assert refused.exit_code != 0 and "layer 1 (Conv2d): in_channels=3 but the input has 8 channels" in refused.output
    assert both.exit_code != 0 and "not both" in both.output
    assert trained.exit_code == 0, trained.output
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"] == "tiny-resnet" and cfg["model_spec"] == load_model_file(f).layers
    saved_plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert saved_plan["extra"]["architecture_hash"] == p["extra"]["architecture_hash"]
    ev = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--json"])
    assert ev.exit_code == 0, ev.output


@pytest.mark.parametrize(("name", "shape", "n_blocks"), [("fmnist-resnet", (1, 28, 28), 3),
                                                      ("fmnist-resnet20", (1, 28, 28), 9),
                                                      ("cifar-resnet", (3, 32, 32), 3)])
def test_builtin_resnets_give_the_do_one_convolution_and_the_trainers_the_blocks(name: str, shape: tuple[int, ...],
                                                                                 n_blocks: int) -> None:
    # prepare
    model = zoo.build(name, shape, 10, seed=0)
    # execute
    plan = make_plan(model, model_name=name, input_shape=shape, trainers=2)
    # assert: head = one convolution (its unit), tail = the classifier, every residual block at a trainer
    assert plan.head.layer_names == ["Conv2d"] and plan.tail is not None
    assert plan.tail.layer_names == ["Flatten", "Linear"]
    assert plan.do_flop_share <= 0.10
    blocks = [i for i, m in enumerate(model) if isinstance(m, Residual)]
    assert len(blocks) == n_blocks
    assert sorted(i for p in plan.segments for i in p.layers if i in blocks) == blocks
    with pytest.raises(ConfigError, match="expects"):
        zoo.build(name, (shape[0], 8, 8), 10, seed=0)


def test_the_documented_model_file_builds(tmp_path: Path) -> None:
    # prepare: the example of docs/reference/cli.md "Your own model"
    text = (Path(__file__).parents[1] / "docs" / "reference" / "cli.md").read_text("utf-8")
    block = text.split("## Your own model", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "model.toml").write_text(block)
    # execute
    mf = load_model_file(tmp_path / "model.toml")
    model = zoo.build_spec(mf.layers, (1, 28, 28), 10, seed=0)
    # assert
    assert mf.name == "tiny-resnet" and isinstance(model[3], Residual)
    assert make_plan(model, model_name=mf.name, input_shape=(1, 28, 28), trainers=1).head.layer_names == ["Conv2d"]


def test_a_received_spec_cannot_ask_for_a_huge_layer() -> None:
    huge = [{"type": "Flatten"}, {"type": "Linear", "out_features": 65536}, {"type": "Linear", "out_features": 65536}]
    with pytest.raises(ConfigError, match=r"layer 2 \(Linear\): its weight would have more than"):
        build_model(huge, (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="out_channels=100000 is invalid"):
        build_model([{"type": "Conv2d", "out_channels": 100000, "kernel_size": 1}], (1, 8, 8), 10)
