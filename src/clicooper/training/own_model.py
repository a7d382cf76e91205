"""``clicooper.train(model=…)``: train the user's own ``nn.Sequential`` (or a model file), from its weights.

A module of allowlisted layers is described as a spec (:func:`clicooper.models.describe.describe`) that
becomes the run's ``model_spec``, so ``config.json`` alone rebuilds the architecture (``load_run``,
``evaluate``, attacks, nodes); the rebuilt model must print like the given one. A module holding the
user's own classes (their ``BasicBlock``) trains in-process as it is (``model`` = ``own-module:BasicBlock``, see
:mod:`clicooper.models.describe`): reopening the run takes the same module again (``model=``), checked
against the architecture hash in ``plan.json``. A ``str`` / :class:`~pathlib.Path` ending in ``.toml`` or
``.json`` is a model file (``--model-file``); another string names a built-in model. Its weights are the run's initial weights: they are saved
as ``RUN/initial_model.safetensors`` (keys of the full ``nn.Sequential``), their hash is recorded in
``plan.json`` (``extra.initial_weights``), and ``train(resume=RUN)`` starts from them again. The round-0
model files (``model/*.safetensors`` at epoch 0) hold them too. ``export`` gives a state dict that loads
into the same ``nn.Sequential``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clicooper import rundir
from clicooper.config import RunConfig, make_config
from clicooper.errors import ConfigError, RunDirError
from clicooper.models import zoo
from clicooper.models.describe import (
    as_sequential,
    check_rebuilt,
    describe,
    is_own_module,
    own_classes,
    own_module_name,
)
from clicooper.models.partition import Plan
from clicooper.models.spec import load_model_file
from clicooper.provenance.commitments import architecture_hash, segment_commitment

Model = nn.Module | Sequence[nn.Module]
#: what ``train(model=…)`` takes: a module (or a list of layers), a model file, or a built-in model's name
ModelArg = Model | str | Path
CUSTOM = "custom"


def model_fields(model: str | Path) -> dict[str, Any]:
    """The config fields ``model=`` names: a model file's (``model``, ``model_spec``), or a built-in name."""
    if isinstance(model, Path) or str(model).endswith((".toml", ".json")):
        mf = load_model_file(Path(model))
        return {"model": mf.name, "model_spec": mf.layers}
    return {"model": str(model), "model_spec": None}


def adopt(config: RunConfig, model: Model) -> tuple[RunConfig, dict[str, torch.Tensor], nn.Sequential | None]:
    """(``config`` naming ``model``, ``model``'s initial weights, the module when it is the user's own
    classes). A describable module gets ``model_spec`` (and ``model`` naming it: the config's own name unless
    that is a built-in's, else ``custom``); one with the user's own classes gets ``model`` ``own-module:CLASS,…``."""
    if config.model_spec is not None:
        raise ConfigError("give model= or the config's model_spec, not both")
    seq = as_sequential(model)
    state = {k: v.detach().to("cpu").clone() for k, v in seq.state_dict().items()}
    own = own_classes(seq)
    if own:
        return make_config(**(config.model_dump() | {"model": own_module_name(own), "model_spec": None})), state, seq
    spec = describe(seq)
    name = CUSTOM if config.model in zoo.names() or is_own_module(config.model) else config.model
    return make_config(**(config.model_dump() | {"model": name, "model_spec": spec})), state, None


def fit_outputs(model: Model, config: RunConfig, num_classes: int) -> nn.Sequential:
    """``model`` with an output layer of the width the run needs.

    Under label obfuscation (defense ``labels`` / ``clicooper``) the trainers learn ``C·m`` secret
    sub-classes, which the DO sums back into the ``C`` classes, so a model that ends with
    ``nn.Linear(d, C)`` gets ``nn.Linear(d, C·m)`` in its place, freshly initialised from the public seed
    (which sub-class belongs to which class is secret: the user's ``C`` rows cannot be placed without it).
    A note on stderr says so. Every other layer, and every other model, is kept as given."""
    seq = as_sequential(model)
    want = num_classes * config.labels.expansion if config.obfuscate_labels else num_classes
    last = seq[-1] if len(seq) else None
    if type(last) is not nn.Linear or last.out_features == want or last.out_features != num_classes:
        return seq
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG stays as it was
        torch.manual_seed(config.seed)
        wide = nn.Linear(last.in_features, want, bias=last.bias is not None,
                         device=last.weight.device, dtype=last.weight.dtype)
    print(f"note: label obfuscation trains {num_classes} classes × labels.expansion {config.labels.expansion} = "
          f"{want} secret sub-classes, so the model's last layer Linear({last.in_features}, {num_classes}) is "
          f"trained as Linear({last.in_features}, {want}) (fresh weights from the seed); predict and export "
          f"decode its outputs back to the {num_classes} classes", file=sys.stderr)
    return nn.Sequential(*list(seq)[:-1], wide)


def check_adopted(model: Model, built: nn.Module) -> None:
    """The run's model (built from the description) must be the given one, layer for layer."""
    check_rebuilt(model, built)


def check_own_architecture(run_dir: Path, module: nn.Sequential) -> None:
    """The module given to reopen an ``own-module:…`` run must have the architecture ``plan.json`` records."""
    plan = rundir.read_json(Path(run_dir) / rundir.PLAN)
    want = plan.get("extra", {}).get("architecture_hash")
    if want is not None and architecture_hash(module) != want:
        raise ConfigError(f"the model= given differs from the architecture {run_dir}/plan.json records "
                          f"({', '.join(plan.get('extra', {}).get('own_module', [])) or 'its layers'}); give "
                          "the same module the run was trained with")


def save_initial(run_dir: Path, plan: Plan, state: dict[str, torch.Tensor]) -> None:
    """Write ``RUN/initial_model.safetensors`` and record its hash in the plan (before ``plan.json``)."""
    plan.extra["initial_weights"] = segment_commitment(state)
    rundir.save_tensors(Path(run_dir) / rundir.INITIAL_MODEL, state, {"what": "initial weights (model=)"})


def load_initial(run_dir: Path) -> dict[str, torch.Tensor] | None:
    """A resumed run's given initial weights (checked against ``plan.json``), or ``None`` if it had none."""
    run_dir = Path(run_dir)
    plan = rundir.read_json(run_dir / rundir.PLAN) if (run_dir / rundir.PLAN).is_file() else {}
    want = plan.get("extra", {}).get("initial_weights")
    f = run_dir / rundir.INITIAL_MODEL
    if want is None:
        return None
    if not f.is_file():
        raise RunDirError(f"{f} is missing, but {run_dir / rundir.PLAN} says the run starts from given weights; "
                          "restore the file")
    state, _ = rundir.load_tensors(f)
    if segment_commitment(state) != want:
        raise RunDirError(f"{f} does not hold the initial weights {run_dir / rundir.PLAN} records; restore it")
    return state
