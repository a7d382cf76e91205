"""Split training (real parties over the in-process transport) equals plain centralized training.

Run in float64: Adam's first steps move every weight by ≈ ±lr whatever the gradient's size, so float32
rounding noise in near-zero gradients (a different but equally valid summation order) would flip signs and
show up as 2·lr differences that say nothing about the protocol. In float64 the comparison is exact to
rounding. The reference is an *independent* ``nn.Sequential`` trained with one Adam optimizer and its own loop; it
shares nothing with the split code but the initial weights and the batch order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clicooper.config import make_config
from clicooper.data import epoch_order, load_dataset
from clicooper.training import Session


def reference_model(input_features: int, num_outputs: int) -> nn.Sequential:
    """Written out independently of the zoo (same architecture as digits-mlp)."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(input_features, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, num_outputs),
    )


@pytest.fixture
def float64() -> Iterator[None]:
    """Default dtype float64 for the duration of one test."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@pytest.mark.parametrize("topology", ["u-shape", "open-tail"])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("micro", [1, 4])
def test_split_equals_centralized(topology: str, k: int, micro: int, float64: None) -> None:
    # prepare
    ds = load_dataset("digits")
    ds = dataclasses.replace(ds, x_train=ds.x_train.double(), x_test=ds.x_test.double())
    cfg = make_config(dataset="digits", model="digits-mlp", trainers=k, topology=topology, batch_size=25,
                      micro_batches=micro, seed=7, device="cpu", provenance=False)
    session = Session(cfg, ds, run_dir=None)
    ref = reference_model(64, 10)
    ref.load_state_dict(session.model.state_dict())  # same initial weights, nothing else shared
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    order = epoch_order(session.train_ids, seed=7, epoch=0)

    # execute: 50 steps of each
    for s in range(50):
        ids = order[s * 25 : (s + 1) * 25]  # 57 steps in an epoch
        session.net.send_all(session.do.start_step(0, s, ids))
        session.net.run_until_idle()
        assert session.do.step_done
        opt.zero_grad()
        F.cross_entropy(ref(ds.x_train[ids]), ds.y_train[ids]).backward()
        opt.step()


    # assert
    split_sd, ref_sd = session.model.state_dict(), ref.state_dict()
    assert split_sd.keys() == ref_sd.keys()
    worst = max(float((split_sd[n] - ref_sd[n]).abs().max()) for n in ref_sd)
    moved = max(float((ref_sd[n] - p).abs().max()) for n, p in reference_model(64, 10).state_dict().items())
    assert moved > 1e-2  # training really changed the weights
    assert worst <= 1e-5, f"max |Δw| = {worst}"
