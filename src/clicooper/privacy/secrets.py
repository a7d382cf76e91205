"""The data owner's secrets in ``RUN/secrets/`` (docs/design/mechanisms.md#activation-protection, docs/design/mechanisms.md#label-obfuscation).

Two 32-byte secrets, from the OS's CSPRNG (``os.urandom``), never derived from the run's public seed and
never sent to any party:

* ``noise_secret`` keys the activation / gradient / query noise (:mod:`clicooper.privacy.activation`) and the
  randomized-response draws (:mod:`clicooper.privacy.label_dp`); a trainer that had it could subtract the
  noise.
* ``label_key`` (``k_L``) keys the label obfuscation (:mod:`clicooper.privacy.labels`); without it the
  model's outputs cannot be decoded, so the DO must back it up (:data:`LABEL_KEY_BACKUP_REMINDER`).

Files are written atomically (temporary file, fsync, ``os.link`` so an existing secret is never replaced)
with mode ``0600`` in a directory with mode ``0700``. Attacks must never open this directory.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from clicooper.errors import PrivacyError

SECRETS_DIRNAME = "secrets"
NOISE_SECRET = "noise_secret"
LABEL_KEY = "label_key"
SECRET_NAMES: tuple[str, ...] = (NOISE_SECRET, LABEL_KEY)
SECRET_BYTES = 32

LABEL_KEY_BACKUP_REMINDER = (
    "IMPORTANT: back up {path} now (32 bytes, keep it offline and private). The model's outputs live in "
    "a secretly permuted label space; without this label key they cannot be decoded, and a lost key "
    "cannot be recovered from anything else in the run directory. Never send it to a trainer."
)


def secrets_dir(run_dir: str | os.PathLike[str]) -> Path:
    """``RUN/secrets`` (not created)."""
    return Path(run_dir) / SECRETS_DIRNAME


def _check_name(name: str) -> None:
    if name not in SECRET_NAMES:
        raise PrivacyError(f"unknown secret {name!r}; expected one of {', '.join(SECRET_NAMES)}")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened for fsync
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_new_secret(path: Path, value: bytes) -> None:
    """Atomically create ``path`` (mode 0600) holding ``value``; fail if it exists."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask cannot widen it, but make the mode explicit
        os.write(fd, value)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # atomic and, unlike os.replace, never overwrites an existing secret
    except FileExistsError as e:
        raise PrivacyError(
            f"{path} already exists; refusing to overwrite a secret (use create_secrets(..., "
            "exist_ok=True) to keep the existing ones)"
        ) from e
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def create_secrets(run_dir: str | os.PathLike[str], *, exist_ok: bool = False) -> dict[str, Path]:
    """Create ``RUN/secrets/{noise_secret,label_key}`` (32 random bytes each) and return their paths.

    With ``exist_ok=False`` (a fresh run) any existing secret is an error: a new label key would make an
    earlier model undecodable. With ``exist_ok=True`` (resume) existing secrets are validated and kept; a
    set that is only partly present is an error, because silently re-creating one half would break either
    decoding or the noise replay.
    """
    d = secrets_dir(run_dir)
    paths = {name: d / name for name in SECRET_NAMES}
    present = [n for n, p in paths.items() if p.exists()]
    if present:
        if not exist_ok:
            raise PrivacyError(
                f"secrets already exist in {d} ({', '.join(present)}); refusing to replace them. "
                "Resume with create_secrets(run_dir, exist_ok=True) or start a new run directory."
            )
        missing = [n for n in SECRET_NAMES if n not in present]
        if missing:
            raise PrivacyError(
                f"{d} holds {', '.join(present)} but not {', '.join(missing)}; restore the missing "
                "file(s) from your backup (a new key would not match the trained model)"
            )
        for name in SECRET_NAMES:
            load_secret(run_dir, name)  # validates length
        return paths
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    for path in paths.values():
        _write_new_secret(path, os.urandom(SECRET_BYTES))
    _fsync_dir(d)
    return paths


def load_secret(run_dir: str | os.PathLike[str], name: str) -> bytes:
    """Read one secret (``"noise_secret"`` or ``"label_key"``); raise :class:`PrivacyError` if it is
    missing or not exactly 32 bytes."""
    _check_name(name)
    path = secrets_dir(run_dir) / name
    try:
        value = path.read_bytes()
    except FileNotFoundError as e:
        raise PrivacyError(
            f"secret {path} is missing; restore it from your backup (it cannot be re-derived), or "
            "train a new run (`clicooper train --out NEW_RUN`), which draws new secrets"
        ) from e
    except OSError as e:
        raise PrivacyError(f"cannot read secret {path}: {e}; check its permissions (0600, owner DO)") from e
    if len(value) != SECRET_BYTES:
        raise PrivacyError(
            f"secret {path} has {len(value)} bytes, expected {SECRET_BYTES}; it is corrupt or truncated: "
            "restore it from your backup"
        )
    return value


def backup_reminder(run_dir: str | os.PathLike[str]) -> str:
    """:data:`LABEL_KEY_BACKUP_REMINDER` filled in with the label key's path (to print at run start)."""
    return LABEL_KEY_BACKUP_REMINDER.format(path=secrets_dir(run_dir) / LABEL_KEY)
