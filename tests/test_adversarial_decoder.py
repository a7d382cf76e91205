"""ResSFL-style adversarial training of the DO's head (RunConfig.adversarial_decoder; privacy/adversarial.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clicooper.config import make_config
from clicooper.privacy.adversarial import InversionAdversary


def test_the_decoder_learns_and_the_head_term_pushes_against_it() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(256, 1, 8, 8, generator=g)
    head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16))
    adv = InversionAdversary((16,), (1, 8, 8), weight=1.0, hidden=64, lr=1e-2, seed=0)
    with torch.no_grad():
        z = head(x)
    losses = [adv.step(z, x) for _ in range(300)]
    assert losses[-1] < 0.65 * losses[0]  # it learns to invert the (fixed) head (uniform noise through a 16-d cut)
    # one gradient step of the head on the term raises this decoder's reconstruction error
    adv.optimizer.zero_grad(set_to_none=True)
    term = adv.head_term(head(x), x)
    assert term.item() < 0
    term.backward()
    grads = [p.grad for p in head.parameters()]
    assert all(gr is not None for gr in grads)
    assert all(p.grad is None for p in adv.decoder.parameters())  # the term never trains the decoder
    with torch.no_grad():
        before = torch.nn.functional.mse_loss(adv.decoder(head(x)), x.flatten(1)).item()
        for p, gr in zip(head.parameters(), grads, strict=True):
            p -= 0.05 * gr
        after = torch.nn.functional.mse_loss(adv.decoder(head(x)), x.flatten(1)).item()
    assert after > before
    assert adv.flops_per_sample() == 2 * 2 * 3 * (16 * 64 + 64 * 64)


def test_its_own_init_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    a = torch.rand(3)
    torch.manual_seed(123)
    InversionAdversary((4, 7, 7), (1, 28, 28), weight=1.0)
    assert torch.equal(torch.rand(3), a)
    with pytest.raises(ValueError, match="λ"):
        InversionAdversary((4,), (1, 8, 8), weight=0.0)


def test_a_run_trains_with_it(tmp_path: Path) -> None:
    from clicooper.training import train

    heads = {}
    for lam in (0.0, 5.0):
        out = tmp_path / f"l{lam:g}"
        train({"dataset": "digits", "model": "digits-cnn", "trainers": 2, "epochs": 1, "seed": 0, "provenance": False,
               "adversarial_decoder": lam}, out=out)
        assert json.loads((out / "metrics.json").read_text())["final_test_acc"] > 0.3
        heads[lam] = load_file(out / "model" / "head.safetensors")
    assert any(not torch.equal(heads[0.0][k], heads[5.0][k]) for k in heads[0.0])


def test_config_validates_it() -> None:
    base = {"dataset": "digits", "model": "digits-mlp", "provenance": False}
    assert make_config(**base, adversarial_decoder=2.0).adversarial_decoder == 2.0
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError):
            make_config(**base, adversarial_decoder=bad)
    with pytest.raises(ValueError, match="secret-random"):
        make_config(**base, adversarial_decoder=1.0, head_mode="secret-random")
