"""The session core's side of issue 15: the DO's guard, the validation queries, malicious trainers.

- :func:`build_guard` — the DO's :class:`~clicooper.parties.guard.Guard` when ``config.detection`` is on, its
  fake-batch key in ``RUN/secrets/guard_key`` (32 random bytes, 0600: the trainers must not predict which
  batches are fake; a resumed run draws the same ones);
- :class:`Validator` — every ``detection.validation.every`` steps, the DO's held-out rows through the chain
  as queries (:meth:`~clicooper.core.rounds.StepDriver.run_query`), scored by the DO's tail;
- :class:`DetectionStop` — raised by the round loop when the guard raised an alarm;
- :func:`adversary_context` — what the simulation lends a malicious trainer;
- :func:`trainer_factory` — ``Trainer``, or ``config.adversary``'s behaviour looked up in the registry the
  caller passes (:data:`clicooper.parties.adversary.Adversaries`): the core never imports the attack suite.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from clicooper.config import RunConfig
from clicooper.errors import ConfigError
from clicooper.parties.adversary import Adversaries, AdversaryContext, Truth
from clicooper.parties.data_owner import DataOwner
from clicooper.parties.guard import Alarm, Guard
from clicooper.parties.trainer import Trainer

GUARD_KEY = "guard_key"
#: query steps of the validation start here (far above any training step of a round)
QUERY_STEP_BASE = 1 << 40


class DetectionStop(Exception):
    """The DO's guard raised an alarm during round ``alarm.round``; the run stops cleanly."""

    def __init__(self, alarm: Alarm) -> None:
        super().__init__(alarm.message())
        self.alarm = alarm


def guard_key(run_dir: Path | None) -> bytes:
    """``RUN/secrets/guard_key`` (created on first use); a fresh random key without a run directory."""
    if run_dir is None:
        return os.urandom(32)
    d = Path(run_dir) / "secrets"
    f = d / GUARD_KEY
    if f.is_file():
        return f.read_bytes()
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = os.urandom(32)
    fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def build_guard(config: RunConfig, do: DataOwner, num_classes: int, run_dir: Path | None) -> Guard | None:
    """Attach the DO's guard when ``config.detection.enabled`` (returns it, or ``None``)."""
    if not config.detection.enabled:
        return None
    guard = Guard(config.detection, num_classes=num_classes, key=guard_key(run_dir), head=do.head,
                  trainers=list(do.trainers))
    do.guard = guard
    return guard


class Validator:
    """The DO's validation through the chain (:mod:`clicooper.parties.guard.progress`)."""

    def __init__(self, config: RunConfig, do: DataOwner, dataset: Any) -> None:
        vc = config.detection.validation
        n = len(dataset.x_test)
        lo = max(n // 2, n - vc.rows)  # the last rows of the test split's second half (never aux data)
        self.x, self.y = dataset.x_test[lo:], dataset.y_test[lo:]
        self.do, self.every, self.calls, self.seconds = do, vc.every, 0, 0.0

    def due(self, step: int) -> bool:
        """Whether a validation follows step ``step``."""
        return (step + 1) % self.every == 0

    def run(self, driver: Any, r: int, step: int) -> None:
        """Query the held-out rows, score them with the DO's tail, give the result to the guard."""
        t0 = time.perf_counter()
        qstep = QUERY_STEP_BASE + self.calls
        ids = torch.arange(len(self.x), dtype=torch.int64) + self.calls * len(self.x)
        self.calls += 1
        self.do.infer_results.pop((qstep, 0), None)
        driver.run_query(self.do.start_query(self.x, epoch=r, step=qstep, query_ids=ids), round=r, step=step,
                         answered=lambda: (qstep, 0) in self.do.infer_results)
        ans = self.do.infer_results.pop((qstep, 0), None)
        if ans is None:
            raise RuntimeError(f"the validation query after step {step} of round {r} got no answer")
        p = self.do.answer_probs(ans).cpu()
        acc = float((p.argmax(1) == self.y).float().mean())
        loss = float(F.nll_loss(p.clamp_min(1e-12).log(), self.y))
        self.seconds += time.perf_counter() - t0
        assert self.do.guard is not None
        self.do.guard.on_validation(r, step, acc, loss)


def after_step(do: DataOwner, driver: Any, validator: Validator | None, r: int, step: int) -> None:
    """The round loop's checks after step ``step``: validation when due, then stop on an alarm."""
    if do.guard is None:
        return
    stop = do.guard.config.stop_on_alarm
    if validator is not None and validator.due(step) and not (stop and do.guard.alarm is not None):
        validator.run(driver, r, step)
    if stop and do.guard.alarm is not None:
        raise DetectionStop(do.guard.alarm)


def adversary_context(config: RunConfig, dataset: Any, truth: Truth | None) -> AdversaryContext:
    """Public auxiliary data (the first half of the test split), the evaluator's truth (``None`` on a node,
    where it is the DO's), shapes."""
    half = len(dataset.x_test) // 2
    return AdversaryContext(num_classes=dataset.num_classes, seed=config.seed, aux_x=dataset.x_test[:half],
                            aux_y=dataset.y_test[:half], truth=truth, input_shape=tuple(dataset.input_shape))


def trainer_factory(config: RunConfig, name: str, context: AdversaryContext | None,
                    adversaries: Adversaries | None = None) -> Any:
    """``Trainer``, or the malicious trainer of ``config.adversary`` where it names ``name`` (a callable with
    the Trainer's arguments): its behaviour looked up in ``adversaries``, lent ``context`` by the simulation
    (a bare one when the caller has none). A behaviour the registry lacks is refused."""
    adv = config.adversary
    if adv is None or adv.party_for(config.trainers) != name:
        return Trainer
    if adversaries is None:
        raise ConfigError(f"config.adversary makes {name} a malicious trainer ({adv.behaviour}), but this path "
                          "builds no malicious trainers (no adversary registry was given)")
    factory = adversaries.get(adv.behaviour)
    if factory is None:
        raise ConfigError(f"adversary behaviour {adv.behaviour!r} is not registered; known: "
                          f"{', '.join(sorted(adversaries))}")
    ctx = context or AdversaryContext(num_classes=0, seed=config.seed)
    return functools.partial(factory, adversary=adv, context=ctx)
