"""DO-alone accuracy: the data owner's head + a linear tail, trained without any trainer (issue 5).

The trainers' contribution to a configuration is ``split accuracy − DO-alone accuracy``. A low DO FLOP
share alone can be gamed by adding useless trainer layers; this number cannot. The DO-alone model uses the
same head architecture and init seed as the split run, the same training rows, epochs, shuffling
(:func:`clicooper.data.epoch_order`), batch size, augmentation and Adam learning rate (and its schedule), true labels and no noise
(nothing leaves the DO). Used by the frontier sweep, the accuracy probe and ``clicooper report``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clicooper.data import epoch_order
from clicooper.models import zoo
from clicooper.models.describe import as_sequential
from clicooper.models.partition import make_plan, split_model
from clicooper.parties.optim import make_optimizer


def do_alone_accuracy(model_name: str, dataset: Any, *, train_range: tuple[int, int] | None, epochs: int,
                      seed: int, trainers: int = 2, batch_size: int = 128, lr: float = 1e-3,
                      model_spec: list[dict[str, Any]] | None = None,
                      lr_at: Callable[[int], float] | None = None,
                      augment: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None,
                      weight_decay: float = 0.0, optimizer: str = "adam", momentum: float = 0.9,
                      module: nn.Module | Sequence[nn.Module] | None = None) -> float:
    """Test accuracy of ``head + Linear`` trained by the DO alone (see the module docstring); the model is
    the built-in ``model_name``, or ``model_spec`` (a model file's layers) when given. Evaluated in eval
    mode (BatchNorm's running statistics). ``lr_at``: the split run's learning rate per epoch
    (``RunConfig.lr_at``), when it has a schedule; ``augment``: its training augmentation
    (:func:`clicooper.data.augment.augmenter_for`, the same public draws per epoch and sample id);
    ``optimizer``, ``weight_decay``, ``momentum``: its optimizer (:func:`clicooper.parties.optim.make_optimizer`).
    ``module``: the user's own module of a run of their own module classes (a copy is trained)."""
    torch.manual_seed(seed)
    model = (copy.deepcopy(as_sequential(module)) if module is not None else
             zoo.build_model(model_name, model_spec, dataset.input_shape, dataset.num_classes, seed=seed))
    plan = make_plan(model, model_name=model_name, input_shape=dataset.input_shape, trainers=trainers)
    head = split_model(model, plan)["DO:head"]
    feat = int(math.prod(plan.head.output_shape))
    torch.manual_seed(seed + 17)
    net = nn.Sequential(head, nn.Flatten(), nn.Linear(feat, dataset.num_classes))
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
