"""What a run's provenance starts from: party keys, the DO's dataset salt and the unsigned genesis body.

Shared by the in-process run (every key in one ``RUN/keys/``) and a node (its own key only).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from clicooper import rundir
from clicooper.config import RunConfig
from clicooper.errors import LedgerError
from clicooper.provenance.commitments import architecture_hash, config_hash, dataset_commitment
from clicooper.provenance.entries import Genesis, PartyRecord
from clicooper.provenance.identity import Identity, load_identity
from clicooper.provenance.stages import Position

DATASET_SALT = "dataset_salt"
SALT_BYTES = 32


def key_path(run_dir: Path, name: str) -> Path:
    """``RUN/keys/<name>.key``."""
    return Path(run_dir) / rundir.KEYS / f"{name}.key"


def load_or_create_identity(path: Path, *, create: bool) -> Identity:
    """A party's key; created (0600) only when ``create`` and no key file exists yet."""
    if Path(path).is_file():
        return load_identity(path)
    if not create:
        raise LedgerError(f"identity {path} is missing but this node already has a ledger: restore its key "
                          "(--identity) — another key cannot sign for the genesis' party")
    Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    ident = Identity.generate()
    ident.save(path)
    return ident


def dataset_salt(run_dir: Path, *, create: bool) -> bytes:
    """The DO's secret salt of the dataset commitment (``RUN/secrets/dataset_salt``, from the OS CSPRNG)."""
    path = Path(run_dir) / rundir.SECRETS / DATASET_SALT
    if path.is_file():
        salt = path.read_bytes()
        if len(salt) != SALT_BYTES:
            raise LedgerError(f"{path} has {len(salt)} bytes, expected {SALT_BYTES}: restore it from backup")
        return salt
    if not create:
        raise LedgerError(f"{path} is missing; the dataset commitment of this run cannot be reproduced")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    salt = os.urandom(SALT_BYTES)
    rundir.atomic_write_bytes(path, salt, mode=0o600)
    return salt


def genesis_body(
    config: RunConfig, run_dir: Path, *, dataset: Any, train_ids: Any, model: nn.Module,
    positions: Sequence[Position], public_keys: dict[str, bytes], fingerprints: dict[str, str] | None = None,
) -> Genesis:
    """The unsigned genesis (parties in name order DO, T1, …, each with its positions and key)."""
    names = ["DO", *sorted((n for n in public_keys if n != "DO"), key=lambda n: int(n[1:]))]
    fps = fingerprints or {}
    parties = tuple(PartyRecord(n, public_keys[n], tuple(p.position for p in positions if p.owner == n),
                                fps.get(n)) for n in names)
    salt = dataset_salt(run_dir, create=True)
    return Genesis(
        config_hash=config_hash(config.model_dump(mode="json")),
        dataset_commitment=dataset_commitment(salt, {"x": dataset.x_train, "y": dataset.y_train}, ids=train_ids),
        architecture_hash=architecture_hash(model), planned_rounds=config.epochs, topology=config.topology,
        parties=parties)
