"""Builds the parties over a transport and runs the rounds (DESIGN §2), writing the run directory.

``train(config, out=RUN)`` is the Python API behind ``clicooper train``. Each round (= epoch) ends with a
checkpoint of every party (weights + optimizer state, safetensors), the delivered model files, metrics and,
if asked, the observations; ``train(resume=RUN)`` continues after the last completed round and reaches the
same weights as an uninterrupted run (shuffling is derived from (seed, epoch), noise from (secret, sample,
epoch): no hidden RNG state).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from clicooper import rundir
from clicooper.config import RunConfig, make_config
from clicooper.data import Dataset, load_dataset
from clicooper.errors import ConfigError, InterruptedRun, RunDirError
from clicooper.models import zoo
from clicooper.models.partition import Plan, make_plan, split_model
from clicooper.parties.data_owner import DataOwner
from clicooper.parties.trainer import Trainer
from clicooper.privacy.dpsgd import head_dpsgd_for
from clicooper.protocol.inproc import InProcessNetwork
from clicooper.runs import RunHandle, load_run, model_file, num_outputs_for
from clicooper.training.observe import ObservationRecorder, subset_ids

#: progress(epoch (1-based), step, steps_in_epoch)
Progress = Callable[[int, int, int], None]


class RoundHooks(Protocol):
    """Extension points around rounds (provenance uses them: ledger + watermark)."""

    def on_round_start(self, r: int, parties: dict[str, Any]) -> None:
        """Before the first step of round ``r`` (0-based)."""
        ...

    def on_round_end(self, r: int, parties: dict[str, Any], metrics: dict[str, Any]) -> None:
        """After the last step of round ``r``, before the checkpoint is written."""
        ...

    def on_run_end(self, parties: dict[str, Any]) -> None:
        """After the last round."""
        ...


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda`` without a GPU → clear error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked but no CUDA GPU is visible; use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def epoch_order(train_ids: torch.Tensor, *, seed: int, epoch: int) -> torch.Tensor:
    """The DO's shuffle of its training ids for ``epoch`` (0-based), a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) & 0x7FFF_FFFF_FFFF_FFFF)
    return train_ids[torch.randperm(len(train_ids), generator=g)]


def plan_for(config: RunConfig, dataset: Dataset) -> tuple[nn.Sequential, Plan]:
    """Build the initial model and its partition plan."""
    model = zoo.build(config.model, dataset.input_shape, num_outputs_for(config, dataset.num_classes), seed=config.seed)
    plan = make_plan(
        model, model_name=config.model, input_shape=dataset.input_shape, trainers=config.trainers,
        capacities=config.capacities, topology=config.topology,
    )
    plan.extra["num_classes"] = dataset.num_classes
    plan.extra["num_outputs"] = num_outputs_for(config, dataset.num_classes)
    return model, plan


class Session:
    """All parties of one run, connected by an in-process network."""

    def __init__(self, config: RunConfig, dataset: Dataset, run_dir: Path | None, *, privacy: Any = None):
        self.config, self.dataset, self.run_dir = config, dataset, run_dir
        self.device = resolve_device(config.device)
        self.model, self.plan = plan_for(config, dataset)
        self.model.to(self.device)
        self.modules = split_model(self.model, self.plan)
        k = config.trainers
        names = [f"T{i + 1}" for i in range(k)]
        open_tail = config.topology == "open-tail"
        hash_tx = bool(config.provenance)

        def adam(m: nn.Module) -> torch.optim.Optimizer:
            return torch.optim.Adam(m.parameters(), lr=config.lr)

        self.trainers: list[Trainer] = []
        for i, name in enumerate(names):
            left = "DO" if i == 0 else names[i - 1]
            right = "DO" if i == k - 1 else names[i + 1]
            prev = self.plan.head if i == 0 else self.plan.segments[i - 1]
            mod = self.modules[name]
            self.trainers.append(
                Trainer(
                    name, mod, adam(mod), left=left, right=right, holds_tail=open_tail and i == k - 1,
                    input_shape=tuple(prev.output_shape), hash_transcripts=hash_tx,
                )
            )
        head = self.modules["DO:head"]
        tail = self.modules.get("DO:tail")
        do_params = list(head.parameters()) + (list(tail.parameters()) if tail is not None else [])
        p = privacy or {}
        self.do = DataOwner(
            head=head, tail=tail, optimizer=torch.optim.Adam(do_params, lr=config.lr),
            x_train=dataset.x_train, y_train=dataset.y_train, trainers=names,
            micro_batches=config.micro_batches, protector=p.get("protector"),
            grad_protector=p.get("grad_protector"), label_encoder=p.get("label_encoder"),
            label_noiser=p.get("label_noiser"),
            expected_return_shape=None if open_tail else tuple(self.plan.segments[-1].output_shape),
            hash_transcripts=hash_tx, device=self.device, head_dpsgd=head_dpsgd_for(head, p),
        )
        self.label_encoder = p.get("label_encoder")
        self.net = InProcessNetwork([self.do, *self.trainers])
        self.train_ids = dataset.train_ids(config.train_range)

    @property
    def parties(self) -> dict[str, Any]:
        """Parties by name."""
        return {"DO": self.do} | {t.name: t for t in self.trainers}

    # -- checkpoints -------------------------------------------------------------------------------------
    def save_checkpoint(self, r: int) -> None:
        """Weights + optimizer state of every party after round ``r``."""
        assert self.run_dir is not None
        d = self.run_dir / rundir.CHECKPOINTS / f"round_{r}"
        for party in self.parties.values():
            rundir.save_tensors(d / f"{party.name}.weights.safetensors", party.module.state_dict(), {"round": str(r)})
            t, meta = rundir.optimizer_tensors(party.optimizer)
            rundir.save_tensors(d / f"{party.name}.optim.safetensors", t, meta)

    def load_checkpoint(self, r: int) -> None:
        """Inverse of :meth:`save_checkpoint`."""
        assert self.run_dir is not None
        d = self.run_dir / rundir.CHECKPOINTS / f"round_{r}"
        for party in self.parties.values():
            rundir.load_state_into(party.module, d / f"{party.name}.weights.safetensors")
            t, meta = rundir.load_tensors(d / f"{party.name}.optim.safetensors")
            try:
                rundir.restore_optimizer(party.optimizer, t, meta)
            except (ValueError, KeyError, RuntimeError) as e:
                raise RunDirError(f"optimizer checkpoint of {party.name} in {d} is corrupt: {e}") from e

    def save_model_files(self, epoch: int) -> None:
        """Write each party's delivered weights to ``model/``."""
        assert self.run_dir is not None
        for p in self.plan.parties:
            rundir.save_tensors(
                self.run_dir / rundir.MODEL_DIR / model_file(p.party), self.modules[p.party].state_dict(),
                {"party": p.party, "position": str(p.position), "model": self.config.model, "epoch": str(epoch),
                 "layers": json.dumps(p.layers)},
            )

    # -- evaluation ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def test_accuracy(self, batch_size: int = 2048) -> float:
        """Local-path test accuracy of the current segments (as if delivered), on true labels."""
        x, y = self.dataset.x_test, self.dataset.y_test
        correct = 0
        for i in range(0, len(x), batch_size):
            p = self.model(x[i : i + batch_size].to(self.device)).softmax(1)
            if self.label_encoder is not None:
                p = self.label_encoder.decode_probs(p)
            correct += int((p.argmax(1).cpu() == y[i : i + batch_size]).sum())
        return correct / max(1, len(x))

    # -- one round -----------------------------------------------------------------------------------------
    def run_round(self, r: int, progress: Progress | None = None) -> dict[str, Any]:
        """Train one epoch (round ``r``, 0-based) over the in-process network; return its metrics."""
        order = epoch_order(self.train_ids, seed=self.config.seed, epoch=r)
        bs = self.config.batch_size
        assert bs is not None, "config must be resolved (RunConfig.resolved) before training"
        steps = (len(order) + bs - 1) // bs
        t0 = time.perf_counter()
        self.net.take_bytes()
        for s in range(steps):
            self.net.send_all(self.do.start_step(r, s, order[s * bs : (s + 1) * bs]))
            self.net.run_until_idle()
            if not self.do.step_done:
                raise RuntimeError(f"step {s} of round {r} did not complete; a party dropped a message")
            if progress is not None:
                progress(r + 1, s + 1, steps)
        secs = time.perf_counter() - t0
        stats = self.do.take_stats()
        nbytes = self.net.take_bytes()
        n = len(order)
        return {
            "epoch": r + 1,
            "loss": stats.loss_sum / max(1, stats.count),
            "train_acc": stats.correct / max(1, stats.count),
            "train_acc_labels": "true labels" if self.config.topology == "u-shape" else "labels as received by the tail",
            "test_acc": self.test_accuracy(),
            "seconds": secs,
            "samples_per_s": n / secs if secs > 0 else 0.0,
            "bytes_per_cut": nbytes,
            "bytes_per_sample_per_cut": {k: v / n for k, v in nbytes.items()},
        }


def _over_budget(reports: list[dict[str, Any]], max_epsilon: float) -> dict[str, Any] | None:
    """The first ε report above ``max_epsilon`` (``None`` when all fit)."""
    for rep in reports:
        eps = rep.get("epsilon")
        if eps is not None and float(eps) > max_epsilon:
            return rep
    return None


def _write_state(run_dir: Path, completed: int) -> None:
    rundir.write_json(run_dir / rundir.STATE, {"completed_rounds": completed})


def train(
    config: RunConfig | dict[str, Any] | None = None,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    progress: Progress | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    hooks: RoundHooks | None = None,
    max_epsilon: float | None = None,
) -> RunHandle:
    """Train a model cooperatively and return the loaded run (see module docstring).

    Give ``config`` and ``out`` for a new run, or ``resume=RUN`` to continue an interrupted one.

    ``max_epsilon`` (a limit of this invocation, not part of the run's config): before each epoch, the
    ε every DP report of ``privacy.json`` would have after it is computed; if one would exceed the limit,
    training stops cleanly *before* that epoch — the completed epochs are saved, the ledger stays open, and
    ``metrics.json`` gets a ``"stopped"`` record — and ``--resume`` with a larger limit continues it.
    """
    if max_epsilon is not None:
        if isinstance(max_epsilon, bool) or not isinstance(max_epsilon, int | float) or not math.isfinite(max_epsilon) \
                or max_epsilon <= 0:
            raise ConfigError(f"max_epsilon must be a finite number > 0, got {max_epsilon!r}")
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / rundir.CONFIG).is_file():
            raise RunDirError(f"{run_dir} is not a run directory (no config.json); nothing to resume")
        config = make_config(**rundir.read_json(run_dir / rundir.CONFIG))
        done = int(rundir.read_json(run_dir / rundir.STATE)["completed_rounds"]) if (run_dir / rundir.STATE).is_file() else 0
        metrics = rundir.read_json(run_dir / rundir.METRICS) if (run_dir / rundir.METRICS).is_file() else {"epochs": []}
        metrics["epochs"] = [m for m in metrics["epochs"] if m["epoch"] <= done]
    else:
        if config is None or out is None:
            raise ConfigError("train() needs a config and out=RUN (or resume=RUN)")
        if isinstance(config, dict):
            config = make_config(**config)
        run_dir = Path(out)
        rundir.check_new_run_dir(run_dir)
        done = 0
        metrics = {"epochs": []}
    assert isinstance(config, RunConfig)
    dataset = load_dataset(config.dataset)
    config = config.resolved(len(dataset.train_ids(config.train_range)), dataset=dataset)  # also validates the range
    from clicooper.training.privacy_hooks import build_privacy

    if config.dp.head_dpsgd is not None and not config.protect_activations:
        raise ConfigError("dp.head_dpsgd composes DP-SGD on the head with the activation releases; it needs "
                          "--defense dp or clicooper")
    if max_epsilon is not None and not (config.protect_activations or config.labels.label_dp_epsilon):
        raise ConfigError(
            "--max-epsilon limits the run's DP guarantee, but this run releases nothing under one; use "
            "--defense dp or clicooper (or drop --max-epsilon)")
    if max_epsilon is not None and config.protect_activations and config.dp.sigma == 0:
        raise ConfigError("--max-epsilon with σ = 0: clipping alone has ε = ∞, so no epoch fits the budget; "
                          "give σ > 0 (--sigma, --noise-ratio or --target-epsilon)")
    run_dir.mkdir(parents=True, exist_ok=True)
    privacy = build_privacy(config, run_dir, dataset, new_run=resume is None)
    session = Session(config, dataset, run_dir, privacy=privacy)
    if privacy.get("notice"):
        import sys

        print(privacy["notice"], file=sys.stderr)
    if resume is None:
        rundir.write_json(run_dir / rundir.CONFIG, config.model_dump(mode="json"))
        rundir.write_json(run_dir / rundir.PLAN, asdict(session.plan))
        session.save_model_files(0)
    elif done > 0:
        session.load_checkpoint(done - 1)
    if hooks is None:
        from clicooper.training.provenance_hooks import default_hooks

        hooks = default_hooks(config, run_dir, session, new_run=resume is None)
    recorder = None
    if config.record_observations:
        rec_ids = session.train_ids if config.observe == "all" else subset_ids(session.train_ids, config.observe_count)

        def ids_of(epoch: int, step: int, micro: int) -> torch.Tensor:
            st = session.do.state
            assert st is not None and (st.epoch, st.step) == (epoch, step)
            return st.ids[micro]

        recorder = ObservationRecorder(
            run_dir / rundir.OBSERVATIONS, [t.name for t in session.trainers], rec_ids, ids_of, len(dataset.x_train)
        )
        session.net.taps.append(recorder)
        rundir.write_json(
            run_dir / rundir.OBSERVATIONS / "index.json",
            {"parties": [t.name for t in session.trainers], "topology": config.topology,
             "subset": "all" if config.observe == "all" else f"fixed-{len(rec_ids)}",
             "epochs": list(range(1, config.epochs + 1)), "format": "docs/INTERNAL_API.md#run-directory-run"},
        )
    stopped: dict[str, Any] | None = None
    metrics.pop("stopped", None)
    try:
        for r in range(done, config.epochs):
            if max_epsilon is not None and privacy.get("epsilon_after") is not None:
                over = _over_budget(privacy["epsilon_after"](r + 1)["reports"], max_epsilon)
                if over is not None:
                    stopped = {"reason": "max_epsilon", "before_epoch": r + 1, "completed_epochs": r,
                               "max_epsilon": max_epsilon, "epsilon_after_next_epoch": over["epsilon"],
                               "covers": over.get("covers"), "released": over.get("released")}
                    metrics["stopped"] = stopped
                    rundir.write_json(run_dir / rundir.METRICS, metrics)
                    _write_state(run_dir, r)
                    break
            if hooks is not None:
                hooks.on_round_start(r, session.parties)
            m = session.run_round(r, progress)
            if privacy.get("record_after") is not None:
                record = privacy["record_after"](r + 1)
                m["privacy"] = record.get("reports", record)
                rundir.write_json(run_dir / rundir.PRIVACY, record)
            if hooks is not None:
                hooks.on_round_end(r, session.parties, m)
            if recorder is not None:
                recorder.flush(r + 1, {t.name: t.module for t in session.trainers})
            session.save_checkpoint(r)
            session.save_model_files(r + 1)
            metrics["epochs"].append(m)
            metrics["final_test_acc"] = m["test_acc"]
            metrics["do_flop_share"] = session.plan.do_flop_share
            rundir.write_json(run_dir / rundir.METRICS, metrics)
            _write_state(run_dir, r + 1)
            if on_epoch is not None:
                on_epoch(m)
        if hooks is not None and stopped is None:
            hooks.on_run_end(session.parties)  # a budget stop leaves the ledger open: the run can resume
    except KeyboardInterrupt as e:
        done_now = int(rundir.read_json(run_dir / rundir.STATE)["completed_rounds"]) if (run_dir / rundir.STATE).is_file() else 0
        raise InterruptedRun(
            f"interrupted; {done_now} completed round(s) are saved in {run_dir}. "
            f"Continue with: clicooper train --resume {run_dir}"
        ) from e
    finally:
        if privacy.get("close") is not None:
            privacy["close"]()  # the noise-prefetch thread (privacy/prefetch.py)
    return load_run(run_dir)
