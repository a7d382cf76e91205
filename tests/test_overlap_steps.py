"""RunConfig.overlap_steps: the DO sends step s + 1 while step s's gradients come back (the head one step
stale, the trainers and the tail exact). Opt-in; the same weights in-process, over gRPC and after a resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clicooper.config import make_config
from clicooper.errors import ConfigError, WireError
from clicooper.net.launch import launch_local
from clicooper.parties.trainer import Trainer
from clicooper.protocol.messages import Activations, Gradients, Header
from clicooper.training import train
from tests.support.resume import interrupted_then_resumed
from tests.test_node_contract import max_weight_diff

CFG = {"dataset": "digits", "model": "digits-mlp", "trainers": 2, "epochs": 2, "provenance": False,
       "train_range": (0, 320), "batch_size": 32, "micro_batches": 4, "overlap_steps": True}


def test_overlap_is_opt_in_and_refuses_what_assumes_one_step_in_flight() -> None:
    assert make_config(**(CFG | {"overlap_steps": False})).overlap_steps is False
    assert make_config(dataset="digits").overlap_steps is False
    with pytest.raises(ConfigError, match="overlap_steps is not combined with provenance"):
        make_config(**(CFG | {"provenance": True}))
    with pytest.raises(ConfigError, match="detection"):
        make_config(**(CFG | {"detection": {"enabled": True}}))


def test_one_step_a_round_is_exact_and_more_steps_train_a_stale_head(tmp_path: Path) -> None:
    # prepare: a round of one step has nothing to overlap (steps 0 and 1 use the round's first weights)
    one = CFG | {"batch_size": 320, "micro_batches": 4, "epochs": 3}
    # execute
    a = train(one, out=tmp_path / "one_ov")
    b = train(one | {"overlap_steps": False}, out=tmp_path / "one_exact")
    c = train(CFG, out=tmp_path / "ten_ov")
    d = train(CFG | {"overlap_steps": False}, out=tmp_path / "ten_exact")
    # assert: head and tail stepped apart == stepped together; with 10 steps a round the option changes the run
    assert max_weight_diff(a.path, b.path) < 1e-6
    assert max_weight_diff(c.path, d.path) > 1e-4


@pytest.mark.slow
def test_over_grpc_matches_in_process_and_a_resume(tmp_path: Path) -> None:
    # prepare
    ref = train(CFG, out=tmp_path / "inproc")
    # execute: nodes over loopback (the DO really runs ahead: T1 defers), and an interrupted in-process run
    launch_local(CFG, tmp_path / "grpc", insecure_loopback=True, max_restarts=0, timeout_s=240)
    resumed = interrupted_then_resumed(CFG, tmp_path / "resumed")
    # assert: timing does not enter the result
    assert max_weight_diff(ref.path, tmp_path / "grpc") < 1e-5
    assert max_weight_diff(ref.path, resumed.path) == 0.0


def test_trainer_defers_the_next_step_until_it_has_stepped() -> None:
    # prepare: T1 with one micro-batch of step 0 forwarded, step 1's activations arriving before its gradient
    torch.manual_seed(0)
    seg = torch.nn.Sequential(torch.nn.Linear(3, 2))
    t = Trainer("T1", seg, torch.optim.SGD(seg.parameters(), lr=0.5), left="DO", right="T2", input_shape=(3,))
    t.defer_ahead = True
    x0, x1 = torch.randn(4, 3), torch.randn(4, 3)
    assert len(t.handle(Activations(Header("DO", "T1", 0, 0, 0, 1), x0))) == 1
    w0 = seg[0].weight.detach().clone()
    # execute
    early = t.handle(Activations(Header("DO", "T1", 0, 1, 0, 1), x1))
    after = t.handle(Gradients(Header("T2", "T1", 0, 0, 0, 1), torch.ones(4, 2)))
    # assert: nothing until step 0 is stepped, then its gradient and step 1's forward at the new weights
    assert early == []
    assert [type(m).__name__ for m in after] == ["Gradients", "Activations"]
    assert not torch.equal(seg[0].weight, w0)
    assert torch.allclose(after[1].tensor, seg(x1).detach())
    # a DO two steps ahead is refused
    t.handle(Activations(Header("DO", "T1", 0, 2, 0, 1), x1))
    with pytest.raises(WireError, match="more than one step ahead"):
        t.handle(Activations(Header("DO", "T1", 0, 3, 0, 1), x1))
