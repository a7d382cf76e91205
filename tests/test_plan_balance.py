"""A warning on a lopsided plan: the two-block model of docs/reference/cli.md with two trainers gives T1 a BatchNorm + ReLU
(0 % of the FLOPs); `plan` and `train` say so, and what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from clicooper.cli import app
from clicooper.models.partition import PartyPlan, Plan, balance_warning

runner = CliRunner()

# docs/reference/cli.md's "Your own model" example, verbatim in substance.
TINY_RESNET = '''name = "tiny-resnet"
[[layers]]
type = "Conv2d"
out_channels = 16
kernel_size = 3
padding = 1
bias = false
[[layers]]
type = "BatchNorm2d"
[[layers]]
type = "ReLU"
[[layers]]
type = "Residual"
body = [{ type = "Conv2d", out_channels = 32, kernel_size = 3, stride = 2, padding = 1, bias = false },
        { type = "BatchNorm2d" }, { type = "ReLU" },
        { type = "Conv2d", out_channels = 32, kernel_size = 3, padding = 1, bias = false }, { type = "BatchNorm2d" }]
shortcut = [{ type = "Conv2d", out_channels = 32, kernel_size = 1, stride = 2, bias = false }, { type = "BatchNorm2d" }]
[[layers]]
type = "ReLU"
[[layers]]
type = "AdaptiveAvgPool2d"
output_size = 1
[[layers]]
type = "Flatten"
[[layers]]
type = "Linear"
out_features = "outputs"
'''


def _plan(flops: list[int], caps: list[float] | None = None) -> Plan:
    parties = [PartyPlan(party="DO:head", position=0, layers=[0], layer_names=["Conv2d"], params=1, flops=10)]
    parties += [PartyPlan(party=f"T{i + 1}", position=i + 1, layers=[i + 1], layer_names=["Linear"], params=1,
                          flops=f) for i, f in enumerate(flops)]
    return Plan(model="m", topology="open-tail", trainers=len(flops), capacities=caps or [1.0] * len(flops),
                parties=parties, input_shape=[1, 8, 8], total_flops=sum(flops) + 10, do_flop_share=0.0)


def test_balance_rule() -> None:
    assert balance_warning(_plan([100, 90])) is None
    assert balance_warning(_plan([100])) is None  # one trainer: nothing to balance
    w = balance_warning(_plan([0, 100]))
    assert w is not None and "T1 gets 0.0%" in w and "--trainers 1" in w and "--capacities" in w
    assert balance_warning(_plan([300, 100], caps=[3, 1])) is None  # as the capacities ask
    w3 = balance_warning(_plan([10, 100, 100]))
    assert w3 is not None and "T1" in w3 and "T2" not in w3


@pytest.fixture
def tiny_resnet(tmp_path: Path) -> Path:
    f = tmp_path / "tiny-resnet.toml"
    f.write_text(TINY_RESNET)
    return f


def test_plan_warns_on_readme_tiny_resnet(tiny_resnet: Path) -> None:
    r = runner.invoke(app, ["plan", "--dataset", "digits", "--model-file", str(tiny_resnet), "--trainers", "2"],
                      env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())
    assert "lopsided plan" in text and "T1 gets 0.0%" in text and "--trainers 1" in text
    r = runner.invoke(app, ["plan", "--dataset", "digits", "--model", "digits-mlp", "--trainers", "2"])
    assert r.exit_code == 0 and "lopsided" not in r.stdout


@pytest.mark.slow
def test_train_warns_before_training(tiny_resnet: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["train", "--dataset", "digits", "--model-file", str(tiny_resnet), "--trainers", "2",
                            "--epochs", "1", "--train-range", "0:64", "--out", str(tmp_path / "R")])
    assert r.exit_code == 0, r.output
    warn = r.stderr.index("lopsided plan")
    assert warn < r.stderr.index("epoch 1:")  # said before the first epoch, while it can still be stopped
