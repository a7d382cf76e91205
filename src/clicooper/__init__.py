"""CliCooper: privacy-preserving, verifiable cooperative split learning.

A data owner has its model trained by K trainer clients that each hold one segment, with no central
server. See README.md, docs/ and docs/design/.

>>> import clicooper
>>> run = clicooper.train(model=my_sequential, data=(x, y), test_data=(x_test, y_test),  # doctest: +SKIP
...                       trainers=2, epochs=3, defenses=["dp"], out="runs/mine")
>>> run.test_acc, run.privacy, run.paths["model"]  # doctest: +SKIP

:func:`train` is :func:`clicooper.training.run.train` and :func:`load_run` is
:func:`clicooper.runs.load_run`, with their typed signatures; both are imported on first use, so that
importing ``clicooper`` (the CLI's start-up) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["load_run", "train", "__version__"]

if TYPE_CHECKING:
    from clicooper.runs import load_run
    from clicooper.training.run import train


def __getattr__(name: str) -> Any:
    """``clicooper.train`` / ``clicooper.load_run``: the library's own functions, imported on first use."""
    if name == "train":
        from clicooper.training.run import train

        return train
    if name == "load_run":
        from clicooper.runs import load_run

        return load_run
    raise AttributeError(f"module 'clicooper' has no attribute {name!r}")
