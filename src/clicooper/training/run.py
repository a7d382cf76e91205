"""``train(config, out=RUN)``: the Python API behind ``clicooper train``, one process, every party.

Each round (= epoch) ends with a checkpoint of every party (weights + optimizer state, safetensors), the
delivered model files, metrics and, if asked, the observations; ``train(resume=RUN)`` continues after the
last completed round and reaches the same weights as an uninterrupted run (shuffling is derived from
(seed, epoch), noise from (secret, sample, epoch): no hidden RNG state).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from clicooper import rundir
from clicooper.config import RunConfig, make_config
from clicooper.config.defenses import expand_aliases, parse_defenses
from clicooper.core.budget import check_max_epsilon
from clicooper.core.checkpoint import completed_rounds, resumable_rounds, write_state
from clicooper.core.observe import ObservationRecorder, subset_ids, write_index
from clicooper.core.privacy import build_privacy
from clicooper.core.run_loop import Progress, RoundHooks, RunLoop, dismiss, read_metrics
from clicooper.core.setup import resolve_run
from clicooper.core.threads import check_threads, choose_threads, torch_threads
from clicooper.data import Dataset, load_dataset
from clicooper.data.given import GivenData, dataset_from, fingerprint, is_owner_code, open_dataset
from clicooper.data.tabular import csv_encoding
from clicooper.errors import ConfigError, InterruptedRun, RunDirError
from clicooper.models.describe import as_sequential, classes_of, is_own_module, peer_refusal
from clicooper.models.partition import balance_warning
from clicooper.runs import RunHandle
from clicooper.training import own_model
from clicooper.training.provenance_hooks import default_hooks
from clicooper.training.session import Session


def _defense_fields(defenses: Sequence[str | Mapping[str, Any]]) -> dict[str, Any]:
    """``defenses=[…]`` as config fields: the list itself where the config has typed defence specs
    (``RunConfig.defenses``, which validates it), else the ``defense`` field it amounts to, with each spec's
    settings in its table (``{"kind": "dp", "sigma": 0.5}`` → ``dp.sigma``)."""
    if "defenses" in RunConfig.model_fields:
        items = [d if isinstance(d, str) else dict(d) for d in defenses]
        try:
            parse_defenses(items)  # refused here, with the kinds to choose from
            return {"defenses": expand_aliases(items)}  # as given: a preset may still fill unset settings
        except ValueError as e:
            raise ConfigError(f"defenses: {e}") from e
    tables = {"dp": "dp", "labels": "labels"}
    kinds: set[str] = set()
    out: dict[str, Any] = {}
    for d in defenses:
        spec = {"kind": d} if isinstance(d, str) else dict(d)
        kind = spec.pop("kind", None)
        if kind not in ("none", "dp", "labels", "clicooper"):
            raise ConfigError(f"defenses: unknown kind {kind!r}; use dp, labels or clicooper (dp + labels), "
                              "each a name or a table such as {'kind': 'dp', 'sigma': 0.5}")
        if spec and kind not in tables:
            raise ConfigError(f"defenses: {kind} takes no settings here; give them as their own dp / labels entry")
        kinds |= {"dp", "labels"} if kind == "clicooper" else ({kind} - {"none"})
        if spec:
            out[tables[kind]] = out.get(tables[kind], {}) | spec
    out["defense"] = {frozenset(): "none", frozenset({"dp"}): "dp", frozenset({"labels"}): "labels"}.get(
        frozenset(kinds), "clicooper")
    return out


def _new_config(config: RunConfig | Mapping[str, Any] | None, fields: dict[str, Any]) -> RunConfig:
    """The caller's config with the keyword arguments' fields over it (a given field set twice is refused)."""
    if isinstance(config, RunConfig) and not fields:
        return config  # as given: not re-validated, so nothing about it can change
    base: dict[str, Any] = dict(config.model_dump() if isinstance(config, RunConfig) else (config or {}))
    named = set(config.model_fields_set) if isinstance(config, RunConfig) else set(base)
    clash = sorted(k for k in fields if k in named and base[k] != fields[k])
    if clash:
        raise ConfigError(f"{', '.join(clash)} given both in config and as a keyword argument; give each once")
    return make_config(**(base | fields))


def _open_run(config: RunConfig | Mapping[str, Any] | None, out: str | Path | None, resume: str | Path | None,
              fields: dict[str, Any]) -> tuple[Path, RunConfig, int, dict[str, Any]]:
    """(run dir, config, completed rounds, metrics so far) of a new or resumed run; writes nothing."""
    if resume is not None:
        if config is not None or out is not None or fields:
            given = ["config"] * (config is not None) + ["out"] * (out is not None) + sorted(fields)
            raise ConfigError(f"train(resume=RUN) continues the run's own config; drop {', '.join(given)}")
        run_dir = Path(resume)
        if not (run_dir / rundir.CONFIG).is_file():
            raise RunDirError(f"{run_dir} is not a run directory (no config.json); nothing to resume")
        config = make_config(**rundir.read_json(run_dir / rundir.CONFIG))
        done = resumable_rounds(run_dir)
        return run_dir, config, done, read_metrics(run_dir, done)
    if out is None:
        raise ConfigError("train() needs out=RUN, a new run directory (or resume=RUN)")
    config = _new_config(config, fields)
    run_dir = Path(out)
    rundir.check_new_run_dir(run_dir)
    return run_dir, config, 0, {"epochs": []}


def _dataset(config: RunConfig, run_dir: Path, data: GivenData | None, test_data: Any, *, resumed: bool,
             named: str | None) -> tuple[RunConfig, Dataset]:
    """The run's data: ``data=`` (the user's own objects, or a name) or the config's dataset. The DO's own
    Python data (``python:`` / ``given:``) of a resumed run must be given again, and must be the same; a
    ``python:`` name runs only when this call names it (``named``: ``data=`` / ``dataset=``), never because
    a config says so."""
    if resumed:
        plan = rundir.read_json(run_dir / rundir.PLAN) if (run_dir / rundir.PLAN).is_file() else {}
        return config, open_dataset(config.dataset, config.data, data, test_data,
                                    fingerprint_of_run=plan.get("extra", {}).get("data_fingerprint"))
    if data is None:
        if named != config.dataset:  # load_dataset refuses the DO's own names, saying how to give them
            return config, dataset_from(load_dataset(config.dataset, config.data), test_data)
        return config, dataset_from(config.dataset, test_data, options=config.data)
    ds = dataset_from(data, test_data, options=config.data)
    if ds.name != config.dataset:
        config = make_config(**(config.model_dump() | {"dataset": ds.name}))
    return config, ds


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
    recorder = ObservationRecorder(run_dir / rundir.OBSERVATIONS, names, rec_ids, ids_of, len(session.dataset.x_train),
                                   dtype=config.observe_dtype)
    session.net.taps.append(recorder)
    write_index(run_dir, config, names, rec_ids)
    return lambda epoch: recorder.flush(epoch, {t.name: t.module for t in session.trainers})


def _initial_weights(config: RunConfig, model: own_model.ModelArg | None, run_dir: Path, *, resumed: bool
                     ) -> tuple[RunConfig, dict[str, torch.Tensor] | None, nn.Sequential | None]:
    """(config, given initial weights, the user's own module): ``model=`` adopted for a new run, the saved
    weights for a resumed run (whose own module classes, if any, the caller gives again)."""
    if resumed:
        if is_own_module(config.model):
            if not isinstance(model, (nn.Module, list, tuple)):
                raise ConfigError(peer_refusal(classes_of(config.model)) + f"; to resume it in Python, pass the same module: "
                                  f"train(resume={str(run_dir)!r}, model=…)")
            module = as_sequential(model)
            own_model.check_own_architecture(run_dir, module)
            return config, own_model.load_initial(run_dir), module
        if model is not None:
            raise ConfigError("train(resume=RUN) rebuilds the run's own model; do not pass model=")
        return config, own_model.load_initial(run_dir), None
    if model is None:
        return config, None, None
    return own_model.adopt(config, model)


def _start_files(session: Session, run_dir: Path, initial: Any, *, new_run: bool, done: int) -> None:
    """A new run writes its config, plan and round-0 model files; a resumed one loads its last checkpoint."""
    if new_run:
        if initial is not None:
            own_model.save_initial(run_dir, session.plan, initial)
        rundir.write_json(run_dir / rundir.CONFIG, session.config.model_dump(mode="json"))
        rundir.write_json(run_dir / rundir.PLAN, session.plan.to_dict())
        if session.config.dataset.startswith("csv:"):  # so predict encodes raw rows as training did
            rundir.write_json(run_dir / rundir.PREPROCESSING,
                              csv_encoding(session.config.dataset.removeprefix("csv:"), session.config.data))
        session.save_model_files(0)
        write_state(run_dir, 0)  # from now on a missing state.json is a lost file, not a fresh run
    elif done > 0:
        session.load_checkpoint(done - 1)


def train(
    config: RunConfig | Mapping[str, Any] | None = None,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    model: own_model.ModelArg | None = None,
    data: GivenData | None = None,
    test_data: Any = None,
    defenses: Sequence[str | Mapping[str, Any]] | None = None,
    dataset: str | None = None,
    trainers: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    topology: Literal["u-shape", "open-tail"] | None = None,
    device: Literal["auto", "cpu", "cuda"] | None = None,
    provenance: bool | None = None,
    progress: Progress | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    hooks: RoundHooks | None = None,
    max_epsilon: float | None = None,
    dismiss_detection: bool = False,
    threads: int | None = None,
) -> RunHandle:
    """Train a model cooperatively and return the run (see module docstring).

    Give ``out`` for a new run, or ``resume=RUN`` to continue an interrupted one. The run's settings are
    ``config`` (a :class:`~clicooper.config.RunConfig` or its dict form; defaults when omitted) with the
    keyword arguments ``dataset`` … ``provenance`` over it (each is the config field of that name). The model
    is built and its FLOPs counted once (:func:`clicooper.core.setup.resolve_run`).

    ``model``: the user's own ``nn.Sequential`` (or list of layers), trained from its own weights; its own
    module classes train in-process as they are (:mod:`clicooper.training.own_model`); or a model file
    (``.toml`` / ``.json``), or a built-in model's name. Resuming a run of one's own module classes takes
    the same module again.

    ``data``: the data owner's data as a dataset name, a pair of tensors ``(x, y)``, or a map-style
    ``torch.utils.data.Dataset`` of ``(x, y)`` items, with ``test_data`` in the same form (else a fixed 80/20
    split); sample ids are index order (:mod:`clicooper.data.given`). Resuming such a run takes the same
    data again.

    ``defenses``: the DO's defences, each a kind (``"dp"``, ``"labels"``, …) or a table with its settings
    (``{"kind": "dp", "sigma": 0.5}``), validated by the config.

    ``max_epsilon`` (a limit of this invocation, not part of the run's config): before each epoch, the
    ε every DP report of ``privacy.json`` would have after it is computed; if one would exceed the limit,
    training stops cleanly *before* that epoch — the completed epochs are saved, the ledger stays open, and
    ``metrics.json`` gets a ``"stopped"`` record — and ``--resume`` with a larger limit continues it.

    ``threads`` (also a limit of this invocation): torch's intra-op threads while it trains, the caller's
    count given back afterwards; default torch's own (:func:`clicooper.core.threads.choose_threads`). The
    split, with the background workers beside it, is recorded in ``metrics.json`` (``"threads"``).
    """
    check_threads(threads)  # before any data is read
    given = {"dataset": dataset, "trainers": trainers, "epochs": epochs, "batch_size": batch_size, "lr": lr,
             "seed": seed, "topology": topology, "device": device, "provenance": provenance}
    fields = {k: v for k, v in given.items() if v is not None}
    if isinstance(model, (str, Path)):
        fields |= own_model.model_fields(model)
        model = None
    named = data if isinstance(data, str) else dataset  # a python: name runs only when named here
    if isinstance(data, str) and resume is None:  # a name: the config's dataset field
        if fields.get("dataset", data) != data:
            raise ConfigError(f"dataset={fields['dataset']!r} and data={data!r} name two datasets; give one")
        fields["dataset"], data = data, None
    if defenses is not None:
        fields |= _defense_fields(defenses)
    resumed = resume is not None
    run_dir, config, done, metrics = _open_run(config, out, resume, fields)
    config, ds = _dataset(config, run_dir, data, test_data, resumed=resumed, named=named)
    if model is not None:  # label obfuscation: an output layer of C classes gets C·m outputs
        model = own_model.fit_outputs(model, config, ds.num_classes)
    config, initial, module = _initial_weights(config, model, run_dir, resumed=resumed)
    config, blueprint = resolve_run(config, num_train=len(ds.train_ids(config.train_range)),  # checks the range
                                    input_shape=ds.input_shape, num_classes=ds.num_classes,
                                    initial_state=initial, module=module)
    if is_owner_code(config.dataset):  # a reopened run checks it is given the same data
        blueprint.plan.extra["data_fingerprint"] = fingerprint(ds)
    if model is not None and module is None and not resumed:
        own_model.check_adopted(model, blueprint.model)
    check_max_epsilon(max_epsilon, config)
    split = choose_threads(config, threads)
    metrics["threads"] = split.record()  # what this invocation's samples/s were measured with
    made_dir = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with torch_threads(split.torch):
            return _invocation(config, run_dir, ds, blueprint, initial, resumed=resumed, done=done,
                               metrics=metrics, progress=progress, on_epoch=on_epoch, hooks=hooks,
                               max_epsilon=max_epsilon, dismiss_detection=dismiss_detection)
    except InterruptedRun:
        raise  # Ctrl-C: saved as far as it got, and the message says how to resume
    except Exception:
        if not resumed:
            _discard_unfinished_new_run(run_dir, made_dir)
        raise


def _discard_unfinished_new_run(run_dir: Path, made_dir: bool) -> None:
    """A new run that failed before completing a round (e.g. an undecodable image read by ``--stream``)
    leaves nothing behind, so the same ``--out`` works again. Only what this invocation made goes: the
    directory was new or empty (:func:`rundir.check_new_run_dir`); a run with a completed round stays,
    resumable."""
    import shutil

    try:
        if completed_rounds(run_dir) > 0:
            return
    except RunDirError:
        pass  # a half-written state.json of round 0: nothing completed
    if made_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for child in run_dir.iterdir():  # it was empty before: everything in it is this invocation's
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _invocation(config: RunConfig, run_dir: Path, ds: Dataset, blueprint: Any, initial: Any, *,
                resumed: bool, done: int, metrics: dict[str, Any], progress: Progress | None,
                on_epoch: Callable[[dict[str, Any]], None] | None, hooks: RoundHooks | None,
                max_epsilon: float | None, dismiss_detection: bool) -> RunHandle:
    """The part of :func:`train` that writes into the run directory: privacy, session, the rounds."""
    privacy = build_privacy(config, run_dir, ds, blueprint, new_run=not resumed)
    try:
        session = Session(config, ds, run_dir, blueprint=blueprint, privacy=privacy)
        if privacy.notice:
            print(privacy.notice, file=sys.stderr)
        if not resumed and (lopsided := balance_warning(session.plan)) is not None:
            print(lopsided, file=sys.stderr)  # before the first epoch: the user can stop and re-plan
        _start_files(session, run_dir, initial, new_run=not resumed, done=done)
        if hooks is None:
            hooks = default_hooks(config, run_dir, session, new_run=not resumed)
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
    trained = session.model.cpu()
    return RunHandle(run_dir, config, session.plan, trained, session.modules, _dataset=ds)
