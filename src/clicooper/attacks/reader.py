"""The one file reader every attack goes through.

docs/design/metrics.md#views: attacks get an explicit view of what the attacker may read and *never* open ``RUN/secrets/`` or
``RUN/keys/``. Rather than trusting each attack to remember that, every byte an attack reads from a run
directory comes through :class:`RunReader`, which resolves the path (symlinks and ``..`` included) and
refuses anything under a forbidden directory. ``tests/test_attacks_views.py`` checks that building views
opens no other path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _st_load

from clicooper import jsonbound
from clicooper.errors import AttackError

#: Top-level folders of a run directory that no attacker may read: the DO's secrets, every party's keys,
#: and checkpoints (they hold every party's weights and optimizer state, the DO's included).
FORBIDDEN_DIRS: tuple[str, ...] = ("secrets", "keys", "checkpoints")


class RunReader:
    """Read-only access to the public parts of one run directory.

    Every method takes a path *relative to the run directory*. Paths resolving outside the run directory,
    or under ``secrets/`` or ``keys/``, raise :class:`AttackError` before any byte is read.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.root = Path(run_dir).resolve()
        if not self.root.is_dir():
            raise AttackError(f"run directory {run_dir!s} does not exist; pass the RUN folder written by `train`")
        #: Every path this reader opened, for audits and tests.
        self.opened: list[Path] = []

    def check(self, rel: str | Path) -> Path:
        """Return the absolute path of ``rel`` after checking that an attacker may read it."""
        path = (self.root / rel).resolve()
        try:
            parts = path.relative_to(self.root).parts
        except ValueError as e:
            raise AttackError(f"{rel!s} lies outside the run directory; attacks read only inside RUN/") from e
        if parts and parts[0] in FORBIDDEN_DIRS:
            raise AttackError(
                f"attacks may not read {rel!s}: RUN/{parts[0]}/ holds other parties' secrets or weights (docs/design/metrics.md#views)"
            )
        return path

    def exists(self, rel: str | Path) -> bool:
        """Whether a readable file exists at ``rel`` (forbidden paths raise)."""
        return self.check(rel).is_file()

    def read_bytes(self, rel: str | Path) -> bytes:
        """Raw bytes of ``rel``; a missing file raises :class:`AttackError`."""
        path = self.check(rel)
        if not path.is_file():
            raise AttackError(f"{path} is missing; was the run trained with observations recorded?")
        self.opened.append(path)
        return path.read_bytes()

    def read_json(self, rel: str | Path) -> Any:
        """Parsed JSON of ``rel``."""
        try:
            return jsonbound.loads(self.read_bytes(rel), max_bytes=jsonbound.MAX_FILE_BYTES, what=str(rel))
        except ValueError as e:
            raise AttackError(f"{rel!s} is not valid JSON ({e}); the run directory may be corrupt") from e

    def read_tensors(self, rel: str | Path) -> dict[str, torch.Tensor]:
        """Tensors of a safetensors file (loaded from bytes, so no other code path opens the file)."""
        data = self.read_bytes(rel)
        try:
            return dict(_st_load(data))
        except Exception as e:  # safetensors raises its own SafetensorError
            raise AttackError(f"{rel!s} is not a valid safetensors file ({e})") from e
