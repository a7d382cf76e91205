"""All parties of one run in one process, connected by the in-process network, over the session core.

:class:`Session` is the in-process :class:`~clicooper.core.run_loop.RoundDriver`: the run loop
(:class:`~clicooper.core.run_loop.RunLoop`) drives it as it drives a DO node.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from clicooper.attacks.active import BackdoorTrainer, backdoor_success
from clicooper.attacks.active.registry import ADVERSARIES
from clicooper.config import RunConfig
from clicooper.core import checkpoint
from clicooper.core.audit_log import AuditLog
from clicooper.core.builder import build_data_owner, build_trainer, party_names
from clicooper.core.rounds import round_metrics, run_round
from clicooper.core.run_loop import Progress
from clicooper.core.security import Validator, adversary_context, build_guard
from clicooper.data import Dataset
from clicooper.models.blocks import evaluating
from clicooper.models.blueprint import Blueprint, blueprint_for
from clicooper.privacy.activation import clip_per_sample
from clicooper.privacy.runtime import NO_PRIVACY, PrivacyMechanisms
from clicooper.protocol.inproc import InProcessNetwork
from clicooper.protocol.messages import Message


class InProcessDriver:
    """:class:`~clicooper.core.rounds.StepDriver` over the in-process network: run every party until idle."""

    def __init__(self, net: InProcessNetwork) -> None:
        self.net = net

    def run_step(self, messages: Iterable[Message], *, round: int, step: int) -> None:
        """Send the DO's messages and let every party handle what it receives until nothing is in flight."""
        self.net.send_all(messages)
        self.net.run_until_idle()

    def drain(self, *, round: int) -> None:
        """Nothing stays in flight in one process (:meth:`run_step` runs every party until idle)."""
        self.net.run_until_idle()

    def run_query(self, messages: Iterable[Message], *, round: int, step: int, answered: Callable[[], bool]) -> None:
        """Send the query and run every party until idle (the answer is then in)."""
        self.net.send_all(messages)
        self.net.run_until_idle()


class Session:
    """All parties of one run, connected by an in-process network."""

    def __init__(self, config: RunConfig, dataset: Dataset, run_dir: Path | None, *,
                 blueprint: Blueprint | None = None, privacy: PrivacyMechanisms = NO_PRIVACY) -> None:
        self.config, self.dataset, self.run_dir = config, dataset, run_dir
        self.blueprint = blueprint or blueprint_for(config, dataset.input_shape, dataset.num_classes)
        self.model, self.plan = self.blueprint.model, self.blueprint.plan
        self.modules = self.blueprint.modules()
        self.do = build_data_owner(config, self.plan, self.modules, dataset, privacy=privacy)  # each party's
        # modules go to its own device (config.device_of), so the model may span devices
        ctx = adversary_context(config, dataset, self._truth)  # lent only to config.adversary's trainer
        self.trainers = [build_trainer(config, self.plan, self.modules, n, context=ctx, adversaries=ADVERSARIES)
                         for n in party_names(config)[1:]]
        self.guard = build_guard(config, self.do, dataset.num_classes, run_dir)  # None unless detection is on
        self.validator = Validator(config, self.do, dataset) \
            if self.guard is not None and config.detection.validation.enabled else None
        self.audit_logs = {t.name: AuditLog(t, run_dir, config.audit) for t in self.trainers} \
            if config.audit.enabled and run_dir is not None else {}  # what each trainer keeps for audits
        self.label_encoder = privacy.label_encoder
        self.net = InProcessNetwork([self.do, *self.trainers])
        self.train_ids = dataset.train_ids(config.train_range)

    def _truth(self, epoch: int, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The evaluator's ground truth of a micro-batch in flight (attacks/active/base.py)."""
        st = self.do.state
        assert st is not None and (st.epoch, st.step) == (epoch, step)
        ids = st.ids[micro]
        return self.dataset.x_train[ids], self.dataset.y_train[ids]

    @property
    def parties(self) -> dict[str, Any]:
        """Parties by name."""
        return {"DO": self.do} | {t.name: t for t in self.trainers}

    def _dir(self) -> Path:
        if self.run_dir is None:
            raise RuntimeError("this session has no run directory")
        return self.run_dir

    def save_checkpoint(self, r: int) -> None:
        """Weights + optimizer state of every party after round ``r``."""
        checkpoint.save_checkpoint(self._dir(), r, self.parties.values())

    def load_checkpoint(self, r: int) -> None:
        """Inverse of :meth:`save_checkpoint`."""
        checkpoint.load_checkpoint(self._dir(), r, self.parties.values())

    def save_model_files(self, epoch: int) -> None:
        """Write each party's delivered weights to ``model/``."""
        checkpoint.save_model_files(self._dir(), self.config, self.plan, self.modules, epoch)

    def _local_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The whole model on ``x``, part by part on each party's device (the local inference path): the
        DO's clip at the cut as in training (``RunConfig.cut_clip_norm``), no noise."""
        clip = self.config.cut_clip_norm
        for p in self.plan.parties:
            mod = self.modules[p.party]
            x = mod(x.to(next(mod.parameters()).device))
            if p.party == "DO:head" and clip is not None:
                x = clip_per_sample(x, clip)
        return x

    @torch.no_grad()
    def test_accuracy(self, batch_size: int = 2048) -> float:
        """Local-path test accuracy of the current segments (as if delivered), on true labels; in eval mode
        (BatchNorm's running statistics, no dropout), training mode restored afterwards."""
        x, y = self.dataset.x_test, self.dataset.y_test
        correct = 0
        with evaluating(self.model):
            for i in range(0, len(x), batch_size):
                p = self._local_forward(x[i : i + batch_size]).float().softmax(1)
                if self.label_encoder is not None:
                    p = self.label_encoder.decode_probs(p)
                correct += int((p.argmax(1).cpu() == y[i : i + batch_size]).sum())
        return correct / max(1, len(x))

    def run_round(self, r: int, progress: Progress | None = None) -> dict[str, Any]:
        """Train one epoch (round ``r``, 0-based) over the in-process network; return its metrics."""
        self.net.take_bytes()
        on_step = None if progress is None else (lambda r_, s, n: progress(r_ + 1, s + 1, n))
        result = run_round(self.do, InProcessDriver(self.net), self.config, self.train_ids, r, on_step=on_step,
                           validator=self.validator)
        nbytes = self.net.take_bytes()
        return round_metrics(r, result, self.config, test_acc=self.test_accuracy(), bytes_per_cut=nbytes,
                             bytes_per_sample_per_cut={k: v / result.samples for k, v in nbytes.items()})

    # -- the run loop's RoundDriver (core/run_loop.py) ---------------------------------------------------
    def train_round(self, r: int, progress: Progress | None) -> dict[str, Any]:
        """Round ``r`` (:meth:`run_round`), then the backdoor's success where a backdoor trainer runs."""
        m = self.run_round(r, progress)
        self._backdoor_success(r)
        return m

    def save_round(self, r: int) -> None:
        """Every party's checkpoint after round ``r`` and the model files of epoch ``r + 1``."""
        self.save_checkpoint(r)
        self.save_model_files(r + 1)

    def trainer_reports(self) -> dict[str, Any]:
        """``{"trainer": …}`` of the malicious trainer (``summary()``), if one runs here."""
        out: dict[str, Any] = {}
        for t in self.trainers:
            if hasattr(t, "summary"):
                out["trainer"] = t.summary()
        return out

    def flop_share(self) -> float:
        """The DO's share of the model's FLOPs."""
        return self.plan.do_flop_share

    def _backdoor_success(self, r: int) -> None:
        """The backdoor's success on the test split after round ``r`` (attacks/active/backdoor.py), evaluated on
        the current segments as if delivered; recorded in the trainer's report."""
        bd = next((t for t in self.trainers if isinstance(t, BackdoorTrainer) and t.trigger is not None), None)
        if bd is None or self.do.tail is None:
            return
        parts = [self.modules[p.party] for p in self.plan.parties][:-1]

        def to_cut(x: torch.Tensor) -> torch.Tensor:
            for m in parts:
                x = m(x.to(next(m.parameters()).device))
            return x

        res = backdoor_success(to_cut, self.do.answer_probs, bd.trigger, self.dataset.x_test,
                               self.dataset.y_test, bd.adversary.target_class)
        bd.report["success"].append({"round": r} | res)
