"""Builds the DO's privacy mechanisms for a run from its config (filled in by the privacy integration)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clicooper.config import RunConfig
from clicooper.data import Dataset
from clicooper.errors import ConfigError


def build_privacy(config: RunConfig, run_dir: Path, dataset: Dataset, *, new_run: bool) -> dict[str, Any]:
    """Return ``{"protector", "grad_protector", "label_encoder", "label_noiser", "epsilon_after"}``."""
    if config.defense != "none":
        raise ConfigError(f"--defense {config.defense} is not available yet; use --defense none")
    return {}
