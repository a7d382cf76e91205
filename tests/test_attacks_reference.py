"""FORA and SDAR at the reference code's size: the networks have the reference's layers (parameter counts at the
reference's CIFAR-10 shapes, counted by hand from X1aoyangXu/FORA ``model.py`` and zhxchd/SDAR_SplitNN
``attacker_models.py``), the ``full`` budget uses them at the reference's rates and iterations, every result
records what still differs from the reference, and a short run on digits carries a training record."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from clicooper.attacks import ForaAttack, SdarAttack
from clicooper.attacks.budgets import settings_for
from clicooper.attacks.fora import ForaConfig
from clicooper.attacks.reference_nets import (
    ForaCritic,
    ForaDecoder,
    SdarDecoder,
    SdarImageCritic,
    SdarSimulatorCritic,
)
from clicooper.attacks.sdar import SdarConfig
from clicooper.attacks.views import build_view
from clicooper.errors import AttackError
from test_attacks_common import ARCH, digits, write_run


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_fora_networks_are_the_reference_at_cifar_shapes() -> None:
    # level 2: MobileNet head → (64, 16, 16) on 32×32×3
    # critic: Conv 64→128, Conv 128→256, 6 ResBlocks (2 Conv 256→256 each), Conv 256→256, Linear 1024→1
    assert _params(ForaCritic((64, 16, 16))) == (64 * 128 * 9 + 128) + (128 * 256 * 9 + 256) \
        + 13 * (256 * 256 * 9 + 256) + 1025
    # decoder: ConvTranspose 64→256 + BN, Conv 256→3 + BN
    assert _params(ForaDecoder((64, 16, 16), (3, 32, 32))) == (64 * 256 * 9 + 256) + 512 + (256 * 3 * 9 + 3) + 6
    # fmnist-cnn's cut (32, 14, 14) gets the same layers, and the read-out the same 2 × 2 × 256 inputs
    critic = ForaCritic((32, 14, 14))
    assert critic.net[-1].in_features == 1024 and critic(torch.zeros(3, 32, 14, 14)).shape == (3,)
    dec = ForaDecoder((32, 14, 14), (1, 28, 28))
    with torch.no_grad():
        out = dec(torch.randn(4, 32, 14, 14))
    assert out.shape == (4, 1, 28, 28) and float(out.min()) >= 0 and float(out.max()) <= 1


def test_sdar_networks_are_the_reference_at_cifar_shapes() -> None:
    # level 4 of ResNet-20, standard width: cut (32, 16, 16) on 32×32×3
    decoder = (32 * 32 * 9 + 32) + 64 + (32 * 16 * 9 + 16) + 2 * (16 * 16 * 9 + 16) + 3 * 32 + (16 * 3 * 9 + 3)
    assert _params(SdarDecoder((32, 16, 16), (3, 32, 32))) == decoder
    e_dis = (32 * 64 * 9 + 64) + (64 * 128 * 9 + 128) + 256 + (128 * 256 * 9 + 256) + 512 \
        + 2 * (256 * 256 * 9 + 256 + 512) + (256 * 256 * 9 + 256) + (256 * 4 * 4 + 1)
    assert _params(SdarSimulatorCritic((32, 16, 16), (32, 32))) == e_dis
    d_dis = (3 * 64 * 9 + 64) + (64 * 128 * 9 + 128) + 256 + (128 * 128 * 9 + 128) + 256 + (128 * 256 * 9 + 256) \
        + (256 * 4 * 4 + 1)
    assert _params(SdarImageCritic((3, 32, 32))) == d_dis
    for m, x in ((SdarDecoder((32, 14, 14), (1, 28, 28)), torch.randn(4, 32, 14, 14)),
                 (SdarDecoder((64,), (1, 28, 28)), torch.randn(4, 64))):
        assert m(x).shape == (4, 1, 28, 28)
    assert SdarSimulatorCritic((64,), (28, 28))(torch.randn(4, 64)).shape == (4,)
    assert ForaCritic((64,))(torch.randn(4, 64)).shape == (4,)


def test_full_budget_runs_the_reference_size_and_records_what_differs() -> None:
    fora, sdar = settings_for("full", "fora")["config"], settings_for("full", "sdar")["config"]
    assert fora == {"arch": "reference", "lr": 1e-4, "steps": 40000}
    assert sdar == {"arch": "reference", "batch": 128, "steps": 20000}
    ref = {d["setting"] for d in ForaConfig(**fora).differences()}
    assert not ref & {"lr", "critic_lr", "batch", "steps", "critic", "decoder"}  # the reference's own
    small = {d["setting"]: d for d in ForaConfig(**settings_for("demo", "fora")["config"]).differences()}
    assert small["lr"]["reference"] == "0.0001" and small["lr"]["ours"] == "0.001"
    assert "ResBlocks" in small["critic"]["reference"] and small["steps"]["ours"] == "2400"
    assert {"batch", "steps"} <= {d["setting"] for d in SdarConfig(**settings_for("demo", "sdar")["config"]).differences()}
    assert not {d["setting"] for d in SdarConfig(**sdar).differences()} & {"batch", "e_lr", "decoder"}


def test_reference_size_refuses_a_width_and_an_unknown_arch() -> None:
    with pytest.raises(AttackError, match="reference's widths"):
        ForaConfig(arch="reference", width=16)
    with pytest.raises(AttackError, match="reference's widths"):
        SdarConfig(arch="reference", width=8)
    with pytest.raises(AttackError, match="small or reference"):
        ForaConfig(arch="large")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("reference"), rows=300)


def test_reference_size_runs_and_records_training_and_differences(run_dir: Path) -> None:
    views = build_view(run_dir, "T1", ("zero", "aux"), architecture=ARCH, dataset=digits(), victims=20)
    res = ForaAttack(steps=4, arch="reference", lr=1e-4, victims=20).run(views)
    tr = res.levels["fora"].metrics["training"]
    assert len(tr["aux_mse"]) == 3 and len(tr["mmd"]) == 3 and tr["mean_image_mse"] > 0
    assert tr["fitted"] == (tr["aux_mse"][-1] <= 0.5 * tr["mean_image_mse"])
    assert res.info["config"]["arch"] == "reference" and res.info["differences_from_reference"][0]["setting"] == "substitute"
    assert res.info["train_seconds"]["wall"] > 0
    pool = build_view(run_dir, "pool", ("zero", "aux"), architecture=ARCH, dataset=digits(), victims=20)
    sres = SdarAttack(steps=4, arch="reference", batch=32, victims=20).run(pool)
    assert len(sres.levels["sdar"].metrics["training"]["aux_mse"]) == 3
    assert {d["setting"] for d in sres.info["differences_from_reference"]} >= {"batch", "steps"}
