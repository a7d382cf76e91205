"""What each view holds: the dataclasses of the attacker's knowledge levels (docs/design/metrics.md#views).

:class:`PublicInfo` (task shape, the public architecture as fresh module factories, the public noise
distribution) is in every view; :class:`ZeroKnowledgeView`, :class:`KnownSampleView`,
:class:`AuxiliaryView` and :class:`WhiteBoxView` hold one knowledge level each; :class:`Views` bundles
the levels of one attack run with the evaluator's :class:`Truth`. Nothing here reads a file: building
views from a run directory is :mod:`clicooper.attacks.views.build`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from clicooper.errors import AttackError

Knowledge = Literal["zero", "known", "aux", "white-box", "query"]
KNOWLEDGE_LEVELS: tuple[str, ...] = ("zero", "known", "aux", "white-box", "query")
ModuleFactory = Callable[[], nn.Module]


@dataclass(frozen=True)
class NoiseSpec:
    """The *public* activation-protection distribution (docs/design/mechanisms.md#activation-protection): clip to ``clip``, add N(0, σ²·clip²).

    The attacker may simulate it; the secret noise values are not part of any view.
    """

    sigma: float
    clip: float

    def __post_init__(self) -> None:
        if not (self.sigma >= 0 and self.clip > 0):
            raise AttackError(f"noise needs sigma ≥ 0 and clip > 0, got sigma={self.sigma}, clip={self.clip}")

    def simulate(self, a: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Apply clip + fresh Gaussian noise with the attacker's own randomness."""
        flat = a.flatten(1)
        scale = (self.clip / flat.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
        out = flat * scale[:, None]
        if self.sigma > 0:
            out = out + torch.randn(out.shape, generator=generator) * (self.sigma * self.clip)
        return out.view_as(a)


@dataclass(frozen=True)
class Architecture:
    """Fresh (randomly initialised) modules of the public architecture: the model is public, its weights
    are not. ``segments[i]`` builds trainer T_{i+1}'s segment; ``tail`` is None in the open tail."""

    head: ModuleFactory
    segments: Sequence[ModuleFactory]
    tail: ModuleFactory | None


@dataclass(frozen=True)
class PublicInfo:
    """What every party knows: task shape, topology, architecture, protection distribution."""

    num_classes: int
    input_shape: tuple[int, ...]
    architecture: Architecture
    topology: str = "u-shape"
    noise: NoiseSpec | None = None


@dataclass(frozen=True)
class Received:
    """One epoch of what one trainer received, rows in the order received (no sample ids)."""

    party: str
    epoch: int
    activations: torch.Tensor  # (N, …) forward input
    gradients: torch.Tensor | None  # (N, …) d loss / d own output; None for the open tail's last trainer
    labels: torch.Tensor | None = None  # (N,) open tail only, as received (obfuscated)

    def __post_init__(self) -> None:
        n = self.activations.shape[0]
        if n == 0:
            raise AttackError(f"{self.party} epoch {self.epoch}: no recorded rows; record observations")
        if (self.gradients is not None and self.gradients.shape[0] != n) or (self.labels is not None and self.labels.shape[0] != n):
            raise AttackError(
                f"{self.party} epoch {self.epoch}: activations, gradients and labels have different row "
                "counts; the observation file is corrupt — re-record it"
            )


@dataclass(frozen=True)
class ZeroKnowledgeView:
    """Zero knowledge: a trainer's received observations and its own segment."""

    public: PublicInfo
    received: Received
    segment: nn.Module
    position: int  # 1..K

    @torch.no_grad()
    def own_output(self, batch: int = 512) -> torch.Tensor:
        """The trainer's own output on what it received (its segment applied to the activations)."""
        self.segment.eval()
        a = self.received.activations
        return torch.cat([self.segment(a[i : i + batch].float()) for i in range(0, a.shape[0], batch)])


@dataclass(frozen=True)
class KnownSampleView:
    """k labelled samples per class (their images and labels) and which received rows they are.

    Samples are stored per class in a random order, so :meth:`per_class` gives nested subsets.
    """

    rows: torch.Tensor  # (m,) int64 indices into the received rows
    x: torch.Tensor  # (m, …) the samples' inputs
    y: torch.Tensor  # (m,) true labels

    def __post_init__(self) -> None:
        if not (self.rows.shape[0] == self.x.shape[0] == self.y.shape[0]):
            raise AttackError("known samples: rows, x and y must have the same length")

    @property
    def k(self) -> int:
        """Samples per class held (the minimum over classes)."""
        return int(torch.bincount(self.y).min()) if self.y.numel() else 0

    def per_class(self, k: int) -> KnownSampleView:
        """The first ``k`` samples of each class."""
        if k > self.k:
            raise AttackError(f"asked for {k} known samples per class but the view holds {self.k}; "
                              "build the view with a larger known_k")
        keep = torch.cat([torch.nonzero(self.y == c).flatten()[:k] for c in torch.unique(self.y)])
        keep = keep.sort().values
        return KnownSampleView(rows=self.rows[keep], x=self.x[keep], y=self.y[keep])

    def within(self, n: int, k: int, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """For attacks on the first ``n`` received rows: the rows and labels of the first ``k`` known samples
        per class that lie among them, and the mask (n,) of the rows to score on (every known row left out).
        None when the view holds fewer than ``k`` per class or some class has no known row among the ``n``.
        """
        if k > self.k:
            return None
        kn = self.per_class(k)
        sel = kn.rows.numpy() < n
        rows, ky = kn.rows.numpy()[sel], kn.y.numpy()[sel]
        if len(np.unique(ky)) < num_classes:
            return None
        keep = np.ones(n, dtype=bool)
        keep[self.rows.numpy()[self.rows.numpy() < n]] = False
        return rows, ky, keep


@dataclass(frozen=True)
class AuxiliaryView:
    """Auxiliary data from a range disjoint from the DO's training data (``y`` None when unlabelled)."""

    x: torch.Tensor
    y: torch.Tensor | None
    source: str  # "train" or "test"
    range: tuple[int, int]


@dataclass(frozen=True)
class WhiteBoxView:
    """The DO's head, leaked."""

    head: nn.Module


@dataclass(frozen=True)
class Truth:
    """The evaluator's ground truth. Attacks pass it to metric functions only."""

    y: torch.Tensor  # (N,) true labels of the received rows
    x: torch.Tensor | None  # (N, …) true inputs of the received rows
    victims: torch.Tensor  # (V,) received rows to score reconstruction on (disjoint from known rows)
    x_test: torch.Tensor | None = None  # held-out evaluation data (extraction)
    y_test: torch.Tensor | None = None
    aux_y: torch.Tensor | None = None  # labels of the auxiliary data (for the class floor)


@dataclass(frozen=True)
class Views:
    """Everything one attack run may use, by knowledge level, plus the evaluator's truth.

    ``pooled`` holds every colluding trainer's zero-knowledge view (extraction); ``zero`` is the
    attacking party's own.
    """

    zero: ZeroKnowledgeView
    truth: Truth
    known: KnownSampleView | None = None
    aux: AuxiliaryView | None = None
    white_box: WhiteBoxView | None = None
    pooled: tuple[ZeroKnowledgeView, ...] = ()
    predict: Callable[[torch.Tensor], torch.Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def without(self, *levels: str) -> Views:
        """A copy with the given knowledge levels removed."""
        drop = {"known": "known", "aux": "aux", "white-box": "white_box", "query": "predict"}
        return replace(self, **{drop[lv]: None for lv in levels})
