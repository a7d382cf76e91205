"""The ε budget of one invocation (``--max-epsilon``): stop cleanly *before* an epoch that would exceed it."""

from __future__ import annotations

import math
from typing import Any

from clicooper.config import RunConfig
from clicooper.errors import ConfigError
from clicooper.privacy.runtime import PrivacyMechanisms


def check_max_epsilon(max_epsilon: float | None, config: RunConfig) -> None:
    """Refuse a budget that is malformed or that this run's releases cannot meet."""
    if max_epsilon is None:
        return
    if isinstance(max_epsilon, bool) or not isinstance(max_epsilon, int | float) or not math.isfinite(max_epsilon) \
            or max_epsilon <= 0:
        raise ConfigError(f"max_epsilon must be a finite number > 0, got {max_epsilon!r}")
    if not (config.protect_activations or config.labels.label_dp_epsilon):
        raise ConfigError(
            "--max-epsilon limits the run's DP guarantee, but this run releases nothing under one; use "
            "--defense dp or clicooper (or drop --max-epsilon)")
    if config.protect_activations and config.dp.sigma == 0:
        raise ConfigError("--max-epsilon with σ = 0: clipping alone has ε = ∞, so no epoch fits the budget; "
                          "give σ > 0 (--sigma, --target-epsilon or --set dp.noise_ratio=ρ)")


def budget_stop(privacy: PrivacyMechanisms, max_epsilon: float | None, r: int) -> dict[str, Any] | None:
    """The ``metrics["stopped"]`` record if round ``r`` (0-based) would take an ε report above the budget."""
    if max_epsilon is None or not privacy.under_dp:
        return None
    for rep in privacy.epsilon_after(r + 1):
        eps = rep.get("epsilon")
        if eps is not None and float(eps) > max_epsilon:
            return {"reason": "max_epsilon", "before_epoch": r + 1, "completed_epochs": r,
                    "max_epsilon": max_epsilon, "epsilon_after_next_epoch": eps,
                    "covers": rep.get("covers"), "released": rep.get("released")}
    return None
