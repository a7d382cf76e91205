"""The run-directory files a genesis binds (docs/ledger-format.md §10), recomputed for ``verify``.

- ``config.json`` → ``config_hash``: SHA-256 of the RFC 8785 canonical JSON of the file's parsed value.
  The file is the resolved config's dump, so it is what every party hashed at the genesis; a model file's
  layers, when the run used one, are part of it (``model_spec``), so they are bound too. An edited file
  fails ``config-hash``.
- the model the config and ``plan.json`` describe → ``architecture_hash``: this implementation rebuilds the
  model from them with its own builders and hashes its structure (:func:`architecture_hash`, PyTorch's
  ``repr``). A verifier without clicooper treats ``architecture_hash`` as an opaque, signed value; so does
  this one when the files do not describe a model it can build (a note, not a failure).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clicooper import jsonbound, rundir
from clicooper.config import make_config
from clicooper.errors import CliCooperError
from clicooper.models.blueprint import blueprint_for
from clicooper.models.partition import Plan
from clicooper.provenance.canonical import canonical_json, sha256_hex
from clicooper.provenance.commitments import architecture_hash
from clicooper.provenance.verify import Binding

CONFIG_SOURCE = f"RUN/{rundir.CONFIG}"


def _read_json(path: Path) -> tuple[Any, str | None]:
    """(value, None), or (None, why it cannot be read as JSON)."""
    try:
        return jsonbound.load_file(path), None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, f"cannot be read as UTF-8 JSON ({e})"


def config_binding(run: Path, notes: list[str]) -> Binding | None:
    """The ``config-hash`` binding of ``RUN/config.json``; ``None`` (with a note) when the run has none."""
    path = Path(run) / rundir.CONFIG
    if not path.is_file():
        notes.append(f"no {CONFIG_SOURCE}: the genesis' config_hash was not checked against a config file")
        return None
    value, problem = _read_json(path)
    if problem is not None:
        return Binding("config-hash", "config_hash", CONFIG_SOURCE, problem=problem)
    try:
        return Binding("config-hash", "config_hash", CONFIG_SOURCE, value=sha256_hex(canonical_json(value)))
    except CliCooperError as e:
        return Binding("config-hash", "config_hash", CONFIG_SOURCE, problem=str(e))


def architecture_binding(run: Path, notes: list[str]) -> Binding | None:
    """The ``architecture-hash`` binding: the model rebuilt from config.json and plan.json, hashed; ``None``
    (with a note) when those files do not describe a model this build can rebuild."""
    cfg, problem = _read_json(Path(run) / rundir.CONFIG)
    plan_obj, plan_problem = _read_json(Path(run) / rundir.PLAN)
    why = problem or plan_problem
    if why is None:
        try:
            config = make_config(**cfg)
            plan = Plan.from_dict(plan_obj)
            bp = blueprint_for(config, plan.input_shape, int(plan.extra["num_classes"]), plan=plan)
            value = architecture_hash(bp.model)
        except (CliCooperError, KeyError, TypeError, ValueError) as e:
            why = f"{type(e).__name__}: {e}"
        else:
            return Binding("architecture-hash", "architecture_hash", "the model of RUN/config.json and "
                           "RUN/plan.json", value=value, depends_on="config-hash")
    notes.append(f"architecture_hash not recomputed (config.json and plan.json do not describe a model this "
                 f"build can rebuild: {why}); it stays an opaque value bound by the genesis signatures")
    return None


def run_bindings(run: Path, notes: list[str]) -> list[Binding]:
    """Every binding ``clicooper verify RUN`` checks (config first: the architecture is rebuilt from it)."""
    out = [config_binding(run, notes)]
    if out[0] is not None and out[0].problem is None:
        out.append(architecture_binding(run, notes))
    return [b for b in out if b is not None]
