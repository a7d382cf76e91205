"""Round checkpoints, delivered model files and ``state.json`` of one party or of every party.

After round ``r`` each party writes ``RUN/checkpoints/round_<r>/<party>.weights.safetensors`` and
``<party>.optim.safetensors`` and its entries of ``RUN/model/``; ``state.json`` counts the completed rounds
(and, for a node, whether its run is finished).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from clicooper import rundir
from clicooper.config import RunConfig
from clicooper.errors import RunDirError
from clicooper.models.partition import Plan


def round_dir(run_dir: Path, r: int) -> Path:
    """``RUN/checkpoints/round_<r>``."""
    return Path(run_dir) / rundir.CHECKPOINTS / f"round_{r}"


def save_checkpoint(run_dir: Path, r: int, parties: Iterable[Any]) -> None:
    """Weights + optimizer state of each party after round ``r``."""
    d = round_dir(run_dir, r)
    for party in parties:
        rundir.save_tensors(d / f"{party.name}.weights.safetensors", party.module.state_dict(), {"round": str(r)})
        t, meta = rundir.optimizer_tensors(party.optimizer)
        rundir.save_tensors(d / f"{party.name}.optim.safetensors", t, meta)
        state = party.defense_state() if hasattr(party, "defense_state") else {}
        if state:  # the DO's defences that keep state of their own (e.g. the adversarial decoder)
            rundir.save_tensors(d / f"{party.name}.defenses.safetensors", state, {"round": str(r)})


def load_checkpoint(run_dir: Path, r: int, parties: Iterable[Any]) -> None:
    """Inverse of :func:`save_checkpoint`."""
    d = round_dir(run_dir, r)
    for party in parties:
        rundir.load_state_into(party.module, d / f"{party.name}.weights.safetensors")
        t, meta = rundir.load_tensors(d / f"{party.name}.optim.safetensors")
        try:
            rundir.restore_optimizer(party.optimizer, t, meta)
        except (ValueError, KeyError, RuntimeError) as e:
            raise RunDirError(f"optimizer checkpoint of {party.name} in {d} is corrupt: {e}") from e
        f = d / f"{party.name}.defenses.safetensors"
        if hasattr(party, "load_defense_state"):
            state = rundir.load_tensors(f)[0] if f.is_file() else {}
            try:
                party.load_defense_state(state)
            except (ValueError, KeyError, RuntimeError) as e:
                raise RunDirError(f"the defences' checkpoint of {party.name} in {d} does not fit this run: {e}") from e


def model_file_metadata(config: RunConfig, plan: Plan, entry: str, epoch: int) -> dict[str, str]:
    """Metadata of plan entry ``entry``'s model file."""
    pp = plan.party(entry)
    return {"party": entry, "position": str(pp.position), "model": config.model, "epoch": str(epoch),
            "layers": json.dumps(pp.layers)}


def save_model_files(
    run_dir: Path, config: RunConfig, plan: Plan, modules: dict[str, nn.Module], epoch: int,
    entries: Iterable[str] | None = None,
) -> None:
    """The delivered weights of plan ``entries`` (default: every entry) in ``RUN/model/``."""
    for entry in entries if entries is not None else [p.party for p in plan.parties]:
        rundir.save_tensors(Path(run_dir) / rundir.MODEL_DIR / rundir.model_file(entry), modules[entry].state_dict(),
                            model_file_metadata(config, plan, entry, epoch))


def completed_rounds(run_dir: Path) -> int:
    """Rounds checkpointed in ``run_dir`` (``state.json``), 0 for a fresh run directory."""
    f = Path(run_dir) / rundir.STATE
    return int(rundir.read_json(f)["completed_rounds"]) if f.is_file() else 0


def resumable_rounds(run_dir: Path) -> int:
    """The completed rounds an in-process ``--resume`` continues after, refusing what it cannot continue
    exactly: a run made by ``clicooper launch`` (its checkpoints live in its nodes), and a missing
    ``state.json`` beside round checkpoints (the count is lost; starting over would silently redo them)."""
    run_dir = Path(run_dir)
    state = run_dir / rundir.STATE
    if (run_dir / "nodes").is_dir():
        if run_finished(run_dir / "nodes" / "DO") or (state.is_file() and (run_dir / rundir.MODEL_DIR).is_dir()):
            raise RunDirError(f"{run_dir} is a finished `clicooper launch` run: nothing to resume; use it with "
                              f"`clicooper evaluate {run_dir}` (or train longer in a new run)")
        raise RunDirError(f"{run_dir} was started by `clicooper launch`, whose checkpoints are its nodes' own; "
                          "`clicooper train --resume` cannot continue it: run the launch again with a new --out")
    rounds = sorted(int(d.name.removeprefix("round_")) for d in (run_dir / rundir.CHECKPOINTS).glob("round_*")
                    if d.name.removeprefix("round_").isdigit())
    if not state.is_file() and rounds:
        raise RunDirError(
            f"{state} is missing, so the completed rounds are unknown, but {run_dir / rundir.CHECKPOINTS} holds "
            f"round(s) up to {rounds[-1]}; restore state.json from a backup, or write "
            f'{{"completed_rounds": {rounds[-1] + 1}}} into it if that round\'s checkpoint is complete '
            "(resume then continues after it)")
    return completed_rounds(run_dir)


def write_state(run_dir: Path, completed: int, *, finished: bool = False) -> None:
    """``state.json``: ``{"completed_rounds": n}`` (+ ``"finished": true`` once a node's run is over)."""
    rundir.write_json(Path(run_dir) / rundir.STATE,
                      {"completed_rounds": completed} | ({"finished": True} if finished else {}))


def run_finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` is marked finished (a node: segments delivered, ``shutdown`` done)."""
    f = Path(run_dir) / rundir.STATE
    return f.is_file() and bool(rundir.read_json(f).get("finished", False))
