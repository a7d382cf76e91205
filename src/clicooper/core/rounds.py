"""One round (= epoch) of steps, driven by the DO over any transport, and its metrics (docs/design/protocol.md#one-training-step).

The DO starts each step (``start_step`` → its messages); a :class:`StepDriver` delivers them and pumps the
transport until the DO's step is done. In one process the driver is the in-process network
(:class:`clicooper.protocol.inproc.InProcessNetwork` runs every party until idle); a DO node sends over
gRPC and handles the replies (:mod:`clicooper.net.do_node`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from clicooper.config import RunConfig
from clicooper.core.security import Validator, after_step
from clicooper.data import StreamedImages, epoch_order, steps_in
from clicooper.parties.data_owner import DataOwner, EpochStats
from clicooper.protocol.messages import Message

#: on_step(epoch (0-based round), step, steps_in_epoch)
OnStep = Callable[[int, int, int], None]


class StepDriver(Protocol):
    """Carries one step's messages and returns once the DO's step is done (else raises)."""

    def run_step(self, messages: Iterable[Message], *, round: int, step: int) -> None:
        """Deliver the DO's ``messages`` of step ``step`` of ``round`` (in order, each as it comes: they may be
        computed while earlier ones travel) and pump until ``do.ready`` (``do.step_done`` but with
        ``overlap_steps``, where one step may stay in flight)."""
        ...

    def drain(self, *, round: int) -> None:
        """Pump until no step of ``round`` is in flight (``do.step_done``)."""
        ...

    def run_query(self, messages: Iterable[Message], *, round: int, step: int, answered: Callable[[], bool]) -> None:
        """Deliver a query's ``messages`` (between steps: the DO's validation) and pump until ``answered()``."""
        ...


@dataclass
class RoundResult:
    """What a round's steps produced: the DO's statistics, the wall time and the number of samples."""

    stats: EpochStats
    seconds: float
    samples: int


def run_round(do: DataOwner, driver: StepDriver, config: RunConfig, train_ids: torch.Tensor, r: int, *,
              on_step: OnStep | None = None, validator: Validator | None = None) -> RoundResult:
    """Train round ``r`` (0-based): the DO's batches in :func:`epoch_order`, each step through ``driver``.

    With the DO's guard on, each step is followed by its checks (:func:`clicooper.core.security.after_step`):
    an alarm raises :class:`~clicooper.core.security.DetectionStop` mid-round."""
    order = epoch_order(train_ids, seed=config.seed, epoch=r)
    bs = config.batch_size
    assert bs is not None, "config must be resolved (RunConfig.resolved) before training"
    steps = steps_in(len(order), bs)
    if isinstance(do.x_train, StreamedImages):  # (data.stream) its workers decode this round's batches ahead
        do.x_train.expect(order, bs, do.micro_batches)
    t0 = time.perf_counter()
    for s in range(steps):
        driver.run_step(do.stream_step(r, s, order[s * bs : (s + 1) * bs]), round=r, step=s)
        if not do.ready:
            raise RuntimeError(f"step {s} of round {r} did not complete; a party dropped a message")
        after_step(do, driver, validator, r, s)
        if on_step is not None:
            on_step(r, s, steps)
    if not do.step_done:  # overlap_steps: the round's last step is still in flight
        driver.drain(round=r)
        if not do.step_done:
            raise RuntimeError(f"the last step of round {r} did not complete; a party dropped a message")
    return RoundResult(do.take_stats(), time.perf_counter() - t0, len(order))


def round_metrics(r: int, result: RoundResult, config: RunConfig, **extra: Any) -> dict[str, Any]:
    """The round's entry of ``metrics.json`` (loss and accuracy on what the DO saw, speed, then ``extra``)."""
    st, secs = result.stats, result.seconds
    return {
        "epoch": r + 1,
        "loss": st.loss_sum / max(1, st.count),
        "train_acc": st.correct / max(1, st.count),
        "train_acc_labels": "true labels" if config.topology == "u-shape" else "labels as received by the tail",
        "seconds": secs,
        "samples_per_s": result.samples / secs if secs > 0 else 0.0,
    } | extra
