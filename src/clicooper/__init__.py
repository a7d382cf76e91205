"""CliCooper: privacy-preserving, verifiable cooperative split learning.

A data owner has its model trained by K trainer clients that each hold one segment, with no central
server. See README.md and docs/design/.

>>> import clicooper
>>> run = clicooper.train({"dataset": "digits", "model": "digits-mlp", "trainers": 2}, out="runs/d")  # doctest: +SKIP
>>> run.predict(run.dataset().x_test[:5]).argmax(1)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["load_run", "train", "__version__"]

if TYPE_CHECKING:
    from clicooper.runs import RunHandle


def load_run(path: Any) -> RunHandle:
    """Load a run directory (see :func:`clicooper.runs.load_run`)."""
    from clicooper.runs import load_run as _load  # lazy, as train

    return _load(path)


def train(config: Any = None, **kwargs: Any) -> RunHandle:
    """Train cooperatively and return the run (see :func:`clicooper.training.run.train`)."""
    from clicooper.training import train as _train  # lazy: importing any clicooper module runs this file

    return _train(config, **kwargs)
