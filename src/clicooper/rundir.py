"""Run-directory storage: layout, atomic writes, safetensors I/O, checkpoints, observations.

Nothing here trusts what it reads: safetensors only (never pickle), shapes and dtypes checked by callers,
every failure a :class:`RunDirError` that names the file and says what to do. Writes are atomic
(temporary file + fsync + rename), so an interruption never leaves a half-written file in place of a good
one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from clicooper import jsonbound
from clicooper.errors import RunDirError

CONFIG = "config.json"
PLAN = "plan.json"
METRICS = "metrics.json"
MODEL_DIR = "model"
CHECKPOINTS = "checkpoints"
OBSERVATIONS = "observations"
SECRETS = "secrets"
KEYS = "keys"
LEDGER = "ledger.jsonl"
ATTACKS = "attacks"
PRIVACY = "privacy.json"
STATE = "state.json"
PREPROCESSING = "preprocessing.json"  # csv: runs: how raw rows become features (predict)
INITIAL_MODEL = "initial_model.safetensors"  # the Python API's own initial weights (train(config, model=…))


def model_file(party: str) -> str:
    """File name of a plan entry's delivered weights inside ``model/`` (``head``, ``seg_<i>``, ``tail``)."""
    return {"DO:head": "head", "DO:tail": "tail"}.get(party, f"seg_{party[1:]}") + ".safetensors"


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically (tmp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: Path) -> Any:
    """Read JSON, with a clear error for a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path} is missing; is this a CliCooper run directory?")
    try:
        return jsonbound.load_file(path)  # size and depth bounded: a run directory may come from anyone
    except ValueError as e:  # invalid UTF-8 or JSON, too large, too deep
        raise RunDirError(f"{path} is corrupt ({e}); restore it from a backup or re-run training") from e
    except OSError as e:
        raise RunDirError(f"cannot read {path}: {e}") from e


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors (contiguous CPU copies), atomically. Metadata must be str→str."""
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write_bytes(Path(path), st_save(data, metadata=meta or None))


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file → (tensors, metadata). Corrupt or missing files raise :class:`RunDirError`."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path} is missing; the run directory is incomplete")
    raw = path.read_bytes()
    try:
        tensors = st_load(raw)
        from safetensors import safe_open  # metadata lives in the header

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, ValueError, RuntimeError, OSError) as e:
        raise RunDirError(
            f"{path} is not a valid safetensors file ({e}); restore it from a checkpoint or re-run training"
        ) from e
    return tensors, dict(meta)


def load_state_into(module: torch.nn.Module, path: Path) -> dict[str, str]:
    """Load a saved state dict into ``module``, checking names and shapes; returns the metadata."""
    tensors, meta = load_tensors(path)
    own = module.state_dict()
    if set(tensors) != set(own):
        raise RunDirError(
            f"{path} holds tensors {sorted(tensors)} but the model expects {sorted(own)}; "
            "the file belongs to another model or plan"
        )
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(own[k].shape) or v.dtype != own[k].dtype:
            raise RunDirError(
                f"{path}: tensor {k} has shape {tuple(v.shape)} {v.dtype}, expected "
                f"{tuple(own[k].shape)} {own[k].dtype}; the file belongs to another model"
            )
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise RunDirError(f"{path}: tensor {k} contains NaN/Inf; restore it from a checkpoint")
    module.load_state_dict(tensors)
    return meta


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Flatten an optimizer's state into tensors + string metadata (safetensors-friendly, no pickle)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, st in sd["state"].items():
        for name, val in st.items():
            key = f"state.{idx}.{name}"
            if isinstance(val, torch.Tensor):
                tensors[key] = val
            else:
                scalars[key] = val
    meta = {"param_groups": json.dumps(sd["param_groups"]), "scalars": json.dumps(scalars)}
    return tensors, meta


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Inverse of :func:`optimizer_tensors`."""
    try:
        groups = json.loads(meta["param_groups"])
        scalars = json.loads(meta.get("scalars", "{}"))
    except (KeyError, json.JSONDecodeError) as e:
        raise RunDirError("optimizer checkpoint metadata is corrupt; resume from an earlier round") from e
    state: dict[int, dict[str, Any]] = {}
    for key, val in list(tensors.items()) + list(scalars.items()):
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = val
    opt.load_state_dict({"state": state, "param_groups": groups})


def check_new_run_dir(path: Path, *, resumable: bool = True) -> None:
    """Refuse to overwrite an existing, non-empty run directory (``resumable``: the message may point to
    ``clicooper train --resume``, which only an in-process run has)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        hint = f", or continue it with `clicooper train --resume {path}`" if resumable else ""
        raise RunDirError(f"{path} already exists and is not empty; choose another --out or delete it{hint}")
