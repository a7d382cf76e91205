"""Watermark removal attack (issue 6) on a tiny digits run: registered, runs, reports every attack;
the function-preserving permutation keeps accuracy and ownership is still proven after alignment."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clicooper.attacks import get, names
from clicooper.attacks.removal import RemovalAttack, permute_rescale, prune, quantize_int8
from clicooper.errors import AttackError
from clicooper.runs import load_run
from clicooper.training import train

torch.set_num_threads(1)
CFG = {"dataset": "digits", "model": "digits-mlp", "trainers": 2, "epochs": 2, "provenance": True}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("removal") / "run"
    train(CFG, out=out)
    return out


@pytest.fixture(scope="module")
def result(run: Path) -> dict:
    attack = get("removal")(epochs=2, prune_levels=(0.5, 0.9), unrelated=3)
    return attack.run(run).to_json()


def _rows(result: dict, attack: str) -> list[dict]:
    return [r for r in result["info"]["rows"] if r["attack"] == attack]


def test_registered_and_validated() -> None:
    assert "removal" in names() and get("removal") is RemovalAttack
    with pytest.raises(AttackError):
        RemovalAttack(fraction=0.0)
    with pytest.raises(AttackError):
        RemovalAttack(attacks=["melt"])


def test_every_attack_reported_with_accuracy_and_verdicts(result: dict) -> None:
    info = result["info"]
    assert info["attacker_data"]["samples"] > 0
    attacks = {r["attack"] for r in info["rows"]}
    assert attacks == {"none", "finetune-last", "finetune-all", "retrain-last", "prune-global", "prune-layer",
                       "int8", "permute-rescale", "overwrite"}
    marked = set(info["owners"])
    assert marked == {"0", "1", "2"}  # digits-mlp: head and both trainer segments marked, tail too small
    for r in info["rows"]:
        assert 0.0 <= r["test_acc"] <= 1.0
        assert set(r["positions"]) == marked
        for v in r["positions"].values():
            assert {"verdict", "wrong_bits", "n_bits", "tau", "p_value"} <= set(v)
    none = _rows(result, "none")[0]
    assert all(v["verdict"] and v["wrong_bits"] == 0 for v in none["positions"].values())
    assert all(v["verdict"] for r in _rows(result, "int8") for v in r["positions"].values())


def test_heavy_pruning_is_reported(result: dict) -> None:
    rows = {(r["attack"], r["setting"]): r for r in result["info"]["rows"] if r["attack"].startswith("prune")}
    for kind in ("prune-global", "prune-layer"):
        r90 = rows[(kind, 0.9)]
        assert {"test_acc", "acc_drop", "destroyed", "positions"} <= set(r90)
        assert r90["test_acc"] <= rows[(kind, 0.5)]["test_acc"] + 0.05


def test_permutation_preserves_function_and_is_undone(run: Path, result: dict) -> None:
    r = _rows(result, "permute-rescale")[0]
    assert r["max_logit_diff"] < 1e-3
    assert abs(r["acc_drop"]) < 1e-9  # accuracy unchanged
    assert all(v["verdict"] and v["aligned"] for v in r["positions"].values())  # proven after alignment
    # without alignment the scrambled bits are no longer the mark
    assert not any(v["verdict"] for v in r["unaligned"].values())
    # the helpers on their own
    h = load_run(run)
    m = h.full_model()
    x = h.dataset().x_test[:64]
    with torch.no_grad():
        assert torch.allclose(m(x), permute_rescale(m, 7)(x), atol=1e-4)
        q = quantize_int8(m)
        assert all(p.unique().numel() <= 255 for p in q.parameters())
        pr = prune(m, 0.9, per_layer=False)
        ws = torch.cat([pr[i].weight.flatten() for i in (1, 3, 5, 7, 9)])
        assert 0.88 <= float((ws == 0).float().mean()) <= 0.92


def test_overwrite_and_unrelated(result: dict) -> None:
    ow = _rows(result, "overwrite")[0]
    assert all(v["wrong"] == 0 for v in ow["attacker_mark"].values())  # the attacker's mark is in
    un = result["info"]["unrelated"]
    assert un["models"] == 3 and un["passes"] == 0
    assert 0.35 <= un["mean_ber"] <= 0.65
    assert result["levels"]["unrelated"]["score"] == 0.0
