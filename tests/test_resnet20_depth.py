"""The depth axis of ``fmnist-resnet20``: residual blocks moved into the DO's head, and a thicker DO tail
(a small MLP, or the last residual block). No training: each variant builds, the plan puts the intended layers
at the DO, its DO share is what ``clicooper plan`` prints, the trainers keep the blocks that were not moved,
and ``fmnist-resnet20`` itself keeps its weights."""

from __future__ import annotations

import hashlib
import re

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from clicooper.cli import app
from clicooper.config import RunConfig
from clicooper.errors import ConfigError
from clicooper.models import zoo
from clicooper.models.blocks import Residual
from clicooper.models.blueprint import blueprint_for
from clicooper.models.partition import Plan, make_plan, split_model
from tests.conftest import needs_fmnist

SHAPE = (1, 28, 28)
VARIANTS = [(h, t) for h in zoo.RESNET20_HEADS for t in zoo.RESNET20_TAILS]
#: the DO's FLOP share of each variant at K = 2 (counted by ``make_plan``); ≤ 15 % fits the goal
SHARES = {(0, "linear"): 0.0024, (0, "mlp"): 0.0033, (0, "block"): 0.1190, (1, "linear"): 0.1190,
          (1, "mlp"): 0.1198, (1, "block"): 0.2356, (2, "linear"): 0.2356, (2, "mlp"): 0.2363, (2, "block"): 0.3522}


def _plan(name: str) -> tuple[nn.Sequential, Plan]:
    model = zoo.build(name, SHAPE, 10, seed=0)
    return model, make_plan(model, model_name=name, input_shape=SHAPE, trainers=2)


def _blocks(m: nn.Module) -> list[Residual]:
    return [x for x in m.modules() if isinstance(x, Residual)]


def _state_hash(m: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in m.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_fmnist_resnet20_keeps_its_weights() -> None:
    """The reference's seeded initial weights (names and values) are those it had before the variants."""
    assert _state_hash(zoo.build("fmnist-resnet20", SHAPE, 10, seed=0)) == \
        "411d7d707da1f894e95e24e7291845c9b0c3d33b62cc272c636786c93e90b071"


def test_names() -> None:
    assert zoo.resnet20_depth_name(0, "linear") == "fmnist-resnet20"
    assert zoo.resnet20_depth_name(1, "mlp") == "fmnist-resnet20-h1-tmlp"
    assert zoo.resnet20_depth_name(0, "block") == "fmnist-resnet20-tblock"
    assert {zoo.resnet20_depth_name(h, t) for h, t in VARIANTS} <= set(zoo.names())
    with pytest.raises(ConfigError):
        zoo.resnet20_depth_name(3, "linear")


@pytest.mark.parametrize(("h", "t"), VARIANTS)
def test_variant_puts_the_intended_layers_at_the_do(h: int, t: str) -> None:
    name = zoo.resnet20_depth_name(h, t)
    model, plan = _plan(name)
    parts = split_model(model, plan)
    head, tail = parts["DO:head"], parts["DO:tail"]
    # head: the stem, and h residual blocks of the first stage (16 channels, the cut stays 16×28×28)
    assert len(_blocks(head)) == h
    assert plan.head.output_shape == [16, 28, 28]
    assert sum(isinstance(x, nn.Conv2d) for x in head.modules()) == 1 + 2 * h
    # tail: the Linear; an MLP of three Linears; or the last (64-channel) block, pooling and the Linear
    linears = [x for x in tail.modules() if isinstance(x, nn.Linear)]
    assert len(linears) == {"linear": 1, "mlp": 3, "block": 1}[t]
    assert len(_blocks(tail)) == (1 if t == "block" else 0)
    if t == "block":
        assert [c.out_channels for c in tail.modules() if isinstance(c, nn.Conv2d)] == [64, 64]
        assert plan.segments[-1].output_shape == [64, 7, 7]
    # the trainers hold the remaining blocks of the nine
    trainer_blocks = [b for seg in plan.segments for b in _blocks(parts[seg.party])]
    assert len(trainer_blocks) == 9 - h - (t == "block")
    # no BatchNorm at the DO (a DP release of batch statistics is refused), BatchNorm kept at the trainers
    for part in (head, tail):
        assert not any(isinstance(x, nn.BatchNorm2d) for x in part.modules())
    assert all(any(isinstance(x, nn.BatchNorm2d) for x in b.modules()) for b in trainer_blocks)
    assert plan.do_flop_share == pytest.approx(SHARES[(h, t)], abs=5e-5)
    assert (plan.do_flop_share <= 0.15) == ((h, t) in {(0, "linear"), (0, "mlp"), (0, "block"), (1, "linear"),
                                                      (1, "mlp")})
    assert model(torch.zeros(2, *SHAPE)).shape == (2, 10)


@pytest.mark.parametrize(("h", "t"), [v for v in VARIANTS if v != (0, "linear")])
def test_trainer_blocks_are_the_references(h: int, t: str) -> None:
    """The blocks left at the trainers are the reference's blocks (same order, same parameter shapes):
    a variant only moves blocks to the DO, it does not reshape the rest."""
    ref = [[tuple(p.shape) for p in b.parameters()] for b in _blocks(zoo.build("fmnist-resnet20", SHAPE, 10, seed=0))]
    model, plan = _plan(zoo.resnet20_depth_name(h, t))
    parts = split_model(model, plan)
    got = [[tuple(p.shape) for p in b.parameters()] for seg in plan.segments for b in _blocks(parts[seg.party])]
    assert got == ref[h:len(ref) - (t == "block")]


@pytest.mark.parametrize(("h", "t"), [(1, "block"), (2, "mlp")])
def test_dp_defense_accepts_a_variant(h: int, t: str) -> None:
    """The DO's blocks use GroupNorm, so a run with noised releases builds (BatchNorm there is refused)."""
    cfg = RunConfig(dataset="fashion-mnist", model=zoo.resnet20_depth_name(h, t), trainers=2, defense="clicooper",
                    dp={"sigma": 0.01, "clip_norm": 1.0})
    bp = blueprint_for(cfg, SHAPE, 10)
    assert bp.cut_shape == (16, 28, 28)


@needs_fmnist
@pytest.mark.parametrize("name", ["fmnist-resnet20-h1-tmlp", "fmnist-resnet20-h2"])
def test_share_is_what_plan_prints(name: str) -> None:
    r = CliRunner().invoke(app, ["plan", "--dataset", "fashion-mnist", "--model", name, "--trainers", "2"],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    printed = float(re.search(r"data owner's share of training FLOPs: ([\d.]+)%", r.output).group(1))
    assert printed == pytest.approx(100 * _plan(name)[1].do_flop_share, abs=0.05)


def test_variant_refuses_other_inputs() -> None:
    with pytest.raises(ConfigError, match="28×28"):
        zoo.build("fmnist-resnet20-h1", (1, 32, 32), 10, seed=0)
