"""The secret random head (RunConfig.head_mode = "secret-random"; privacy/random_head.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clicooper.config import make_config
from clicooper.models import zoo
from clicooper.privacy.random_head import draw_secret_head, head_key
from clicooper.privacy.secrets import NOISE_SECRET, load_secret


def _head(seed: int = 0) -> torch.nn.Module:
    return zoo.build("fmnist-resnet-s8", (1, 28, 28), 10, seed=seed)[0]


def test_the_draw_is_keyed_kaiming_and_frozen() -> None:
    k1, k2 = bytes(range(32)), bytes(range(1, 33))
    a, b, c = _head(0), _head(1), _head(0)
    draw_secret_head(a, k1)
    draw_secret_head(b, k1)  # another public init, the same key: the same head
    draw_secret_head(c, k2)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        assert not pa.requires_grad and torch.equal(pa, pb), name
        if pa.dim() >= 2:
            assert not torch.equal(pa, pc), name
            assert pa.std().item() == pytest.approx((2.0 / pa[0].numel()) ** 0.5, rel=0.15), name
        else:
            assert torch.count_nonzero(pa) == 0, name
    with pytest.raises(Exception, match="head key"):
        draw_secret_head(a, b"short")


def test_a_run_trains_around_the_frozen_secret_head(tmp_path: Path) -> None:
    from clicooper.training import train

    out = tmp_path / "run"
    train({"dataset": "digits", "model": "digits-cnn", "trainers": 2, "epochs": 2, "seed": 0, "provenance": False,
           "head_mode": "secret-random"}, out=out)
    saved = load_file(out / "model" / "head.safetensors")
    expected = zoo.build("digits-cnn", (1, 8, 8), 10, seed=0)[:2]  # the head unit: Conv2d + ReLU
    public = {k: v.clone() for k, v in expected.state_dict().items()}
    draw_secret_head(expected, head_key(load_secret(out, NOISE_SECRET)))
    for k, v in expected.state_dict().items():
        assert torch.equal(saved[k], v), k  # never trained: exactly the keyed draw
        if v.dim() >= 2:
            assert not torch.equal(v, public[k]), k  # and not the public seed's init
    acc = json.loads((out / "metrics.json").read_text())["final_test_acc"]
    assert acc > 0.5  # the trainers and the DO's tail learn around it (chance is 0.1)


def test_config_refuses_what_would_train_a_frozen_head() -> None:
    base = {"dataset": "digits", "model": "digits-mlp", "provenance": False, "head_mode": "secret-random"}
    assert make_config(**base).head_mode == "secret-random"
    for extra in ({"topology": "open-tail"}, {"nopeek": 1.0}):
        with pytest.raises(ValueError, match="secret-random"):
            make_config(**base, **extra)
    with pytest.raises(ValueError):
        make_config(**base | {"head_mode": "random"})
