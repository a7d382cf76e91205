"""Interrupt a training after its first epoch, then resume it: the weights a resumed run ends with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from clicooper.errors import InterruptedRun
from clicooper.training import train


def interrupted_then_resumed(config: dict[str, Any], out: Path) -> Any:
    """Train ``config`` into ``out``, stopped by a KeyboardInterrupt after epoch 1, then ``--resume`` it."""

    def stop_after_first(m: dict[str, Any]) -> None:
        if m["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(InterruptedRun):
        train(config, out=out, on_epoch=stop_after_first)
    return train(resume=out)
