"""The DO-alone model (clicooper.training.do_alone): head + a linear tail when the DO's tail is one Linear,
exactly as it always was; when the DO's tail is thick (the depth axis's MLP or residual-block tails), also
head + adapter + the DO's own tail, the better of the two counting, and the report's cache and text say which."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clicooper.data import epoch_order
from clicooper.models import zoo
from clicooper.models.blocks import Residual
from clicooper.models.partition import make_plan, split_model
from clicooper.training.do_alone import (
    LINEAR_TAIL,
    THICK_TAIL,
    adapter_for,
    do_alone_accuracy,
    do_alone_net,
    do_alone_result,
)

SHAPE = (1, 28, 28)


class _Rows:
    """A few random 28×28 rows with the attributes the DO-alone training reads."""

    def __init__(self, n: int = 48, shape: tuple[int, ...] = SHAPE, classes: int = 10) -> None:
        g = torch.Generator().manual_seed(5)
        self.input_shape, self.num_classes = shape, classes
        self.x_train, self.y_train = torch.rand((n, *shape), generator=g), torch.randint(0, classes, (n,), generator=g)
        self.x_test, self.y_test = torch.rand((24, *shape), generator=g), torch.randint(0, classes, (24,), generator=g)

    def train_ids(self, train_range: tuple[int, int] | None) -> torch.Tensor:
        return torch.arange(*(train_range or (0, len(self.x_train))))


def _hand_built(name: str, shape: tuple[int, ...], seed: int) -> nn.Sequential:
    """Head + Flatten + Linear, built as the DO-alone model always was."""
    torch.manual_seed(seed)
    model = zoo.build_model(name, None, shape, 10, seed=seed)
    plan = make_plan(model, model_name=name, input_shape=shape, trainers=2)
    head = split_model(model, plan)["DO:head"]
    torch.manual_seed(seed + 17)
    return nn.Sequential(head, nn.Flatten(), nn.Linear(int(math.prod(plan.head.output_shape)), 10))


def _reference_accuracy(net: nn.Module, ds: _Rows, *, epochs: int, seed: int, batch_size: int) -> float:
    """The DO-alone training loop as it was before thick tails (Adam 1e-3, epoch_order, eval-mode test)."""
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for e in range(epochs):
        order = epoch_order(ds.train_ids(None), seed=seed, epoch=e)
        for i in range(0, len(order), batch_size):
            bi = order[i : i + batch_size]
            opt.zero_grad()
            F.cross_entropy(net(ds.x_train[bi].float()), ds.y_train[bi]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        return int((net(ds.x_test).argmax(1) == ds.y_test).sum()) / len(ds.x_test)


def _same_modules(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return ([type(m) for m in a.modules()] == [type(m) for m in b.modules()] and sa.keys() == sb.keys()
            and all(torch.equal(sa[k], sb[k]) for k in sa))


@pytest.mark.parametrize(("name", "shape"), [("fmnist-resnet20", SHAPE), ("fmnist-cnn", SHAPE), ("digits-cnn", (1, 8, 8))])
def test_a_linear_tail_keeps_head_flatten_linear_bit_for_bit(name: str, shape: tuple[int, ...]) -> None:
    alone = do_alone_net(name, shape, 10, seed=3)
    assert (alone.tail, alone.thick, alone.description) == ("linear", False, LINEAR_TAIL)
    assert _same_modules(alone.net, _hand_built(name, shape, 3))  # same layers, same initial weights
    ds = _Rows(shape=shape)
    res = do_alone_result(name, ds, train_range=None, epochs=1, seed=3, batch_size=16)
    ref = _reference_accuracy(_hand_built(name, shape, 3), ds, epochs=1, seed=3, batch_size=16)
    assert res.accuracy == ref and res.candidates == {LINEAR_TAIL: ref} and res.tail == "linear"
    assert do_alone_accuracy(name, ds, train_range=None, epochs=1, seed=3, batch_size=16) == ref


@pytest.mark.parametrize(("name", "pool", "tail_types", "words"), [
    ("fmnist-resnet20-tblock", (7, 7), [Residual, nn.ReLU, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear], "res64"),
    ("fmnist-resnet20-tmlp", (1, 1), [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear], "fc128, fc128, fc10"),
    ("fmnist-resnet20-h1-tmlp", (1, 1), [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear], "fc128, fc128"),
])
def test_a_thick_tail_trains_the_dos_own_tail_behind_an_adapter(name: str, pool: tuple[int, int],
                                                               tail_types: list[type], words: str) -> None:
    alone = do_alone_net(name, SHAPE, 10, seed=3)
    assert (alone.tail, alone.thick) == ("own", True)
    head, adapter, tail = alone.net
    torch.manual_seed(3)
    model = zoo.build_model(name, None, SHAPE, 10, seed=3)
    parts = split_model(model, make_plan(model, model_name=name, input_shape=SHAPE, trainers=2))
    assert _same_modules(head, parts["DO:head"]) and _same_modules(tail, parts["DO:tail"])  # the run's init
    assert [type(m) for m in tail[0]] == tail_types  # the DO's tail as the run has it, not a lone Linear
    assert [type(m) for m in adapter] == [nn.AdaptiveAvgPool2d, nn.Conv2d]
    assert adapter[0].output_size == pool and (adapter[1].in_channels, adapter[1].out_channels) == (16, 64)
    assert adapter[1].kernel_size == (1, 1)
    assert words in alone.description and alone.description.startswith("head + adapter (")
    n = sum(p.numel() for p in alone.net.parameters())
    assert n == sum(p.numel() for m in (parts["DO:head"], parts["DO:tail"]) for p in m.parameters()) + 16 * 64 + 64
    assert alone.net(torch.rand(2, *SHAPE)).shape == (2, 10)
    forced = do_alone_net(name, SHAPE, 10, seed=3, tail="linear")  # the linear stand-in, as before
    assert forced.thick and _same_modules(forced.net, _hand_built(name, SHAPE, 3))


def test_a_thick_tail_counts_the_better_of_the_two_models() -> None:
    ds = _Rows()
    res = do_alone_result("fmnist-resnet20-tmlp", ds, train_range=None, epochs=1, seed=3, batch_size=16)
    own = do_alone_net("fmnist-resnet20-tmlp", SHAPE, 10, seed=3).description
    assert res.tail == THICK_TAIL and set(res.candidates) == {LINEAR_TAIL, own}
    ref = _reference_accuracy(_hand_built("fmnist-resnet20-tmlp", SHAPE, 3), ds, epochs=1, seed=3, batch_size=16)
    assert res.candidates[LINEAR_TAIL] == ref  # the linear candidate is the figure as it always was
    assert res.accuracy == max(res.candidates.values()) and res.candidates[res.description] == res.accuracy


@pytest.mark.parametrize(("head_out", "tail_in", "types"), [
    ((16, 28, 28), (64, 7, 7), [nn.AdaptiveAvgPool2d, nn.Conv2d]),
    ((16, 28, 28), (64,), [nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear]),
    ((32,), (64,), [nn.Linear]),
    ((32,), (4, 3, 3), [nn.Linear, nn.Unflatten]),
    ((16, 28, 28), (16, 28, 28), []),
])
def test_the_adapter_maps_the_cut_to_the_tails_input(head_out: tuple[int, ...], tail_in: tuple[int, ...],
                                                     types: list[type]) -> None:
    a = adapter_for(head_out, tail_in)
    assert [type(m) for m in a] == types
    assert tuple(a(torch.rand(2, *head_out)).shape) == (2, *tail_in)


def _run_dir(tmp_path: Path, model: str) -> Path:
    d = tmp_path / model
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model": model, "dataset": "fashion-mnist", "epochs": 1, "seed": 3,
                                               "trainers": 2, "train_range": [0, 48]}))
    (d / "plan.json").write_text(json.dumps({"input_shape": list(SHAPE)}))
    return d


def test_the_report_keys_and_names_the_do_alone_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clicooper.report import report
    from clicooper.report.markdown import _runs_table

    monkeypatch.setattr(report, "_do_alone_dataset", lambda *a: _Rows())
    trained: list[str] = []
    real = report.do_alone_result

    def counted(model: str, *a: Any, **k: Any) -> Any:
        trained.append(model)
        return real(model, *a, **{**k, "batch_size": 16})

    monkeypatch.setattr(report, "do_alone_result", counted)
    thin, thick = (report.do_alone_for(_run_dir(tmp_path, m)) for m in ("fmnist-resnet20", "fmnist-resnet20-tblock"))
    assert "tail" not in thin["settings"] and thin["model"] == LINEAR_TAIL and "candidates" not in thin
    assert thick["settings"]["tail"] == THICK_TAIL and len(thick["candidates"]) == 2
    assert thick["do_alone_acc"] == max(thick["candidates"].values()) and thick["model"] in thick["candidates"]
    # a linear tail's cache from before the DO-alone model was recorded still answers
    old = tmp_path / "fmnist-resnet20" / "do_alone.json"
    old.write_text(json.dumps({"settings": thin["settings"], "do_alone_acc": 0.25, "seconds": 1.0}))
    assert report.do_alone_for(old.parent)["do_alone_acc"] == 0.25
    # a thick tail's cache from before (no "tail" in its key) does not: it is trained again
    cached = tmp_path / "fmnist-resnet20-tblock" / "do_alone.json"
    settings = {k: v for k, v in thick["settings"].items() if k != "tail"}
    cached.write_text(json.dumps({"settings": settings, "do_alone_acc": 0.25, "seconds": 1.0}))
    assert report.do_alone_for(cached.parent)["do_alone_acc"] == thick["do_alone_acc"]
    assert trained == ["fmnist-resnet20", "fmnist-resnet20-tblock", "fmnist-resnet20-tblock"]
    own = next(d for d in thick["candidates"] if d != LINEAR_TAIL)
    table = "\n".join(_runs_table({"run": "r", "defense": "none", "test_acc": 0.9, "do_flop_share": 0.1,
                                   "do_alone_acc": 0.8, "do_alone_model": thick["model"]},
                                  {"run": "b", "defense": "none", "test_acc": 0.9, "do_flop_share": 0.1}))
    assert f"| DO-alone model | {thick['model']} | – |" in table and (own in table) == (thick["model"] == own)
