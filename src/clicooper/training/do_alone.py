"""DO-alone accuracy: the data owner's model without any trainer, trained by the DO alone.

The trainers' contribution to a configuration is ``split accuracy − DO-alone accuracy``. A low DO FLOP
share alone can be gamed by adding useless trainer layers; this number cannot, as long as the DO-alone
model does not understate what the DO can compute with its own layers:

- when the DO's tail is a single ``Linear`` (every plain model): its head + ``Flatten`` + a fresh
  ``Linear`` on the flattened cut (``head + a linear tail``);
- when the DO's tail is more than that (an MLP, or a residual block + pooling + ``Linear``: the depth
  axis's thick tails), the DO could also train its head + an *adapter* + its own tail. Both models are
  trained and the better test accuracy is the DO-alone accuracy (:func:`do_alone_result`, which says which
  one won): a linear stand-in alone would understate a thick tail, and the thick tail alone can fall far
  below it (the adapter pools the cut: before ``fmnist-resnet20-tmlp``'s MLP it keeps 16 numbers), either of
  which would inflate the trainers' gain. The adapter is the cheapest map from the head's output shape to
  the tail's input shape (:func:`adapter_for`): for a ``(C, H, W)`` cut and a ``(C', H', W')`` tail input,
  ``AdaptiveAvgPool2d((H', W'))`` then a 1×1 ``Conv2d`` C→C'; for a 1-d tail input F',
  ``AdaptiveAvgPool2d(1)`` + ``Flatten`` + ``Linear(C, F')``; for a 1-d cut, a ``Linear``; none when the
  shapes already match.

The head (and the DO's own tail) has the same architecture and init seed as the split run; the fresh
``Linear`` or adapter is drawn from ``seed + 17``. Same training rows, epochs, shuffling
(:func:`clicooper.data.epoch_order`), batch size, augmentation and optimizer with its learning rate (and
schedule), true labels and no noise (nothing leaves the DO). :func:`do_alone_net` builds one model and
says what it is (:attr:`DoAloneNet.description`, reported beside the figure). Used by the frontier sweep,
the accuracy probe and ``clicooper report``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clicooper.data import epoch_order
from clicooper.models import zoo
from clicooper.models.blocks import Residual
from clicooper.models.describe import as_sequential
from clicooper.models.partition import make_plan, split_model
from clicooper.parties.optim import make_optimizer

__all__ = ["LINEAR_TAIL", "THICK_TAIL", "DoAloneNet", "DoAloneResult", "adapter_for", "do_alone_accuracy",
           "do_alone_net", "do_alone_result"]

#: :attr:`DoAloneNet.description` of the plain DO-alone model (a single ``Linear`` on the cut)
LINEAR_TAIL = "head + a linear tail"
#: :attr:`DoAloneResult.tail` when the DO's tail is thick: the better of head + a linear tail and head + adapter +
#: the DO's own tail (also in ``RUN/do_alone.json``'s settings, so a cache from before is not taken for it)
THICK_TAIL = "best of linear and own"


@dataclass
class DoAloneNet:
    """The DO-alone model and what it is."""

    net: nn.Sequential  # head (+ Flatten + Linear | + adapter + the DO's own tail)
    tail: str  # "linear": a fresh Linear on the flattened cut; "own": adapter + the DO's own (thick) tail
    description: str  # one line for the report, e.g. "head + adapter (…) + the DO's own tail (res64, avgpool, fc10)"
    thick: bool  # whether the run's DO tail is more than one Linear


def _leaves(module: nn.Module) -> list[nn.Module]:
    """``module``'s layers in order, nested ``nn.Sequential`` opened, a residual block kept whole."""
    if isinstance(module, nn.Sequential):
        return [leaf for m in module for leaf in _leaves(m)]
    return [module]


def _is_linear_tail(tail: nn.Module) -> bool:
    """Whether the DO's tail computes a single ``Linear`` (with reshapes / parameter-free layers around it)."""
    with_params = [m for m in _leaves(tail) if any(True for _ in m.parameters())]
    return len(with_params) == 1 and type(with_params[0]) is nn.Linear


def _name(m: nn.Module) -> str | None:
    """A short name of one layer for the description (``None``: not named, e.g. activations, norms)."""
    if isinstance(m, nn.Linear):
        return f"fc{m.out_features}"
    if isinstance(m, nn.Conv2d):
        k = "×".join(str(s) for s in m.kernel_size)
        return f"conv{k} {m.in_channels}→{m.out_channels}"
    if isinstance(m, Residual):
        convs = [c for c in m.body.modules() if isinstance(c, nn.Conv2d)]
        return f"res{convs[-1].out_channels}" if convs else "residual block"
    if isinstance(m, nn.AdaptiveAvgPool2d):
        size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size, m.output_size)
        return f"avgpool to {'×'.join(str(s) for s in size)}"
    if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)):
        return type(m).__name__.removesuffix("2d").lower()
    if isinstance(m, nn.Unflatten) or not any(True for _ in m.parameters()):
        return None  # activations, Flatten, Dropout, …
    if isinstance(m, (nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
        return None
    return type(m).__name__


def _describe(module: nn.Module) -> str:
    return ", ".join(n for n in (_name(m) for m in _leaves(module)) if n)


def adapter_for(head_out: Sequence[int], tail_in: Sequence[int]) -> nn.Sequential:
    """The cheapest map from the head's output shape to the tail's input shape (per sample; see the module
    docstring). Its weights come from the global RNG (the caller seeds it)."""
    head_out, tail_in = tuple(int(s) for s in head_out), tuple(int(s) for s in tail_in)
    if head_out == tail_in:
        return nn.Sequential()
    if len(head_out) == 3 and len(tail_in) == 3:
        return nn.Sequential(nn.AdaptiveAvgPool2d(tail_in[1:]), nn.Conv2d(head_out[0], tail_in[0], 1))
    if len(head_out) == 3 and len(tail_in) == 1:
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(head_out[0], tail_in[0]))
    # a 1-d cut (or shapes of other ranks): a Linear on the flattened cut, reshaped to the tail's input
    layers: list[nn.Module] = [nn.Flatten()] if len(head_out) != 1 else []
    layers.append(nn.Linear(math.prod(head_out), math.prod(tail_in)))
    if len(tail_in) != 1:
        layers.append(nn.Unflatten(1, tail_in))
    return nn.Sequential(*layers)


def do_alone_net(model_name: str, input_shape: Sequence[int], num_classes: int, *, seed: int, trainers: int = 2,
                 model_spec: list[dict[str, Any]] | None = None,
                 module: nn.Module | Sequence[nn.Module] | None = None, tail: str | None = None) -> DoAloneNet:
    """A DO-alone model of the built-in ``model_name`` (or ``model_spec``, a model file's layers, or
    ``module``, the user's own module: a copy) split for ``trainers`` trainers: the head + a fresh
    ``Linear`` (``tail="linear"``, or ``None`` when the DO's tail is a single ``Linear``), else the head +
    :func:`adapter_for` + the DO's own tail (``tail="own"``, or ``None`` when that tail is thick; same init
    as the split run). Draws the global RNG as the DO-alone training always did: seeded with ``seed`` for
    the model, with ``seed + 17`` for the fresh layer(s)."""
    if tail not in (None, "linear", "own"):
        raise ValueError(f"tail must be 'linear', 'own' or None, not {tail!r}")
    input_shape = tuple(int(s) for s in input_shape)
    torch.manual_seed(seed)
    model = (copy.deepcopy(as_sequential(module)) if module is not None else
             zoo.build_model(model_name, model_spec, input_shape, num_classes, seed=seed))
    plan = make_plan(model, model_name=model_name, input_shape=input_shape, trainers=trainers)
    parts = split_model(model, plan)
    head, own = parts["DO:head"], parts.get("DO:tail")
    torch.manual_seed(seed + 17)
    thick = own is not None and not _is_linear_tail(own)
    if tail == "linear" or (tail is None and not thick):
        feat = int(math.prod(plan.head.output_shape))
        return DoAloneNet(nn.Sequential(head, nn.Flatten(), nn.Linear(feat, num_classes)), "linear", LINEAR_TAIL,
                          thick)
    if own is None:
        raise ValueError("an open-tail plan has no DO tail to train alone: use tail='linear'")
    adapter = adapter_for(plan.head.output_shape, plan.parties[-2].output_shape)
    what = _describe(adapter)
    return DoAloneNet(nn.Sequential(head, adapter, own), "own",
                      f"head + {f'adapter ({what})' if what else 'no adapter'} + the DO's own tail "
                      f"({_describe(own)})", thick)


def _train_and_test(net: nn.Module, dataset: Any, *, train_range: tuple[int, int] | None, epochs: int, seed: int,
                    batch_size: int, lr: float, lr_at: Callable[[int], float] | None,
                    augment: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] | None,
                    weight_decay: float, optimizer: str, momentum: float) -> float:
    """Train ``net`` as the split run trains (see :func:`do_alone_result`); its test accuracy in eval mode."""
    opt = make_optimizer(net.parameters(), kind=optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum)
    ids = dataset.train_ids(train_range)
    x, y = dataset.x_train, dataset.y_train
    net.train()
    for e in range(epochs):
        order = epoch_order(ids, seed=seed, epoch=e)
        if lr_at is not None:
            for group in opt.param_groups:
                group["lr"] = lr_at(e)
        for i in range(0, len(order), batch_size):
            bi = order[i : i + batch_size]
            opt.zero_grad()
            xb = x[bi].float()
            if augment is not None:
                xb = augment(xb, bi, e)
            F.cross_entropy(net(xb), y[bi]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        correct = sum(int((net(dataset.x_test[i : i + 2048].float()).argmax(1) == dataset.y_test[i : i + 2048]).sum())
                      for i in range(0, len(dataset.x_test), 2048))
    return correct / len(dataset.x_test)


@dataclass
class DoAloneResult:
    """What :func:`do_alone_result` measured."""

    accuracy: float  # the DO-alone accuracy: the better of ``candidates``
    tail: str  # "linear" (the DO's tail is one Linear) or THICK_TAIL (the better of both models)
    description: str  # the model that reached ``accuracy`` (:attr:`DoAloneNet.description`)
    candidates: dict[str, float]  # each model trained: description → test accuracy


def do_alone_result(model_name: str, dataset: Any, *, train_range: tuple[int, int] | None, epochs: int,
                    seed: int, trainers: int = 2, batch_size: int = 128, lr: float = 1e-3,
                    model_spec: list[dict[str, Any]] | None = None,
                    lr_at: Callable[[int], float] | None = None,
                    augment: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None,
                    weight_decay: float = 0.0, optimizer: str = "adam", momentum: float = 0.9,
                    module: nn.Module | Sequence[nn.Module] | None = None) -> DoAloneResult:
    """Train the DO-alone model(s) (:func:`do_alone_net`; see the module docstring) by the DO alone and test
    them; the model is the built-in ``model_name``, or ``model_spec`` (a model file's layers) when given.
    Evaluated in eval mode (BatchNorm's running statistics). ``lr_at``: the split run's learning rate per
    epoch (``RunConfig.lr_at``), when it has a schedule; ``augment``: its training augmentation
    (:func:`clicooper.data.augment.augmenter_for`, the same public draws per epoch and sample id);
    ``optimizer``, ``weight_decay``, ``momentum``: its optimizer (:func:`clicooper.parties.optim.make_optimizer`).
    ``module``: the user's own module of a run of their own module classes (a copy is trained)."""
    train = {"train_range": train_range, "epochs": epochs, "seed": seed, "batch_size": batch_size, "lr": lr,
             "lr_at": lr_at, "augment": augment, "weight_decay": weight_decay, "optimizer": optimizer,
             "momentum": momentum}
    build = {"seed": seed, "trainers": trainers, "model_spec": model_spec, "module": module}
    linear = do_alone_net(model_name, dataset.input_shape, dataset.num_classes, tail="linear", **build)
    candidates = {linear.description: _train_and_test(linear.net, dataset, **train)}
    if not linear.thick:
        return DoAloneResult(candidates[linear.description], "linear", linear.description, candidates)
    own = do_alone_net(model_name, dataset.input_shape, dataset.num_classes, tail="own", **build)
    candidates[own.description] = _train_and_test(own.net, dataset, **train)
    best = max(candidates, key=lambda d: candidates[d])  # a tie keeps the linear tail (first)
    return DoAloneResult(candidates[best], THICK_TAIL, best, candidates)


def do_alone_accuracy(model_name: str, dataset: Any, *, train_range: tuple[int, int] | None, epochs: int,
                      seed: int, trainers: int = 2, batch_size: int = 128, lr: float = 1e-3,
                      model_spec: list[dict[str, Any]] | None = None,
                      lr_at: Callable[[int], float] | None = None,
                      augment: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None,
                      weight_decay: float = 0.0, optimizer: str = "adam", momentum: float = 0.9,
                      module: nn.Module | Sequence[nn.Module] | None = None) -> float:
    """The DO-alone accuracy (:attr:`DoAloneResult.accuracy` of :func:`do_alone_result`, same arguments)."""
    return do_alone_result(model_name, dataset, train_range=train_range, epochs=epochs, seed=seed,
                           trainers=trainers, batch_size=batch_size, lr=lr, model_spec=model_spec, lr_at=lr_at,
                           augment=augment, weight_decay=weight_decay, optimizer=optimizer, momentum=momentum,
                           module=module).accuracy
