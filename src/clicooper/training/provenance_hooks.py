"""Provenance round hooks (ledger + watermark); filled in by the provenance integration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clicooper.config import RunConfig


def default_hooks(config: RunConfig, run_dir: Path, session: Any, *, new_run: bool) -> Any:
    """The run's round hooks, or ``None`` when provenance is off."""
    return None
