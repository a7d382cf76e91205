"""In-process training: every party in one process over the session core (:mod:`clicooper.core`).

- :mod:`.session` — :class:`Session`: the parties on the in-process network, one round's metrics;
- :mod:`.run` — :func:`train`, the Python API behind ``clicooper train`` (new runs, resume, ε budget);
- :mod:`.provenance_hooks` — the ledger and watermarks with every party's key at hand;
- :mod:`clicooper.core.observe` — what each trainer received, for attack evaluators;
- :mod:`.do_alone` — the DO's head + a linear layer (or, for a thick DO tail, the better of that and head +
  adapter + its own tail) trained alone (the trainers' gain).
- :mod:`.own_model` — ``train(config, model=…)``: the user's own ``nn.Sequential`` and its weights.
"""

from clicooper.core.run_loop import RoundHooks
from clicooper.training.run import train
from clicooper.training.session import Session

__all__ = ["RoundHooks", "Session", "train"]
