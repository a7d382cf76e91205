"""The run-level loop, once for every deployment: the in-process ``train`` and the DO node both drive it.

Per round ``r`` (0-based) of one invocation, from the first not yet completed:

1. the ε budget (``max_epsilon``, :mod:`.budget`): a round whose releases would take an ε report above it is
   not started — ``metrics.json`` gets a ``"stopped"`` record, the ledger stays open, the run can resume;
2. the round hooks' start (provenance: marks, start commitments), the round's steps
   (:meth:`RoundDriver.train_round`; the DO's guard may raise :class:`~.security.DetectionStop` mid-round);
3. the round's records: the guard's summary in the metrics and ``RUN/attacks/active.json``, the privacy
   record ``RUN/privacy.json`` (``metrics["privacy"]``), the hooks' end (the ledger's stage entries);
4. the observations of the round (where this process records them), every party's checkpoint and model
   files (:meth:`RoundDriver.save_round`), ``metrics.json`` and ``state.json``.

On a detection stop the DO signs an accusation into the ledger (``hooks.accuse``), ``metrics.json`` gets a
``"stopped"`` record naming the suspects and the evidence, ``state.json`` keeps the completed rounds, and
the run resumes from there — deterministically, so the same trainers are flagged again, unless the DO,
having reviewed the accusation, resumes with detection dismissed (:func:`dismiss`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from clicooper import rundir
from clicooper.core.budget import budget_stop
from clicooper.core.checkpoint import write_state
from clicooper.core.security import DetectionStop
from clicooper.parties.guard import Alarm
from clicooper.privacy.runtime import PrivacyMechanisms

ACTIVE_REPORT = "active.json"
#: progress(epoch (1-based), step (1-based), steps_in_epoch)
Progress = Callable[[int, int, int], None]


class RoundHooks(Protocol):
    """Extension points around rounds (provenance uses them: ledger + watermark; ``accuse`` optional)."""

    def on_round_start(self, r: int, parties: dict[str, Any]) -> None:
        """Before the first step of round ``r`` (0-based)."""
        ...

    def on_round_end(self, r: int, parties: dict[str, Any], metrics: dict[str, Any]) -> None:
        """After the last step of round ``r``, before the checkpoint is written."""
        ...

    def on_run_end(self, parties: dict[str, Any]) -> None:
        """After the last round."""
        ...


class RoundDriver(Protocol):
    """One deployment's side of the run loop: the parties in this process and how a round reaches the others
    (:class:`clicooper.training.session.Session` in one process, the DO node over gRPC)."""

    config: Any
    guard: Any  # the DO's Guard, or None (detection off or dismissed)
    validator: Any

    @property
    def parties(self) -> dict[str, Any]:
        """The party objects in this process, by name (for the round hooks)."""
        ...

    def train_round(self, r: int, progress: Progress | None) -> dict[str, Any]:
        """Round ``r``'s steps; its entry of ``metrics.json`` (may raise :class:`DetectionStop`)."""
        ...

    def save_round(self, r: int) -> None:
        """Every party's checkpoint after round ``r`` and its model files (epoch ``r + 1``)."""
        ...

    def trainer_reports(self) -> dict[str, Any]:
        """What a malicious trainer in this process reports (``RUN/attacks/active.json``'s ``"trainer"``)."""
        ...

    def flop_share(self) -> float:
        """The DO's share of the model's FLOPs (``metrics.json``)."""
        ...


def active_report(driver: RoundDriver) -> dict[str, Any] | None:
    """What ``config.adversary``'s trainer reports (behaviour, curve …) and the guard's summary."""
    adv = driver.config.adversary
    if adv is None and driver.guard is None:
        return None
    out: dict[str, Any] = {"adversary": None if adv is None else adv.model_dump(mode="json")}
    out |= driver.trainer_reports()
    if driver.guard is not None:
        out["detection"] = driver.guard.summary()
        if driver.validator is not None:
            out["detection"]["validation_seconds"] = driver.validator.seconds
    return out


def write_active_report(driver: RoundDriver, run_dir: Path, extra: dict[str, Any] | None = None) -> None:
    """``RUN/attacks/active.json`` (nothing when the run has neither adversary nor detection)."""
    rep = active_report(driver)
    if rep is not None:
        rundir.write_json(Path(run_dir) / rundir.ATTACKS / ACTIVE_REPORT, rep | (extra or {}))


def dismiss(driver: RoundDriver) -> None:
    """Live detection off for this invocation (the DO reviewed the accusation and continues)."""
    driver.parties["DO"].guard = None
    driver.guard = None
    driver.validator = None


def read_metrics(run_dir: Path, done: int) -> dict[str, Any]:
    """``metrics.json`` cut to the ``done`` completed rounds (``{"epochs": []}`` for a new run)."""
    f = Path(run_dir) / rundir.METRICS
    metrics = rundir.read_json(f) if f.is_file() else {"epochs": []}
    metrics["epochs"] = [m for m in metrics["epochs"] if m["epoch"] <= done]
    return metrics


class RunLoop:
    """The rounds of one invocation over a :class:`RoundDriver` (see module docstring)."""

    def __init__(self, driver: RoundDriver, run_dir: Path, privacy: PrivacyMechanisms, hooks: RoundHooks | None,
                 metrics: dict[str, Any], *, observe: Callable[[int], None] | None = None, resume_hint: str) -> None:
        """``observe(epoch)``: write the observations recorded in this process during that epoch (1-based);
        ``resume_hint``: the command that continues the run, for the ``"stopped"`` record."""
        self.d, self.run_dir, self.privacy, self.hooks = driver, Path(run_dir), privacy, hooks
        self.metrics, self.observe, self.resume_hint = metrics, observe, resume_hint

    def run(self, done: int, *, max_epsilon: float | None = None, progress: Progress | None = None,
            on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
        """Rounds ``done`` … ``epochs − 1``; the ``"stopped"`` record of a clean stop, else ``None``."""
        self.metrics.pop("stopped", None)
        for r in range(done, self.d.config.epochs):
            stopped = budget_stop(self.privacy, max_epsilon, r)
            if stopped is not None:
                self.metrics["stopped"] = stopped
                rundir.write_json(self.run_dir / rundir.METRICS, self.metrics)
                write_state(self.run_dir, r)
                return stopped  # a budget stop leaves the ledger open: the run can resume
            try:
                m = self.one(r, progress)
            except DetectionStop as stop:  # saved, resumable; the DO's signed accusation is in the ledger
                return self.detection_stop(r, stop.alarm)
            if on_epoch is not None:
                on_epoch(m)
        if self.hooks is not None:
            self.hooks.on_run_end(self.d.parties)
        return None

    def one(self, r: int, progress: Progress | None) -> dict[str, Any]:
        """Round ``r`` and its records (steps 2–4 of the module docstring); its metrics."""
        d, hooks = self.d, self.hooks
        if hooks is not None:
            hooks.on_round_start(r, d.parties)
        m = d.train_round(r, progress)
        if d.guard is not None:
            m["detection"] = d.guard.summary()
        write_active_report(d, self.run_dir)
        if self.privacy.enabled:
            record = self.privacy.record_after(r + 1)
            m["privacy"] = record.get("reports", record)
            rundir.write_json(self.run_dir / rundir.PRIVACY, record)
        if hooks is not None:
            hooks.on_round_end(r, d.parties, m)
        if self.observe is not None:
            self.observe(r + 1)
        d.save_round(r)
        self.metrics["epochs"].append(m)
        if "test_acc" in m:
            self.metrics["final_test_acc"] = m["test_acc"]
        self.metrics["do_flop_share"] = d.flop_share()
        rundir.write_json(self.run_dir / rundir.METRICS, self.metrics)
        write_state(self.run_dir, r + 1)
        return m

    def detection_stop(self, r: int, alarm: Alarm) -> dict[str, Any]:
        """Stop cleanly on ``alarm`` during round ``r`` (see module docstring); returns the stop record."""
        accuse = getattr(self.hooks, "accuse", None)
        entry_hash = accuse(alarm) if accuse is not None else None
        stopped = {"reason": "detection", "before_epoch": r + 1, "completed_epochs": r, **alarm.to_json(),
                   "ledger_entry": entry_hash, "resume": self.resume_hint}
        self.metrics["stopped"] = stopped
        rundir.write_json(self.run_dir / rundir.METRICS, self.metrics)
        write_state(self.run_dir, r)
        write_active_report(self.d, self.run_dir, {"stopped": stopped})
        return stopped
