"""Training augmentation (clicooper.data.augment): public, deterministic per (seed, epoch, id), shape-preserving,
training batches only."""

from __future__ import annotations

from pathlib import Path

import torch

from clicooper import rundir
from clicooper.data.augment import Augmenter
from clicooper.training import train
from tests.support.resume import interrupted_then_resumed

X = torch.rand(6, 3, 8, 8)
IDS = torch.tensor([0, 4, 9, 17, 33, 101])


def test_deterministic_across_calls_and_different_across_epochs() -> None:
    aug = Augmenter(seed=7, crop_padding=2, flip=True)
    a, b = aug(X, IDS, 0), Augmenter(seed=7, crop_padding=2, flip=True)(X.clone(), IDS, 0)
    assert torch.equal(a, b)  # a fresh augmenter (a resumed run, a DO node) draws the same
    assert not torch.equal(a, aug(X, IDS, 1))  # a new epoch draws anew
    assert not torch.equal(a, Augmenter(seed=8, crop_padding=2, flip=True)(X, IDS, 0))
    assert a.shape == X.shape and a.dtype == X.dtype


def test_per_sample_not_per_batch() -> None:
    aug = Augmenter(seed=0, crop_padding=1, flip=True)
    whole = aug(X, IDS, 3)
    single = torch.cat([aug(X[i : i + 1], IDS[i : i + 1], 3) for i in range(len(IDS))])
    assert torch.equal(whole, single)  # depends on the sample id, not on the batch it lands in


def test_flip_only_and_crop_only() -> None:
    flipped = Augmenter(seed=1, flip=True)(X, IDS, 0)
    for i in range(len(X)):
        assert torch.equal(flipped[i], X[i]) or torch.equal(flipped[i], X[i].flip(-1))
    cropped = Augmenter(seed=1, crop_padding=2)(X, IDS, 0)
    assert cropped.shape == X.shape
    assert (cropped == 0).any()  # some window reaches into the zero padding
    assert torch.equal(Augmenter(seed=1)(X, IDS, 0), X)  # nothing on: identity


def test_run_with_augmentation_trains_and_resumes_identically(tmp_path: Path) -> None:
    cfg = {"dataset": "digits", "model": "digits-cnn", "trainers": 2, "epochs": 2, "provenance": False,
           "train_range": (0, 640), "data": {"crop_padding": 1, "flip": True}}
    a = train(cfg, out=tmp_path / "a")

    b = interrupted_then_resumed(cfg, tmp_path / "cut")
    plain = train(cfg | {"data": {}}, out=tmp_path / "plain")
    sa, sb, sp = (r.model.state_dict() for r in (a, b, plain))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # deterministic from the public seed, across a resume
    assert any(not torch.equal(sa[k], sp[k]) for k in sa)  # and it did change the training batches
    m = rundir.read_json(tmp_path / "a" / "metrics.json")["epochs"]
    assert m[-1]["loss"] < m[0]["loss"] and m[-1]["test_acc"] > 0.2


def test_do_alone_trains_on_the_same_augmented_batches() -> None:
    from clicooper.data import load_dataset
    from clicooper.training.do_alone import do_alone_accuracy

    ds = load_dataset("digits")
    kw = {"train_range": (0, 320), "epochs": 2, "seed": 0}
    seen: list[tuple[int, int]] = []

    def identity(x: torch.Tensor, ids: torch.Tensor, epoch: int) -> torch.Tensor:
        seen.append((epoch, len(ids)))
        return x

    plain = do_alone_accuracy("digits-cnn", ds, **kw)
    assert do_alone_accuracy("digits-cnn", ds, augment=identity, **kw) == plain
    assert {e for e, _ in seen} == {0, 1} and sum(n for _, n in seen) == 640  # every training batch, per epoch
    flipped = do_alone_accuracy("digits-cnn", ds, augment=Augmenter(seed=0, crop_padding=1, flip=True), **kw)
    assert flipped != plain
