"""The per-epoch learning-rate schedule (RunConfig.lr_schedule): one function of the epoch at every party,
so resume and every party's optimizer agree, and the DO-alone comparison follows it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from clicooper.config import make_config
from clicooper.training import train
from clicooper.training.do_alone import do_alone_accuracy
from tests.support.resume import interrupted_then_resumed

CFG = {"dataset": "digits", "model": "digits-mlp", "trainers": 2, "epochs": 3, "provenance": False,
       "train_range": (0, 320), "lr": 4e-3, "lr_schedule": "cosine"}


def test_lr_at_cosine_and_constant() -> None:
    c = make_config(**CFG)
    assert c.lr_at(0) == pytest.approx(4e-3)
    assert c.lr_at(1) == pytest.approx(4e-3 * 0.5 * (1 + math.cos(math.pi / 3)))
    assert c.lr_at(3) == pytest.approx(0.0, abs=1e-12) and c.lr_at(99) == c.lr_at(3)
    assert [c.lr_at(e) for e in range(3)] == sorted((c.lr_at(e) for e in range(3)), reverse=True)
    flat = make_config(**(CFG | {"lr_schedule": "constant"}))
    assert {flat.lr_at(e) for e in range(5)} == {4e-3}
    with pytest.raises(Exception, match="lr_schedule"):
        make_config(**(CFG | {"lr_schedule": "step"}))


def _lr_in_checkpoint(run: Path, r: int, party: str) -> float:
    with safe_open(str(run / "checkpoints" / f"round_{r}" / f"{party}.optim.safetensors"), "pt") as f:
        return json.loads(f.metadata()["param_groups"])[0]["lr"]


def test_every_party_steps_at_the_epochs_rate_and_a_resume_matches(tmp_path: Path) -> None:
    a = train(CFG, out=tmp_path / "a")
    c = make_config(**CFG)
    for party in ("DO", "T1", "T2"):  # each party set its Adam's rate from the epoch of what it stepped on
        assert [_lr_in_checkpoint(tmp_path / "a", r, party) for r in range(3)] == pytest.approx(
            [c.lr_at(r) for r in range(3)])

    b = interrupted_then_resumed(CFG, tmp_path / "cut")
    flat = train(CFG | {"lr_schedule": "constant"}, out=tmp_path / "flat")
    sa, sb, sf = (r.model.state_dict() for r in (a, b, flat))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # a resumed run continues the same schedule
    assert any(not torch.equal(sa[k], sf[k]) for k in sa)  # and the schedule did change the training


def test_do_alone_follows_the_schedule() -> None:
    from clicooper.data import load_dataset

    ds = load_dataset("digits")
    kw = {"train_range": (0, 320), "seed": 0, "lr": 4e-3}
    untrained = do_alone_accuracy("digits-mlp", ds, epochs=0, **kw)
    frozen = do_alone_accuracy("digits-mlp", ds, epochs=3, lr_at=lambda e: 0.0, **kw)  # rate 0: Adam moves nothing
    trained = do_alone_accuracy("digits-mlp", ds, epochs=3, lr_at=make_config(**CFG).lr_at, **kw)
    assert frozen == untrained and trained > untrained + 0.2


def test_weight_decay_gives_every_party_adamw(tmp_path: Path) -> None:
    from clicooper.core.builder import _optimizer

    w = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(_optimizer(make_config(weight_decay=0.05), w), torch.optim.AdamW)
    assert type(_optimizer(make_config(), w)) is torch.optim.Adam
    sgd = _optimizer(make_config(optimizer="sgd", lr=0.05, weight_decay=5e-4), w)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["nesterov"] and sgd.param_groups[0]["momentum"] == 0.9
    decayed = train(CFG | {"weight_decay": 0.05, "epochs": 1}, out=tmp_path / "wd")
    plain = train(CFG | {"epochs": 1}, out=tmp_path / "plain")
    for party in ("DO", "T1", "T2"):
        with safe_open(str(tmp_path / "wd" / "checkpoints" / "round_0" / f"{party}.optim.safetensors"), "pt") as f:
            assert json.loads(f.metadata()["param_groups"])[0]["weight_decay"] == 0.05
    a, b = decayed.model.state_dict(), plain.model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(Exception, match="weight_decay"):
        make_config(weight_decay=-1.0)


def test_sgd_with_momentum_resumes_to_the_same_weights(tmp_path: Path) -> None:
    cfg = CFG | {"optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4}
    a = train(cfg, out=tmp_path / "a")
    b = interrupted_then_resumed(cfg, tmp_path / "cut")  # the momentum buffers travel in the checkpoint
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())["epochs"]
    assert m[-1]["loss"] < m[0]["loss"]
