"""The protocol every defence of the DO implements, and what it is built from.

A defence is one object with a few hooks, each a no-op by default, that the data owner calls at fixed
points of a step (:class:`clicooper.parties.data_owner.DataOwner` loops over its defences in order):

* :meth:`Defense.setup_head` — once, before the head's optimizer exists (the secret random head);
* :meth:`Defense.on_labels` — the training targets (randomized response, label obfuscation);
* :meth:`Defense.on_release` — the head's output before it leaves the DO (keyed noise), training or query;
* :meth:`Defense.head_term` — a loss term of the DO's own on its head (NoPeek, the adversarial decoder);
* :meth:`Defense.on_gradient` — the gradient the DO sends back to the last trainer (gradient protection);
* :meth:`Defense.on_head_gradient` / :meth:`Defense.before_head_step` — the head's own gradient (DP-SGD);
* :meth:`Defense.decode_probs` — model outputs back to the true classes (label obfuscation);
* :meth:`Defense.state_dict` / :meth:`Defense.load_state_dict` — its state for a resumed run;
* :meth:`Defense.report` — ε with what it covers, or ``"empirical"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from clicooper.config import RunConfig
from clicooper.config.defenses import DefenseSpec
from clicooper.errors import PrivacyError
from clicooper.privacy._keyed import prf
from clicooper.privacy.runtime import PrivacyMechanisms


@dataclass(frozen=True)
class DefenseContext:
    """What a defence is built from at the DO: the run's config, its model's shapes, the DO's device and the
    run's secret-derived mechanisms (``privacy``: keyed noise, label codec, …, built once per run so that
    ``privacy.json`` accounts for exactly what the defences use)."""

    config: RunConfig
    head: nn.Module
    input_shape: tuple[int, ...]
    cut_shape: tuple[int, ...]
    num_classes: int
    device: torch.device
    privacy: PrivacyMechanisms

    def key(self, tag: str) -> bytes:
        """A 32-byte key for ``tag`` derived from the DO's noise secret (never from the public seed)."""
        secret = self.privacy.noise_secret
        if secret is None:
            raise PrivacyError("this defence needs the DO's secrets, which this run has not created; "
                               "add a keyed defence (e.g. keyed-noise) or build it with a run directory")
        return prf(secret, f"clicooper/defense/{tag}")


class Defense:
    """A defence of the DO (see the module doc): subclass, set ``spec`` to its spec class, override the hooks
    it needs. ``needs_inputs``: keep each micro-batch's input until its gradient returns (for
    :meth:`on_head_gradient`)."""

    spec: ClassVar[type[DefenseSpec]]
    needs_inputs: ClassVar[bool] = False

    def __init__(self, spec: DefenseSpec, context: DefenseContext) -> None:
        self.settings = spec

    @property
    def kind(self) -> str:
        """The spec's ``kind``."""
        return self.settings.kind

    def setup_head(self, head: nn.Module) -> None:
        """Once, before the DO's optimizer is built over the head's trainable parameters."""

    def on_labels(self, y: torch.Tensor, *, sample_ids: torch.Tensor, epoch: int) -> torch.Tensor:
        """The training targets for ``y`` (labels of the samples ``sample_ids``)."""
        return y

    def on_release(self, a: torch.Tensor, *, sample_ids: torch.Tensor, epoch: int, stream: str) -> torch.Tensor:
        """What leaves the DO for the head's output ``a`` (``stream``: ``act`` in training, ``query`` for a
        served query); differentiable in ``a``."""
        return a

    def head_term(self, *, x: torch.Tensor, head_out: torch.Tensor, release: torch.Tensor) -> torch.Tensor | None:
        """A loss term of the DO's own on its head for one micro-batch (None: none); it is weighted by the
        micro-batch's share of the step and back-propagated with T1's gradient."""
        return None

    def on_gradient(self, g: torch.Tensor, *, sample_ids: torch.Tensor, epoch: int) -> torch.Tensor:
        """The gradient the DO sends back to the last trainer (U-shape)."""
        return g

    def on_head_gradient(self, *, x: torch.Tensor | None, release: torch.Tensor, grad: torch.Tensor,
                         batch_size: int) -> bool:
        """Take over the head's backward for one micro-batch (T1's gradient ``grad`` of ``release``); True if
        it did (the DO then skips its plain backward)."""
        return False

    def before_head_step(self, *, epoch: int, step: int, batch_size: int) -> None:
        """Once per step, after the last micro-batch's gradient and before the DO's optimizer steps."""

    def decode_probs(self, p: torch.Tensor) -> torch.Tensor:
        """Model output probabilities back to the true classes."""
        return p

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Its state for a resumed run (tensors only; empty: stateless)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state_dict`."""
        if state:
            raise PrivacyError(f"defence {self.kind} keeps no state, but its checkpoint holds {sorted(state)}")

    def report(self, epochs: int) -> dict[str, Any]:
        """What this defence guarantees after ``epochs`` epochs: ε with what it covers, or ``empirical``."""
        return {"kind": self.kind, "guarantee": "empirical", "epsilon": None,
                "covers": "no formal bound; measure it with the attacks (clicooper report)"}

