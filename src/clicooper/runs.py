"""Reading a finished (or interrupted) run: :func:`load_run` → :class:`RunHandle`.

Everything is rebuilt from the run directory's own files (config, plan, safetensors weights); nothing is
unpickled and no code is run from them. What a run cannot rebuild from a description, the user hands back:
the module of a run of their own module classes (``model=``), the data they gave in Python (``data=``,
checked against the run's fingerprint). ``predict`` is the *local* inference path: the DO holds every segment after delivery, so no noise
is needed (docs/design/mechanisms.md#activation-protection).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clicooper import rundir
from clicooper.config import RunConfig, make_config
from clicooper.data import Dataset
from clicooper.data.given import GivenData, open_dataset
from clicooper.data.raw import as_inputs, read_inputs
from clicooper.data.tabular import csv_encoding
from clicooper.errors import RunDirError
from clicooper.models.blocks import evaluating
from clicooper.models.blueprint import blueprint_for
from clicooper.models.describe import as_sequential
from clicooper.models.partition import Plan
from clicooper.privacy.activation import clip_per_sample
from clicooper.privacy.runtime import label_codec_for_run
from clicooper.provenance.commitments import stamp_architecture
from clicooper.rundir import model_file


@dataclass
class RunHandle:
    """A run loaded from disk (see module docstring)."""

    path: Path
    config: RunConfig
    plan: Plan
    model: nn.Sequential
    modules: dict[str, nn.Sequential]
    _dataset: Dataset | None = field(default=None, repr=False)
    _decoder: object | None = field(default=None, repr=False)
    _data: tuple[GivenData | None, Any] = field(default=(None, None), repr=False)  # load_run(data=, test_data=)

    # the run directory's records ------------------------------------------------------------------
    @property
    def metrics(self) -> dict[str, Any]:
        """``metrics.json``: one entry per completed epoch (loss, accuracies, speed, privacy), the final test
        accuracy and, after a budget or detection stop, ``"stopped"``; ``{}`` before the first epoch."""
        f = self.path / rundir.METRICS
        return rundir.read_json(f) if f.is_file() else {}

    @property
    def test_acc(self) -> float | None:
        """Test accuracy after the last completed epoch (``None`` before the first)."""
        return self.metrics.get("final_test_acc")

    @property
    def privacy(self) -> dict[str, Any] | None:
        """``privacy.json``: each mechanism's report (ε with what it covers, or "empirical"); ``None`` for a
        run without privacy mechanisms."""
        f = self.path / rundir.PRIVACY
        return rundir.read_json(f) if f.is_file() else None

    @property
    def paths(self) -> dict[str, Path]:
        """The run's files and folders that exist, by name: ``config``, ``plan``, ``metrics``, ``privacy``,
        ``model`` (the delivered segments), ``ledger``, ``observations``, ``initial_model``."""
        names = {"config": rundir.CONFIG, "plan": rundir.PLAN, "metrics": rundir.METRICS, "privacy": rundir.PRIVACY,
                 "model": rundir.MODEL_DIR, "ledger": rundir.LEDGER, "observations": rundir.OBSERVATIONS,
                 "initial_model": rundir.INITIAL_MODEL}
        return {k: self.path / v for k, v in names.items() if (self.path / v).exists()}

    @property
    def head(self) -> nn.Sequential:
        """The DO's head."""
        return self.modules["DO:head"]

    @property
    def segments(self) -> list[nn.Sequential]:
        """Trainer segments T1..TK."""
        return [self.modules[p.party] for p in self.plan.segments]

    @property
    def tail(self) -> nn.Sequential | None:
        """The DO's tail, or ``None`` in the open tail."""
        return self.modules.get("DO:tail")

    def full_model(self) -> nn.Sequential:
        """The whole model as one ``nn.Sequential`` (raw outputs: the obfuscated label space if labels are
        obfuscated). Under activation protection it lacks the DO's clip at the cut: use :meth:`forward`."""
        return self.model

    def dataset(self) -> Dataset:
        """The run's dataset (loaded on first use; data given in Python comes from ``load_run(data=…)``)."""
        if self._dataset is None:
            self._dataset = open_dataset(self.config.dataset, self.config.data, *self._data,
                                         fingerprint_of_run=self.plan.extra.get("data_fingerprint"))
        return self._dataset

    def evaluate(self) -> float:
        """Accuracy on the run's test split by the local path (:meth:`accuracy`), as ``clicooper evaluate``."""
        ds = self.dataset()
        return self.accuracy(ds.x_test, ds.y_test)

    def _label_decoder(self):  # noqa: ANN202 - privacy.labels.LabelCodec
        if not self.config.obfuscate_labels:
            return None
        if self._decoder is None:
            self._decoder = label_codec_for_run(self.path, self.config, self.plan_num_classes)
        return self._decoder

    @property
    def plan_num_classes(self) -> int:
        """Number of true classes."""
        return int(self.plan.extra.get("num_classes", 0)) or self.dataset().num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's raw outputs on ``x`` by the local path: head, the DO's clip at the cut as in training
        (``RunConfig.cut_clip_norm``; no noise), the segments, the tail. The caller sets the mode."""
        h = self.head(x)
        clip = self.config.cut_clip_norm
        if clip is not None:
            h = clip_per_sample(h, clip)
        for seg in self.segments:
            h = seg(h)
        return self.tail(h) if self.tail is not None else h

    def csv_encoding(self) -> dict[str, Any] | None:
        """How raw CSV rows become this run's features (``RUN/preprocessing.json``; a ``csv:`` run from before
        that file existed refits it from its data file), or ``None`` for other data."""
        if not self.config.dataset.startswith("csv:"):
            return None
        f = self.path / rundir.PREPROCESSING
        if f.is_file():
            return rundir.read_json(f)
        return csv_encoding(self.config.dataset.removeprefix("csv:"), self.config.data)

    def read_inputs(self, path: str | Path, *, key: str | None = None) -> tuple[torch.Tensor, list[str]]:
        """Inputs from a file or folder as this run's data is preprocessed (:func:`clicooper.data.raw.read_inputs`:
        ``.npy``, ``.npz`` (``key``: which array), raw ``.csv`` rows, a folder of images), and a name per row."""
        return read_inputs(path, dataset=self.config.dataset, options=self.config.data,
                           input_shape=tuple(self.plan.input_shape), encoding=self.csv_encoding(), key=key)

    @torch.no_grad()
    def predict(self, x: torch.Tensor | np.ndarray | str | Path, *, batch_size: int = 1024,
                key: str | None = None) -> torch.Tensor:
        """Probabilities over the true classes; local path, no noise; in eval mode (BatchNorm's running
        statistics, no dropout), the model's mode restored afterwards. ``x``: preprocessed inputs (a tensor or
        numpy array, ``(N, *input_shape)`` or one sample), or a path :meth:`read_inputs` reads (raw CSV
        rows, a folder of images, ``.npy`` / ``.npz``)."""
        if isinstance(x, str | Path):
            x, _ = self.read_inputs(x, key=key)
        else:
            x = as_inputs(x, tuple(self.plan.input_shape))
        dec = self._label_decoder()
        outs = []
        with evaluating(self.model):
            for i in range(0, len(x), batch_size):
                p = self.forward(x[i : i + batch_size]).softmax(1)
                outs.append(dec.decode_probs(p) if dec is not None else p)
        return torch.cat(outs) if outs else torch.zeros((0, self.plan_num_classes))

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Accuracy of :meth:`predict` on (x, y)."""
        return int((self.predict(x).argmax(1) == y).sum()) / max(1, len(y))

    def observations(self, party: str, epoch: int) -> dict[str, torch.Tensor]:
        """What trainer ``party`` received in ``epoch`` (1-based), from ``observations/``; activations and
        gradients as float32 whatever ``observe_dtype`` stored them as."""
        t, _ = rundir.load_tensors(self.path / rundir.OBSERVATIONS / party / f"epoch_{epoch}.safetensors")
        return {k: v.float() if v.is_floating_point() else v for k, v in t.items()}


def build_skeleton(config: RunConfig, plan: Plan, num_classes: int, module: nn.Sequential | None = None
                   ) -> tuple[nn.Sequential, dict[str, nn.Sequential]]:
    """Model and per-party modules with the run's architecture (seeded weights, or a copy of the user's own
    ``module``, to be overwritten); the architecture hash that ``plan.json`` records is checked."""
    bp = blueprint_for(config, plan.input_shape, num_classes, plan=plan, module=module)
    stamp_architecture(plan.extra, bp.model)
    return bp.model, bp.modules()


def load_run(path: str | Path, *, model: nn.Module | Sequence[nn.Module] | None = None,
             data: GivenData | None = None, test_data: Any = None) -> RunHandle:
    """Load a run directory written by ``clicooper train``; errors say which file is wrong.

    ``model``: the same module a run of the user's own module classes was trained with (its architecture
    is checked against ``plan.json``; the run's weights are loaded into a copy). ``data`` / ``test_data``:
    the data given in Python to ``train`` (or the ``python:`` name), for :meth:`RunHandle.dataset`."""
    p = Path(path)
    if not p.is_dir():
        raise RunDirError(f"run directory {p} not found; train one with `clicooper train … --out {p}`")
    config = make_config(**rundir.read_json(p / rundir.CONFIG))
    try:
        plan = Plan.from_dict(rundir.read_json(p / rundir.PLAN))
    except TypeError as e:
        raise RunDirError(f"{p / rundir.PLAN} is malformed ({e}); re-run `clicooper plan`") from e
    num_classes = int(plan.extra.get("num_classes", 10))
    module = as_sequential(model) if model is not None else None
    built, modules = build_skeleton(config, plan, num_classes, module)
    for party, mod in modules.items():
        rundir.load_state_into(mod, p / rundir.MODEL_DIR / model_file(party))
    return RunHandle(p, config, plan, built, modules, _data=(data, test_data))
