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
from clicooper.core.budget import check_max_epsilon
from clicooper.core.checkpoint import completed_rounds
from clicooper.core.observe import ObservationRecorder, subset_ids, write_index
from clicooper.core.privacy import build_privacy
from clicooper.core.run_loop import Progress, RoundHooks, RunLoop, dismiss, read_metrics
from clicooper.core.setup import resolve_run
from clicooper.data import load_dataset
from clicooper.errors import ConfigError, InterruptedRun, RunDirError
from clicooper.runs import RunHandle
from clicooper.training import own_model
from clicooper.training.provenance_hooks import default_hooks
from clicooper.training.session import Session


def _open_run(config: RunConfig | dict[str, Any] | None, out: str | Path | None, resume: str | Path | None
              ) -> tuple[Path, RunConfig, int, dict[str, Any]]:
    """(run dir, config, completed rounds, metrics so far) of a new or resumed run; writes nothing."""
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / rundir.CONFIG).is_file():
            raise RunDirError(f"{run_dir} is not a run directory (no config.json); nothing to resume")
        config = make_config(**rundir.read_json(run_dir / rundir.CONFIG))
        done = completed_rounds(run_dir)
        return run_dir, config, done, read_metrics(run_dir, done)
    if config is None or out is None:
        raise ConfigError("train() needs a config and out=RUN (or resume=RUN)")
    if isinstance(config, dict):
        config = make_config(**config)
    run_dir = Path(out)
    rundir.check_new_run_dir(run_dir)
    return run_dir, config, 0, {"epochs": []}


def _recorder(session: Session, run_dir: Path) -> Callable[[int], None] | None:
    """The observation tap on the in-process network (``--record-observations``), with its index file;
    returns the run loop's ``observe(epoch)``."""
    config = session.config
    if not config.record_observations:
        return None
    rec_ids = session.train_ids if config.observe == "all" else subset_ids(session.train_ids, config.observe_count)

    def ids_of(epoch: int, step: int, micro: int) -> torch.Tensor:
        st = session.do.state
        assert st is not None and (st.epoch, st.step) == (epoch, step)
        return st.ids[micro]

    names = [t.name for t in session.trainers]
    recorder = ObservationRecorder(run_dir / rundir.OBSERVATIONS, names, rec_ids, ids_of, len(session.dataset.x_train))
    session.net.taps.append(recorder)
    write_index(run_dir, config, names, rec_ids)
    return lambda epoch: recorder.flush(epoch, {t.name: t.module for t in session.trainers})


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
        _start_files(session, run_dir, initial, new_run=resume is None, done=done)
        if hooks is None:
            hooks = default_hooks(config, run_dir, session, new_run=resume is None)
        if dismiss_detection:  # the DO reviewed an accusation and continues (core/run_loop.py)
            dismiss(session)
        loop = RunLoop(session, run_dir, privacy, hooks, metrics, observe=_recorder(session, run_dir),
                       resume_hint=f"clicooper train --resume {run_dir} (add --dismiss-detection to continue past it)")
        loop.run(done, max_epsilon=max_epsilon, progress=progress, on_epoch=on_epoch)
    except KeyboardInterrupt as e:
        raise InterruptedRun(
            f"interrupted; {completed_rounds(run_dir)} completed round(s) are saved in {run_dir}. "
            f"Continue with: clicooper train --resume {run_dir}"
        ) from e
    finally:
        privacy.close()  # the noise-prefetch thread (privacy/prefetch.py)
    model = session.model.cpu()
    return RunHandle(run_dir, config, session.plan, model, session.modules)
