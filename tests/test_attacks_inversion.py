"""Model inversion by T1: white-box decoder, known-plaintext decoder, shadow head / UnSplit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from clicooper.attacks import InversionAttack
from clicooper.attacks.views import NoiseSpec, build_view
from clicooper.errors import AttackError
from test_attacks_common import ARCH, digits, synthetic_views, write_run

FAST = {"width": 16, "steps": 150, "batch": 32, "refine_steps": 30, "unsplit_rounds": 5, "unsplit_inner": 5}


def _identity_case(known_k: int = 10):
    ds = digits()
    x, y = ds.x_train[:700], ds.y_train[:700]
    aux = (ds.x_test[:300], ds.y_test[:300])
    return synthetic_views(x.clone(), y, x=x, known_k=known_k, head=nn.Identity(), aux=aux, victims=300)


def test_identity_head_white_box_and_known_plaintext_reconstruct() -> None:
    res = InversionAttack(modes=("white-box", "known-plaintext"), known_counts=(100,), **FAST).run(_identity_case())
    wb, kp = res.levels["white-box"], res.levels["known-plaintext-100"]
    assert wb.score > 0.9 and kp.score > 0.85
    for lv in (wb, kp):
        assert lv.score > lv.metrics["class_floor"] > lv.metrics["global_floor"] == lv.floor
        assert lv.metrics["victims"] == 300 and lv.metrics["psnr"] > 15
    grid = res.artifacts["grid/white-box"]
    assert grid.shape == (2, 8, 1, 16, 16)


def test_noise_activations_do_not_beat_the_class_floor() -> None:
    ds = digits()
    x, y = ds.x_train[:600], ds.y_train[:600]
    noise = torch.randn(600, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    views = synthetic_views(noise, y, x=x, known_k=10, aux=(ds.x_test[:300], ds.y_test[:300]))
    lv = InversionAttack(modes=("known-plaintext",), known_counts=(100,), **FAST).run(views).levels["known-plaintext-100"]
    assert lv.score < lv.metrics["class_floor"] and lv.score < lv.floor + 0.1


def test_white_box_simulates_public_noise_distribution() -> None:
    views = _identity_case()
    noisy = NoiseSpec(sigma=0.02, clip=6.0)  # ≈ 0.12 noise std per pixel
    g = torch.Generator().manual_seed(5)
    z = noisy.simulate(views.zero.received.activations, g)  # what T1 would receive under protection
    public = views.zero.public.__class__(**{**views.zero.public.__dict__, "noise": noisy})
    rec = views.zero.received.__class__(party="T1", epoch=1, activations=z, gradients=z)
    zero = views.zero.__class__(public=public, received=rec, segment=nn.Identity(), position=1)
    views = views.__class__(**{**views.__dict__, "zero": zero})
    res = InversionAttack(modes=("white-box",), **{**FAST, "refine_steps": 0}).run(views)
    assert res.info["noise_simulated"] == {"sigma": 0.02, "clip": 6.0}
    lv = res.levels["white-box"]
    assert lv.score > lv.metrics["class_floor"]  # moderate noise: the decoder still beats both floors


def test_refuses_non_t1_views() -> None:
    views = _identity_case()
    zero = views.zero.__class__(**{**views.zero.__dict__, "position": 2})
    with pytest.raises(AttackError, match="T1"):
        InversionAttack(**FAST).run(views.__class__(**{**views.__dict__, "zero": zero}))


@pytest.mark.slow
def test_all_levels_on_trained_split_model(tmp_path: Path) -> None:
    root = write_run(tmp_path, rows=1000)
    views = build_view(root, "T1", ("zero", "known", "aux", "white-box"), architecture=ARCH, dataset=digits(),
                       known_k=10, victims=500)
    res = InversionAttack(known_counts=(100,), width=32, steps=400, unsplit_rounds=20, refine_steps=100).run(views)
    for tag in ("white-box", "known-plaintext-100", "aux"):
        assert res.levels[tag].score > res.levels[tag].metrics["class_floor"], tag
