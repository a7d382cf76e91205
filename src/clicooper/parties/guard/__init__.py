"""The DO's live detection of malicious trainers (docs/design/parties.md#malicious-trainers; docs/malicious.md).

:class:`Guard` is what :class:`clicooper.parties.data_owner.DataOwner` calls while it trains: it decides
which steps are SplitGuard's fake batches and relabels their rows (:mod:`.splitguard`), tests the per-sample
gradients the head receives (:mod:`.scrutinizer`), records the head's gradient before each step (and tells
the DO not to apply a fake batch's), and takes the validation results the session core measures through the
chain (:mod:`.progress`). The first check that fires sets :attr:`Guard.alarm`; the round loop then stops the
run cleanly (:mod:`clicooper.core.rounds`). Everything here is DO-side and uses only what the DO holds: its
labels, its head, what it received, and a key of its own for the fake-batch draws.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from clicooper.config.security import DetectionConfig
from clicooper.parties.guard.alarm import Alarm
from clicooper.parties.guard.progress import Progress
from clicooper.parties.guard.scrutinizer import Scrutinizer
from clicooper.parties.guard.splitguard import SplitGuard


class Guard:
    """The DO's checks of one run (see module docstring). ``seconds`` is the DO time they took."""

    def __init__(self, config: DetectionConfig, *, num_classes: int, key: bytes, head: nn.Module,
                 trainers: list[str]) -> None:
        self.config, self.head, self.trainers = config, head, trainers
        self.splitguard = SplitGuard(config.splitguard, num_classes, key) if config.splitguard.enabled else None
        self.scrutinizer = Scrutinizer(config.scrutinizer) if config.scrutinizer.enabled else None
        self.progress = Progress(config.validation, num_classes) if config.validation.enabled else None
        self.alarm: Alarm | None = None  # the first alarm
        self.alarms: dict[str, Alarm] = {}  # the first alarm of each check
        self.seconds = 0.0
        self.fake_steps = 0
        self._fake = False
        self._used: dict[int, torch.Tensor] = {}

    # -- called by the DataOwner --------------------------------------------------------------------
    def begin_step(self, epoch: int, step: int) -> None:
        """A step starts: is it a fake batch?"""
        t0 = time.perf_counter()
        self._fake = self.splitguard is not None and self.splitguard.is_fake(epoch, step)
        self.fake_steps += int(self._fake)
        self._used = {}
        self.seconds += time.perf_counter() - t0

    def labels(self, epoch: int, step: int, micro: int, y: torch.Tensor) -> torch.Tensor:
        """The (true-space) labels the DO trains micro-batch ``micro`` on: fake ones on a fake batch."""
        if self._fake:
            assert self.splitguard is not None
            y = self.splitguard.fake_labels(epoch, step, micro, y)
        self._used[micro] = y
        return y

    def on_gradient(self, epoch: int, step: int, micro: int, g: torch.Tensor) -> None:
        """The per-sample gradient of micro-batch ``micro`` arrived from T1."""
        sc = self.scrutinizer
        if sc is None or micro != 0 or not sc.wants(step):
            return
        t0 = time.perf_counter()
        sc.test(g.detach().cpu(), self._used[micro].cpu())
        self._check("scrutinizer", sc.verdict(), (self.trainers[0],), epoch, step)
        self.seconds += time.perf_counter() - t0

    def before_step(self, epoch: int, step: int) -> bool:
        """Record the head's gradient; ``False``: a fake batch, do not apply it."""
        t0 = time.perf_counter()
        if self.scrutinizer is not None:
            self.scrutinizer.end_step()
        sg = self.splitguard
        if sg is not None:
            grads = [p.grad.flatten() for p in self.head.parameters() if p.grad is not None]
            if grads:
                sg.record(epoch, step, self._fake, torch.cat(grads).detach().double().cpu())
                if self._fake:
                    self._check("splitguard", sg.verdict(), (self.trainers[0],), epoch, step)
        self.seconds += time.perf_counter() - t0
        return not self._fake

    # -- called by the session core --------------------------------------------------------------------
    def on_validation(self, epoch: int, step: int, accuracy: float, loss: float) -> None:
        """A validation through the chain was scored."""
        if self.progress is None:
            return
        self.progress.add(epoch, step, accuracy, loss)
        self._check("validation", self.progress.verdict(), tuple(self.trainers), epoch, step)

    def _check(self, detector: str, evidence: dict[str, Any] | None, suspects: tuple[str, ...], epoch: int,
               step: int) -> None:
        if evidence is None or detector in self.alarms:
            return
        self.alarms[detector] = Alarm(detector, suspects, epoch, step, evidence)
        if self.alarm is None:
            self.alarm = self.alarms[detector]

    def summary(self) -> dict[str, Any]:
        """What the checks saw (``metrics.json``: ``detection``)."""
        out: dict[str, Any] = {"seconds": self.seconds, "fake_steps": self.fake_steps,
                               "alarm": None if self.alarm is None else self.alarm.to_json(),
                               "alarms": {k: {"round": a.round, "step": a.step} for k, a in self.alarms.items()}}
        if self.splitguard is not None:
            out["splitguard_scores"] = [round(s, 4) for s in self.splitguard.scores]
        if self.scrutinizer is not None:
            g = self.scrutinizer.gaps
            out["scrutinizer"] = {"tests": len(g), "mean_gap": sum(g) / len(g) if g else None,
                                  "min_gap": min(g) if g else None}
        if self.progress is not None:
            out["validation"] = self.progress.history[-20:]
        return out


__all__ = ["Alarm", "Guard"]
