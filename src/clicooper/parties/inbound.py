"""Who may send a party which protocol message, and which values it may carry (docs/design/parties.md#trust-assumptions: nothing received is
trusted).

The transport authenticates the *link* a message came on; these checks bind the message's *role* to it:
labels, batch sizes and loss reports carry the DO's supervision, so only the party whose place in the chain
produces them may send them, and every number in them is range-checked before it reaches a model or the
metrics. Each failure is a :class:`~clicooper.errors.WireError` that names the sender and what was wrong.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict

import torch

from clicooper.errors import WireError
from clicooper.protocol.messages import Activations, Control, Labels

#: The data owner's party name: the only sender of labels and batch announcements.
DATA_OWNER = "DO"
_INT = re.compile(r"-?[0-9]{1,18}")
_LOSS_FIELDS = ("correct", "count", "loss_sum")


def _int(value: str, what: str) -> int:
    if not _INT.fullmatch(value):
        raise WireError(f"{what} {value[:40]!r} is not an integer")
    return int(value)


def _float(value: str, what: str) -> float:
    if len(value) > 64:
        raise WireError(f"{what} {value[:40]!r}… is {len(value)} characters, not a number")
    try:
        return float(value)
    except ValueError as e:
        raise WireError(f"{what} {value[:40]!r} is not a number") from e


def batch_announcement(msg: Control, *, receiver: str, holds_tail: bool, max_batch: int | None) -> int:
    """The batch size of a ``Control(kind="batch")``: from the DO, to the tail holder, ``1 ≤ size ≤ max_batch``
    and at least one sample per micro-batch."""
    h = msg.header
    if h.sender != DATA_OWNER:
        raise WireError(f"{receiver}: batch announcement from {h.sender}: only the DO announces batch sizes")
    if not holds_tail:
        raise WireError(f"{receiver} does not hold the tail and takes no batch announcement")
    if set(msg.payload) != {"size"}:
        raise WireError(f"{receiver}: malformed batch announcement {dict(list(msg.payload.items())[:4])}")
    size = _int(msg.payload["size"], f"{receiver}: batch size")
    if size < 1 or (max_batch is not None and size > max_batch):
        raise WireError(f"{receiver}: batch size {size} outside 1..{max_batch or 'any'} (the run's batch size)")
    if h.n_micro > size:
        raise WireError(f"{receiver}: {h.n_micro} micro-batches announced for a batch of {size}")
    return size


def received_labels(msg: Labels, *, receiver: str, batch: int | None) -> torch.Tensor:
    """The labels of a :class:`Labels` message: from the DO, after its batch announcement, a 1-D int64 tensor of
    at most ``batch`` non-negative labels (their upper bound, the tail's outputs, is checked by
    :func:`check_label_range` once the tail's output is known)."""
    h = msg.header
    if h.sender != DATA_OWNER:
        raise WireError(f"{receiver}: labels from {h.sender}: only the DO sends labels")
    if batch is None:
        raise WireError(f"{receiver}: labels for step {(h.epoch, h.step)} before its batch size")
    t = msg.tensor
    if t.dtype != torch.int64 or t.dim() != 1:
        raise WireError(f"{receiver}: labels must be a 1-D int64 tensor, got {t.dtype} {tuple(t.shape)}")
    if t.shape[0] > batch:
        raise WireError(f"{receiver}: {t.shape[0]} labels in one micro-batch of a batch of {batch}")
    if t.numel() and int(t.min()) < 0:
        raise WireError(f"{receiver}: negative label {int(t.min())} from the DO")
    return t


def check_label_range(labels: torch.Tensor, num_outputs: int, *, receiver: str) -> None:
    """Every label indexes one of the tail's ``num_outputs`` outputs (the possibly obfuscated label space)."""
    if labels.numel() and int(labels.max()) >= num_outputs:
        raise WireError(f"{receiver}: label {int(labels.max())} outside the tail's {num_outputs} outputs")


class LossReports:
    """The loss reports the DO expects: one per micro-batch whose labels it sent to the tail holder ``sender``
    (open tail), each checked against that micro-batch and counted once. ``sender=None``: the DO computes the
    loss itself (U-shape) and takes no report. At most ``max_steps`` steps wait for reports (the oldest go)."""

    def __init__(self, sender: str | None, *, max_steps: int = 1024) -> None:
        self.sender, self.max_steps = sender, max_steps
        self._due: OrderedDict[tuple[int, int], dict[int, int]] = OrderedDict()

    def expect(self, epoch: int, step: int, sizes: list[int]) -> None:
        """Labels for step ``(epoch, step)`` went out in micro-batches of ``sizes`` samples."""
        self._due[(epoch, step)] = dict(enumerate(sizes))
        while len(self._due) > self.max_steps:
            self._due.popitem(last=False)

    def accept(self, msg: Control) -> tuple[float, int, int]:
        """``(loss_sum, correct, count)`` of a ``Control(kind="loss")``, or a :class:`WireError` unless it comes
        from the tail holder, for a micro-batch not reported yet, with ``loss_sum`` finite and ≥ 0 and
        ``0 ≤ correct ≤ count`` = the micro-batch's size."""
        h = msg.header
        if self.sender is None:
            raise WireError(f"DO: loss report from {h.sender}, but the DO holds the tail and computes the loss")
        if h.sender != self.sender:
            raise WireError(f"DO: loss report from {h.sender}: only {self.sender}, which holds the tail, reports")
        key = (h.epoch, h.step)
        size = self._due.get(key, {}).get(h.micro)
        if size is None:
            raise WireError(f"DO: loss report for micro-batch {(h.epoch, h.step, h.micro)} not expected (no labels "
                            "were sent for it, or it was reported already)")
        p = msg.payload
        if tuple(sorted(p)) != _LOSS_FIELDS:
            raise WireError(f"DO: loss report fields {sorted(p)[:8]}; expected {', '.join(_LOSS_FIELDS)}")
        loss = _float(p["loss_sum"], "DO: loss_sum")
        correct, count = _int(p["correct"], "DO: correct"), _int(p["count"], "DO: count")
        if not math.isfinite(loss) or loss < 0:
            raise WireError(f"DO: loss_sum {loss} from {h.sender} must be finite and >= 0")
        if count != size:
            raise WireError(f"DO: loss report count {count}, but micro-batch {h.micro} has {size} samples")
        if not 0 <= correct <= count:
            raise WireError(f"DO: loss report correct {correct} outside 0..{count}")
        del self._due[key][h.micro]
        if not self._due[key]:
            del self._due[key]
        return loss, correct, count


def check_query_answer(msg: Activations, *, sender: str, rows: int | None, per_sample: tuple[int, ...] | None,
                       ) -> None:
    """A query's answer (``mode="infer"``): from ``sender`` (the party before the DO in the chain), for a query
    of ``rows`` rows the DO sent (``None``: none open), of shape ``(rows, *per_sample)`` (``None``: any
    ``(rows, C)``). Its values were checked when it was decoded (:class:`~clicooper.parties.base.PartyBase`)."""
    h = msg.header
    if h.sender != sender:
        raise WireError(f"DO: query answer from {h.sender}: only {sender} answers queries")
    if rows is None:
        raise WireError(f"DO: query answer for {(h.step, h.micro)} from {h.sender}, but no query is open there")
    t = msg.tensor
    ok = t.dim() == 2 and t.shape[0] == rows if per_sample is None else tuple(t.shape) == (rows, *per_sample)
    if not ok:
        want = f"({rows}, C)" if per_sample is None else str((rows, *per_sample))
        raise WireError(f"DO: query answer of shape {tuple(t.shape)} from {h.sender}, expected {want}")
