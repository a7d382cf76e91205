"""A gradient-similarity test after Gradients Scrutinizer (Fu et al., "Focusing on Pinocchio's Nose: A
Gradients Scrutinizer to Thwart Split-Learning Hijacking Attacks Using Intrinsic Attributes", NDSS 2023,
§IV "intrinsic attributes" of honest gradients).

In honest training the per-sample gradients the DO's head receives are more alike within a label than
across labels: ``∂loss/∂z_i`` carries the term of y_i's class. A hijacker's adversarial gradient (FSHA's
``∂D(z)/∂z``), a lazy trainer's stale one or any gradient computed without the DO's labels lacks it. Every
``every``-th step the DO takes the first ``rows`` per-sample gradients of the step's first micro-batch,
L2-normalises them and computes the label gap

    gap = mean cos(g_i, g_j) over pairs with y_i = y_j  −  mean cos(g_i, g_j) over pairs with y_i ≠ y_j,

and raises an alarm when the mean gap of the last ``window`` tests is below ``threshold`` after
``warmup_steps``. The paper's test compares the similarity sets with a fitted honest profile; this is its
simplest statistic (one number per test, no profile), with a fixed threshold whose false alarms are
measured on honest runs (docs/malicious.md). Cost: rows² · d multiply-adds per test.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from clicooper.config.security import ScrutinizerConfig


def label_gap(g: torch.Tensor, y: torch.Tensor) -> float | None:
    """``gap`` of per-sample gradients ``g`` (n, …) with labels ``y`` (n,); ``None`` without both pair kinds."""
    u = torch.nn.functional.normalize(g.flatten(1).float(), dim=1)
    s = u @ u.T
    same = y[:, None] == y[None, :]
    off = ~torch.eye(len(y), dtype=torch.bool)
    intra, inter = s[same & off], s[~same]
    if intra.numel() == 0 or inter.numel() == 0:
        return None
    return float(intra.mean() - inter.mean())


@dataclass
class Scrutinizer:
    """Per-step label-gap tests and the decision (module docstring)."""

    config: ScrutinizerConfig
    gaps: list[float] = field(default_factory=list)
    steps_seen: int = 0

    def wants(self, step: int) -> bool:
        """Whether the step's gradients are tested."""
        return self.steps_seen >= self.config.warmup_steps and step % self.config.every == 0

    def test(self, g: torch.Tensor, y: torch.Tensor) -> float | None:
        """Test the first ``rows`` rows; returns the gap (or ``None`` when the rows hold one label)."""
        n = min(self.config.rows, len(y))
        gap = label_gap(g[:n], y[:n])
        if gap is not None:
            self.gaps.append(gap)
        return gap

    def end_step(self) -> None:
        """Count a step (the warm-up)."""
        self.steps_seen += 1

    def verdict(self) -> dict[str, object] | None:
        """Evidence of an alarm, or ``None``."""
        c = self.config
        if len(self.gaps) < c.window:
            return None
        last = self.gaps[-c.window:]
        mean = sum(last) / len(last)
        if mean >= c.threshold:
            return None
        return {"summary": f"mean label gap of the last {len(last)} tests {mean:.4f} < {c.threshold}",
                "gaps": [round(x, 5) for x in last], "mean": mean, "threshold": c.threshold, "tests": len(self.gaps)}
