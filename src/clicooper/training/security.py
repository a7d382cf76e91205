"""An in-process run's side of issue 15: a clean stop on detection, the records of malicious trainers.

- :func:`detection_stop` — the DO's guard raised an alarm in round ``r``: the DO signs an accusation into the
  ledger (naming the suspects and the evidence; ``clicooper verify`` shows it), ``metrics.json`` gets a
  ``"stopped"`` record, ``state.json`` keeps the completed rounds: the run is saved (its last checkpoint is
  the end of round ``r − 1``) and ``train(resume=RUN)`` redoes round ``r`` — deterministically, so the same
  trainers are flagged again, unless the DO, having reviewed the accusation, resumes with
  ``dismiss_detection=True`` (``--dismiss-detection``: live detection off for that invocation);
- :func:`round_records` — per round: the guard's summary in the round's metrics, and
  ``RUN/attacks/active.json`` (what the malicious trainer did and measured, and what the guard saw).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from clicooper import rundir
from clicooper.attacks.active import BackdoorTrainer, backdoor_success
from clicooper.core.checkpoint import write_state
from clicooper.parties.guard import Alarm

ACTIVE_REPORT = "active.json"


def active_report(session: Any) -> dict[str, Any] | None:
    """What ``config.adversary``'s trainer reports (behaviour, curve …) and the guard's summary."""
    adv = session.config.adversary
    if adv is None and session.guard is None:
        return None
    out: dict[str, Any] = {"adversary": None if adv is None else adv.model_dump(mode="json")}
    for t in session.trainers:
        if hasattr(t, "summary"):
            out["trainer"] = t.summary()
    if session.guard is not None:
        out["detection"] = session.guard.summary()
        if session.validator is not None:
            out["detection"]["validation_seconds"] = session.validator.seconds
    return out


def write_active_report(session: Any, run_dir: Path, extra: dict[str, Any] | None = None) -> None:
    """``RUN/attacks/active.json`` (nothing when the run has neither adversary nor detection)."""
    rep = active_report(session)
    if rep is not None:
        rundir.write_json(Path(run_dir) / rundir.ATTACKS / ACTIVE_REPORT, rep | (extra or {}))


def _backdoor_success(session: Any, r: int) -> None:
    """The backdoor's success on the test split after round ``r`` (attacks/active/backdoor.py), evaluated on
    the current segments as if delivered; recorded in the trainer's report."""
    bd = next((t for t in session.trainers if isinstance(t, BackdoorTrainer) and t.trigger is not None), None)
    if bd is None or session.do.tail is None:
        return
    parts = [session.modules[p.party] for p in session.plan.parties][:-1]

    def to_cut(x: torch.Tensor) -> torch.Tensor:
        for m in parts:
            x = m(x.to(next(m.parameters()).device))
        return x

    res = backdoor_success(to_cut, session.do.answer_probs, bd.trigger, session.dataset.x_test,
                           session.dataset.y_test, bd.adversary.target_class)
    bd.report["success"].append({"round": r} | res)


def round_records(session: Any, run_dir: Path, metrics: dict[str, Any], r: int | None = None) -> None:
    """After a round: the guard's summary into the round's ``metrics``; the backdoor's success;
    ``RUN/attacks/active.json``."""
    if session.guard is not None:
        metrics["detection"] = session.guard.summary()
    if r is not None:
        _backdoor_success(session, r)
    write_active_report(session, run_dir)


def detection_stop(session: Any, run_dir: Path, hooks: Any, metrics: dict[str, Any], r: int,
                   alarm: Alarm) -> dict[str, Any]:
    """Stop cleanly on ``alarm`` during round ``r`` (see module docstring); returns the stop record."""
    entry_hash = None
    accuse = getattr(hooks, "accuse", None)
    if accuse is not None:
        entry_hash = accuse(alarm)
    stopped = {"reason": "detection", "before_epoch": r + 1, "completed_epochs": r, **alarm.to_json(),
               "ledger_entry": entry_hash,
               "resume": f"clicooper train --resume {run_dir} (add --dismiss-detection to continue past it)"}
    metrics["stopped"] = stopped
    rundir.write_json(Path(run_dir) / rundir.METRICS, metrics)
    write_state(run_dir, r)
    write_active_report(session, run_dir, {"stopped": stopped})
    return stopped


def dismiss(session: Any) -> None:
    """Live detection off for this invocation (the DO reviewed the accusation and continues)."""
    session.do.guard = None
    session.guard = None
    session.validator = None
