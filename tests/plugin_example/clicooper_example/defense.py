"""``release-quantize``: the DO rounds what its head releases to a grid of ``step`` (straight-through, so the
head still trains). An empirical defence: it bounds nothing, and ``clicooper report`` measures it."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from clicooper.config.defenses import DefenseSpec
from clicooper.privacy.defenses.base import Defense, DefenseContext


class ReleaseQuantizeSpec(DefenseSpec):
    """Round every released value to a multiple of ``step``."""

    kind: Literal["release-quantize"] = "release-quantize"

    step: float = Field(..., gt=0.0, le=10.0, allow_inf_nan=False, description="grid step of the release")

    def problem(self, config) -> str | None:  # noqa: ANN001 - the RunConfig
        if config.defense_of("head-dpsgd") is not None:
            return "release-quantize changes the release DP-SGD's per-sample map assumes; drop one of them"
        return None


class ReleaseQuantize(Defense):
    """Straight-through rounding of the head's release (training and served queries alike)."""

    spec = ReleaseQuantizeSpec

    def __init__(self, spec: ReleaseQuantizeSpec, context: DefenseContext) -> None:
        super().__init__(spec, context)
        self.step = spec.step

    def on_release(self, a: torch.Tensor, *, sample_ids: torch.Tensor, epoch: int, stream: str) -> torch.Tensor:
        q = torch.round(a / self.step) * self.step
        return a + (q - a).detach()
