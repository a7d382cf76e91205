"""Watermark sizing and the ownership threshold (docs/design/mechanisms.md#capacity): how many bits, weights per bit and
retained rounds a segment can hold (:func:`plan_capacity`), and the largest number of wrong bits τ an
ownership claim may show so that an unrelated model passes with probability < 2**-64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from clicooper.errors import ConfigError
from clicooper.provenance.marks import Layout, MarkParams

#: An unrelated model may pass the ownership test with probability < 2**-64.
FALSE_CLAIM_BOUND = Fraction(1, 2**64)


def binomial_cdf_half(n: int, t: int) -> Fraction:
    """Exact ``P[Binom(n, 1/2) ≤ t]``."""
    if t < 0:
        return Fraction(0)
    return Fraction(sum(math.comb(n, i) for i in range(min(t, n) + 1)), 2**n)


def ownership_threshold(n_bits: int) -> tuple[int, float]:
    """τ = largest t with ``P[Binom(N, 1/2) ≤ t] < 2**-64`` and that probability; τ = -1 if none exists
    (N ≤ 64 bits can never be claimed). Example: N = 256 → (56, 1.8e-20)."""
    acc, tau, prob = 0, -1, 0.0
    bound = 2**n_bits  # compare acc / 2**N < 2**-64 exactly: acc * 2**64 < 2**N
    for i in range(n_bits + 1):
        acc += math.comb(n_bits, i)
        if acc * 2**64 >= bound:
            break
        tau, prob = i, acc / bound
    return tau, prob


@dataclass(frozen=True)
class CapacityPlan:
    """Per-segment watermark sizing, written in ``plan.json`` (docs/design/mechanisms.md#capacity)."""

    num_params: int
    enabled: bool
    n_bits: int
    subset_size: int
    retained_rounds: int
    lam: float
    max_extra_steps: int
    budget_bits: int
    tau_single: int
    tau_retained: int
    robust: bool
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON form for ``plan.json``."""
        return {
            "num_params": self.num_params, "enabled": self.enabled, "n_bits": self.n_bits,
            "subset_size": self.subset_size, "retained_rounds": self.retained_rounds, "lambda": self.lam,
            "max_extra_steps": self.max_extra_steps, "budget_bits": self.budget_bits,
            "tau_single": self.tau_single, "tau_retained": self.tau_retained, "robust": self.robust,
            "reason": self.reason, **self.extra,
        }

    def retained_for(self, round: int) -> list[int]:
        """Rounds whose marks are in the regularizer during ``round`` (a sliding window ending at it)."""
        if not self.enabled:
            return []
        return list(range(max(0, round - self.retained_rounds + 1), round + 1))

    def mark_params(self, layout: Layout, round: int, extra_steps: int = 0) -> MarkParams:
        """The :class:`MarkParams` of stage ``round`` under this plan."""
        if not self.enabled:
            raise ConfigError(f"no watermark for this segment: {self.reason}")
        if sum(n for _, n in layout) != self.num_params:
            raise ConfigError("the layout does not match the planned segment size")
        return MarkParams(self.n_bits, self.subset_size, self.lam, layout,
                          tuple(self.retained_for(round)), extra_steps)


def plan_capacity(num_params: int, *, planned_rounds: int, n_bits: int = 128, max_retained: int = 4,
                  weights_per_bit: int = 8, min_bits: int = 96, max_subset: int = 256, min_subset: int = 8,
                  lam: float = 0.1, max_extra_steps: int = 500, robust_min_params: int = 10_000
                  ) -> CapacityPlan:
    """Size the watermark of a segment with ``num_params`` weights (docs/design/mechanisms.md#capacity).

    Budget: all retained marks together ≤ ``num_params // weights_per_bit`` bits (|w|/8 by default).
    n = min(``n_bits``, budget); a segment whose budget is below ``min_bits`` (default 96: one mark alone
    then still has τ ≥ 6) gets no mark and says so in ``reason``. Retained rounds = how many of the
    latest rounds' marks stay in the regularizer: min(``max_retained``, ``planned_rounds``, budget // n).
    Subset size m = |w| // (n · retained), clipped to [``min_subset``, ``max_subset``], so each weight is
    read by about one bit. Robustness targets (pruning, fine-tuning) apply only when
    ``num_params ≥ robust_min_params``.
    """
    if num_params < 1 or planned_rounds < 1:
        raise ConfigError("num_params and planned_rounds must be ≥ 1")
    budget = num_params // weights_per_bit
    if budget < min_bits:
        return CapacityPlan(num_params, False, 0, 0, 0, lam, 0, budget, -1, -1, False,
                            reason=f"{num_params} weights hold {budget} bits < {min_bits}: too small for a "
                                   "mark with a meaningful threshold; no watermark")
    n = min(n_bits, budget)
    retained = max(1, min(max_retained, planned_rounds, budget // n))
    m = max(min_subset, min(max_subset, num_params // (n * retained)))
    reason = "" if n == n_bits else f"n reduced from {n_bits} to {n} to fit |w|/{weights_per_bit}"
    robust = num_params >= robust_min_params
    if not robust:
        reason = (reason + "; " if reason else "") + (
            f"below {robust_min_params} weights: the mark is verifiable but no robustness target applies")
    return CapacityPlan(num_params, True, n, m, retained, lam, max_extra_steps, budget,
                        ownership_threshold(n)[0], ownership_threshold(n * retained)[0], robust, reason)
