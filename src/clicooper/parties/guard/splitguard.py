"""SplitGuard (Erdoğan, Küpçü, Çiçek, WPES 2022, "SplitGuard: Detecting and Mitigating Training-Hijacking
Attacks in Split Learning", §4 and the reference notebook github ege-erdogan/splitguard).

After ``N`` warm-up steps the DO makes a step a *fake batch* with probability ``p_fake``: a share of its rows
get a wrong label (``y + r mod C``, ``r`` uniform in 1 … C−1). It computes its head's gradient as usual but
does not apply it. Regular steps' gradients are split at random into two sets R1, R2. If the trainers learn
the DO's task, the gradients of fake batches point elsewhere than the regular ones, while R1 and R2 agree;
a hijacker (FSHA) or a trainer that ignores what comes back from the DO's tail returns gradients that do
not depend on the labels, so fakes look regular. The SG score of the reference code:

    x = ∠(F̄, R̄) · |‖F‖ − ‖R‖| / Δ − ∠(R̄1, R̄2) · |‖R1‖ − ‖R2‖| / Δ,   Δ = |‖F‖−‖R‖| + |‖R1‖−‖R2‖|,
    SG = sigmoid(mult · x) ** exp

(``F̄`` the mean fake gradient, ``R̄ = (R̄1 + R̄2)/2``, ``‖·‖`` mean norms; angles in radians). An honest
run scores near 1, a hijacked one near 0. The decision (ours; the paper leaves the policy to the client):
alarm when the **median** of the last ``window`` scores is below ``threshold`` once ``min_fakes`` fake
batches were scored. A median, not a mean: on small batches an honest run has single scores near 0 (the
score's second term wins whenever the fakes' mean norm happens to equal the regular one), and with the mean
of the last 5 two such outliers raised false alarms on digits (docs/malicious.md). Only running sums are
kept (the means need no list of gradients).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import statistics
import struct
from dataclasses import dataclass, field

import torch

from clicooper.config.security import SplitGuardConfig


@dataclass
class _Running:
    total: torch.Tensor | None = None
    norms: float = 0.0
    n: int = 0

    def add(self, g: torch.Tensor) -> None:
        self.total = g.clone() if self.total is None else self.total + g
        self.norms += float(g.norm())
        self.n += 1

    @property
    def mean(self) -> torch.Tensor:
        assert self.total is not None
        return self.total / self.n

    @property
    def mean_norm(self) -> float:
        return self.norms / self.n


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    c = float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-30))
    return math.acos(max(-1.0, min(1.0, c)))


def sg_score(f: _Running, r1: _Running, r2: _Running, *, mult: float, exp: float) -> float:
    """The SG score of the reference notebook (module docstring)."""
    cr = (r1.mean + r2.mean) / 2
    cr_mag = (r1.mean_norm + r2.mean_norm) / 2
    d_f, d_r = abs(f.mean_norm - cr_mag), abs(r1.mean_norm - r2.mean_norm)
    div = (d_f + d_r) or 1e-30
    x = _angle(f.mean, cr) * d_f / div - _angle(r1.mean, r2.mean) * d_r / div
    return (1.0 / (1.0 + math.exp(-mult * x))) ** exp


@dataclass
class SplitGuard:
    """Fake-batch choice, gradient bookkeeping and the decision (module docstring)."""

    config: SplitGuardConfig
    num_classes: int
    key: bytes
    fakes: _Running = field(default_factory=_Running)
    r1: _Running = field(default_factory=_Running)
    r2: _Running = field(default_factory=_Running)
    scores: list[float] = field(default_factory=list)
    steps_seen: int = 0

    def _draws(self, epoch: int, step: int, n: int) -> list[float]:
        """``n`` uniform numbers in [0, 1) keyed by the DO's secret and (epoch, step): trainers cannot
        predict which steps are fake; a resumed run draws the same ones."""
        out, block = [], 0
        while len(out) < n:
            d = hmac.new(self.key, struct.pack(">QQQ", epoch, step, block), hashlib.sha256).digest()
            out += [int.from_bytes(d[i : i + 4], "big") / 2**32 for i in range(0, 32, 4)]
            block += 1
        return out[:n]

    def is_fake(self, epoch: int, step: int) -> bool:
        """Whether step (epoch, step) is a fake batch (after the warm-up, with probability ``p_fake``)."""
        if self.steps_seen < self.config.warmup_steps:
            return False
        return self._draws(epoch, step, 1)[0] < self.config.p_fake

    def fake_labels(self, epoch: int, step: int, micro: int, y: torch.Tensor) -> torch.Tensor:
        """``y`` with its first ``fake_fraction`` rows relabelled ``y + r mod C`` (r in 1 … C−1)."""
        k = max(1, round(self.config.fake_fraction * len(y)))
        draws = self._draws(epoch, step * 1024 + micro + 1, k)
        shift = torch.tensor([1 + int(u * (self.num_classes - 1)) for u in draws], dtype=y.dtype)
        out = y.clone()
        out[:k] = (y[:k] + shift) % self.num_classes
        return out

    def record(self, epoch: int, step: int, fake: bool, grad: torch.Tensor) -> float | None:
        """Add the step's (flattened) head gradient; returns the new SG score after a fake batch."""
        self.steps_seen += 1
        if self.steps_seen <= self.config.warmup_steps:
            return None
        if not fake:
            (self.r1 if self._draws(epoch, step, 2)[1] < 0.5 else self.r2).add(grad)
            return None
        self.fakes.add(grad)
        if self.r1.n == 0 or self.r2.n == 0:
            return None
        s = sg_score(self.fakes, self.r1, self.r2, mult=self.config.mult, exp=self.config.exp)
        self.scores.append(s)
        return s

    def verdict(self) -> dict[str, object] | None:
        """Evidence of an alarm, or ``None``."""
        c = self.config
        if len(self.scores) < c.min_fakes:
            return None
        last = self.scores[-c.window:]
        median = statistics.median(last)
        if median >= c.threshold:
            return None
        return {"summary": f"median SG score of the last {len(last)} fake batches {median:.3f} < {c.threshold}",
                "sg_scores": [round(s, 4) for s in self.scores], "median": median, "threshold": c.threshold,
                "fake_batches": self.fakes.n, "regular_batches": self.r1.n + self.r2.n}
