"""``clicooper attack RUN --attack removal|forgery``: the attacks on a run's provenance, by budget.

They read the delivered model and the ledger rather than trainer views (:mod:`clicooper.attacks.removal`,
:mod:`clicooper.attacks.forgery`), so they are not part of ``--attack all`` and need a run trained with
provenance on. Each writes ``RUN/attacks/<name>.json`` in the layout of the other attacks' files (settings,
results, headline, seconds), so ``clicooper attack``'s summary reads it alike.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clicooper.attacks.forgery import ForgeryAttack
from clicooper.attacks.removal import RemovalAttack
from clicooper.errors import AttackError
from clicooper.rundir import atomic_write_bytes

#: The provenance attacks, named one by one (never part of ``all``).
PROVENANCE_ATTACKS: tuple[str, ...] = ("removal", "forgery")

#: Config of each provenance attack per budget: ``smoke`` takes seconds (three removal attacks, two
#: unrelated models, no CLI copies of the forged ledgers); the others run everything (docs/attacks.md).
PROVENANCE_BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {"removal": {"epochs": 1, "attacks": ("none", "prune-global", "int8"), "prune_levels": (0.5,),
                          "unrelated": 2},
              "forgery": {"cli": False}},
    "demo": {"removal": {}, "forgery": {}},
    "sweep": {"removal": {}, "forgery": {}},
    "full": {"removal": {}, "forgery": {}},
}

_CLASSES = {"removal": RemovalAttack, "forgery": ForgeryAttack}


def run_provenance_attacks(run_dir: str | Path, names: list[str], *, budget: str = "demo", seed: int | None = None,
                           progress: Callable[[str], None] | None = None, write: bool = True
                           ) -> dict[str, dict[str, Any]]:
    """Run each of ``names`` (from :data:`PROVENANCE_ATTACKS`) on ``run_dir`` at ``budget``; ``seed`` is the
    removal attacker's. Returns ``{name: result}`` and writes ``RUN/attacks/<name>.json``."""
    run_dir = Path(run_dir)
    if budget not in PROVENANCE_BUDGETS:
        raise AttackError(f"unknown budget {budget!r}; choose one of {', '.join(sorted(PROVENANCE_BUDGETS))}")
    cfg = json.loads((run_dir / "config.json").read_text("utf-8")) if (run_dir / "config.json").is_file() else {}
    if not cfg.get("provenance", True):
        raise AttackError(f"{', '.join(names)} attack(s) a run's watermark and ledger, but {run_dir} was trained "
                          "with provenance off; train one without --no-provenance")
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        if name not in _CLASSES:
            raise AttackError(f"unknown provenance attack {name!r}; choose one of {', '.join(PROVENANCE_ATTACKS)}")
        config = dict(PROVENANCE_BUDGETS[budget][name])
        if seed is not None and name == "removal":
            config["seed"] = seed
        if progress is not None:
            progress(f"attack {name} ({budget} budget) …")
        t0 = time.time()
        attack = _CLASSES[name](**config)
        res = attack.run(run_dir).to_json()
        headline = {"owners" if name == "removal" else "verifier": res["levels"]}
        obj = {"attack": name, "run_dir": str(run_dir),
               "settings": {"knowledge": list(attack.knowledge), "parties": None, "epochs": None, "victims": None,
                            "known_k": None, "aux": None, "seed": config.get("seed"),
                            "config": attack.config.__dict__, "budget": budget},
               "results": [res], "headline": headline, "seconds": round(time.time() - t0, 2)}
        obj = json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
        if write:
            atomic_write_bytes(run_dir / "attacks" / f"{name}.json", json.dumps(obj, indent=2, sort_keys=True).encode())
        out[name] = obj
    return out
