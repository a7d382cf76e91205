"""``train(config, out=RUN)``: the Python API behind ``clicooper train``, one process, every party.

Each round (= epoch) ends with a checkpoint of every party (weights + optimizer state, safetensors), the
delivered model files, metrics and, if asked, the observations; ``train(resume=RUN)`` continues after the
last completed round and reaches the same weights as an uninterrupted run (shuffling is derived from
(seed, epoch), noise from (secret, sample, epoch): no hidden RNG state).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from clicooper import rundir
from clicooper.config import RunConfig, make_config
from clicooper.core.budget import budget_stop, check_max_epsilon
from clicooper.core.checkpoint import completed_rounds, write_state
from clicooper.core.privacy import build_privacy
from clicooper.core.security import DetectionStop
from clicooper.core.setup import resolve_run
from clicooper.data import load_dataset
from clicooper.errors import ConfigError, InterruptedRun, RunDirError
from clicooper.models.partition import balance_warning
from clicooper.privacy.runtime import PrivacyMechanisms
from clicooper.runs import RunHandle
from clicooper.training import own_model
from clicooper.training.observe import ObservationRecorder, subset_ids
from clicooper.training.provenance_hooks import default_hooks
from clicooper.training.security import detection_stop, dismiss, round_records
from clicooper.training.session import Progress, RoundHooks, Session


def _open_run(config: RunConfig | dict[str, Any] | None, out: str | Path | None, resume: str | Path | None
              ) -> tuple[Path, RunConfig, int, dict[str, Any]]:
    """(run dir, config, completed rounds, metrics so far) of a new or resumed run; writes nothing."""
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / rundir.CONFIG).is_file():
            raise RunDirError(f"{run_dir} is not a run directory (no config.json); nothing to resume")
        config = make_config(**rundir.read_json(run_dir / rundir.CONFIG))
        done = completed_rounds(run_dir)
        metrics = rundir.read_json(run_dir / rundir.METRICS) if (run_dir / rundir.METRICS).is_file() else {"epochs": []}
        metrics["epochs"] = [m for m in metrics["epochs"] if m["epoch"] <= done]
        return run_dir, config, done, metrics
    if config is None or out is None:
        raise ConfigError("train() needs a config and out=RUN (or resume=RUN)")
    if isinstance(config, dict):
        config = make_config(**config)
    run_dir = Path(out)
    rundir.check_new_run_dir(run_dir)
    return run_dir, config, 0, {"epochs": []}


def _recorder(session: Session, run_dir: Path) -> ObservationRecorder | None:
    """The observation tap on the in-process network (``--record-observations``), with its index file."""
    config = session.config
    if not config.record_observations:
        return None
    rec_ids = session.train_ids if config.observe == "all" else subset_ids(session.train_ids, config.observe_count)

    def ids_of(epoch: int, step: int, micro: int) -> torch.Tensor:
        st = session.do.state
        assert st is not None and (st.epoch, st.step) == (epoch, step)
        return st.ids[micro]

    names = [t.name for t in session.trainers]
    recorder = ObservationRecorder(run_dir / rundir.OBSERVATIONS, names, rec_ids, ids_of, len(session.dataset.x_train),
                                   dtype=config.observe_dtype)
    session.net.taps.append(recorder)
    rundir.write_json(
        run_dir / rundir.OBSERVATIONS / "index.json",
        {"parties": names, "topology": config.topology,
         "subset": "all" if config.observe == "all" else f"fixed-{len(rec_ids)}", "dtype": config.observe_dtype,
         "epochs": list(range(1, config.epochs + 1)), "format": "docs/INTERNAL_API.md#run-directory-run"},
    )
    return recorder


class _Rounds:
    """The round loop of one invocation: budget stop, hooks, privacy record, checkpoints, metrics."""

    def __init__(self, session: Session, run_dir: Path, privacy: PrivacyMechanisms, hooks: RoundHooks | None,
                 metrics: dict[str, Any], recorder: ObservationRecorder | None) -> None:
        self.s, self.run_dir, self.privacy, self.hooks = session, run_dir, privacy, hooks
        self.metrics, self.recorder = metrics, recorder

    def run(self, done: int, *, max_epsilon: float | None, progress: Progress | None,
            on_epoch: Callable[[dict[str, Any]], None] | None) -> None:
        self.metrics.pop("stopped", None)
        for r in range(done, self.s.config.epochs):
            stopped = budget_stop(self.privacy, max_epsilon, r)
            if stopped is not None:
                self.metrics["stopped"] = stopped
                rundir.write_json(self.run_dir / rundir.METRICS, self.metrics)
                write_state(self.run_dir, r)
                return  # a budget stop leaves the ledger open: the run can resume
            try:
                m = self.one(r, progress)
            except DetectionStop as stop:  # saved, resumable; the DO's signed accusation is in the ledger
                detection_stop(self.s, self.run_dir, self.hooks, self.metrics, r, stop.alarm)
                return
            if on_epoch is not None:
                on_epoch(m)
        if self.hooks is not None:
            self.hooks.on_run_end(self.s.parties)

    def one(self, r: int, progress: Progress | None) -> dict[str, Any]:
        s, hooks = self.s, self.hooks
        if hooks is not None:
            hooks.on_round_start(r, s.parties)
        m = s.run_round(r, progress)
        round_records(s, self.run_dir, m, r)  # the guard's summary; RUN/attacks/active.json
        if self.privacy.enabled:
            record = self.privacy.record_after(r + 1)
            m["privacy"] = record.get("reports", record)
            rundir.write_json(self.run_dir / rundir.PRIVACY, record)
        if hooks is not None:
            hooks.on_round_end(r, s.parties, m)
        if self.recorder is not None:
            self.recorder.flush(r + 1, {t.name: t.module for t in s.trainers})
        s.save_checkpoint(r)
        s.save_model_files(r + 1)
        self.metrics["epochs"].append(m)
        self.metrics["final_test_acc"] = m["test_acc"]
        self.metrics["do_flop_share"] = s.plan.do_flop_share
        rundir.write_json(self.run_dir / rundir.METRICS, self.metrics)
        write_state(self.run_dir, r + 1)
        return m


def _initial_weights(config: RunConfig, model: own_model.Model | None, run_dir: Path, *, resumed: bool
                     ) -> tuple[RunConfig, dict[str, torch.Tensor] | None]:
    """(config, given initial weights): ``model=`` adopted for a new run, the saved ones for a resumed run."""
    if resumed:
        if model is not None:
            raise ConfigError("train(resume=RUN) rebuilds the run's own model; do not pass model=")
        return config, own_model.load_initial(run_dir)
    return own_model.adopt(config, model) if model is not None else (config, None)


def _start_files(session: Session, run_dir: Path, initial: Any, *, new_run: bool, done: int) -> None:
    """A new run writes its config, plan and round-0 model files; a resumed one loads its last checkpoint."""
    if new_run:
        if initial is not None:
            own_model.save_initial(run_dir, session.plan, initial)
        rundir.write_json(run_dir / rundir.CONFIG, session.config.model_dump(mode="json"))
        rundir.write_json(run_dir / rundir.PLAN, session.plan.to_dict())
        session.save_model_files(0)
    elif done > 0:
        session.load_checkpoint(done - 1)


def train(
    config: RunConfig | dict[str, Any] | None = None,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    progress: Progress | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    hooks: RoundHooks | None = None,
    max_epsilon: float | None = None,
    model: own_model.Model | None = None,
    dismiss_detection: bool = False,
) -> RunHandle:
    """Train a model cooperatively and return the run (see module docstring).

    Give ``config`` and ``out`` for a new run, or ``resume=RUN`` to continue an interrupted one. The model
    is built and its FLOPs counted once (:func:`clicooper.core.setup.resolve_run`).

    ``max_epsilon`` (a limit of this invocation, not part of the run's config): before each epoch, the
    ε every DP report of ``privacy.json`` would have after it is computed; if one would exceed the limit,
    training stops cleanly *before* that epoch — the completed epochs are saved, the ledger stays open, and
    ``metrics.json`` gets a ``"stopped"`` record — and ``--resume`` with a larger limit continues it.

    ``model`` (an ``nn.Sequential`` or a list of modules of allowlisted layer types): train it, from its
    own weights, instead of ``config.model`` (see :mod:`clicooper.training.own_model`).
    """
    run_dir, config, done, metrics = _open_run(config, out, resume)
    config, initial = _initial_weights(config, model, run_dir, resumed=resume is not None)
    dataset = load_dataset(config.dataset, options=config.data)
    config, blueprint = resolve_run(config, num_train=len(dataset.train_ids(config.train_range)),  # checks the range
                                    input_shape=dataset.input_shape, num_classes=dataset.num_classes,
                                    initial_state=initial)
    if model is not None:
        own_model.check_adopted(model, blueprint.model)
    check_max_epsilon(max_epsilon, config)
    run_dir.mkdir(parents=True, exist_ok=True)
    privacy = build_privacy(config, run_dir, dataset, blueprint, new_run=resume is None)
    try:
        session = Session(config, dataset, run_dir, blueprint=blueprint, privacy=privacy)
        if privacy.notice:
            print(privacy.notice, file=sys.stderr)
        if resume is None and (lopsided := balance_warning(session.plan)) is not None:
            print(lopsided, file=sys.stderr)  # before the first epoch: the user can stop and re-plan
        _start_files(session, run_dir, initial, new_run=resume is None, done=done)
        if hooks is None:
            hooks = default_hooks(config, run_dir, session, new_run=resume is None)
        if dismiss_detection:  # the DO reviewed an accusation and continues (training/security.py)
            dismiss(session)
        rounds = _Rounds(session, run_dir, privacy, hooks, metrics, _recorder(session, run_dir))
        rounds.run(done, max_epsilon=max_epsilon, progress=progress, on_epoch=on_epoch)
    except KeyboardInterrupt as e:
        raise InterruptedRun(
            f"interrupted; {completed_rounds(run_dir)} completed round(s) are saved in {run_dir}. "
            f"Continue with: clicooper train --resume {run_dir}"
        ) from e
    finally:
        privacy.close()  # the noise-prefetch thread (privacy/prefetch.py)
    model = session.model.cpu()
    return RunHandle(run_dir, config, session.plan, model, session.modules)
