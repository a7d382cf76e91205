"""Builds the DO's privacy mechanisms for a run from its config (see :mod:`clicooper.privacy.runtime`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clicooper.config import RunConfig
from clicooper.data import Dataset


def build_privacy(config: RunConfig, run_dir: Path, dataset: Dataset, *, new_run: bool) -> dict[str, Any]:
    """Return ``{"protector", "grad_protector", "label_encoder", "label_noiser", "epsilon_after", …}``."""
    from clicooper.privacy.runtime import mechanisms_for_run

    return mechanisms_for_run(config, run_dir, dataset.num_classes, new_run=new_run)
