"""RUN/secrets/: creation, permissions, loading and the errors that say what to do."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from clicooper.errors import CliCooperError, PrivacyError
from clicooper.privacy.secrets import (
    LABEL_KEY,
    NOISE_SECRET,
    SECRET_BYTES,
    backup_reminder,
    create_secrets,
    load_secret,
    secrets_dir,
)


def test_create_writes_two_private_32_byte_secrets(tmp_path: Path) -> None:
    paths = create_secrets(tmp_path)

    assert set(paths) == {NOISE_SECRET, LABEL_KEY}
    assert stat.S_IMODE(secrets_dir(tmp_path).stat().st_mode) == 0o700
    for path in paths.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(path.read_bytes()) == SECRET_BYTES
    assert load_secret(tmp_path, NOISE_SECRET) != load_secret(tmp_path, LABEL_KEY)
    assert not [p for p in secrets_dir(tmp_path).iterdir() if p.name.startswith(".")]  # no temp files left


def test_secrets_are_fresh_per_run(tmp_path: Path) -> None:
    create_secrets(tmp_path / "a")
    create_secrets(tmp_path / "b")

    assert load_secret(tmp_path / "a", NOISE_SECRET) != load_secret(tmp_path / "b", NOISE_SECRET)


def test_create_refuses_to_overwrite_but_resume_keeps(tmp_path: Path) -> None:
    create_secrets(tmp_path)
    before = load_secret(tmp_path, LABEL_KEY)

    with pytest.raises(PrivacyError, match="exist_ok=True"):
        create_secrets(tmp_path)
    create_secrets(tmp_path, exist_ok=True)

    assert load_secret(tmp_path, LABEL_KEY) == before


def test_partial_secrets_are_an_error_even_on_resume(tmp_path: Path) -> None:
    create_secrets(tmp_path)
    (secrets_dir(tmp_path) / LABEL_KEY).unlink()

    with pytest.raises(PrivacyError, match="backup"):
        create_secrets(tmp_path, exist_ok=True)


def test_missing_secret_says_restore_from_backup(tmp_path: Path) -> None:
    with pytest.raises(PrivacyError, match="backup") as info:
        load_secret(tmp_path, LABEL_KEY)

    assert isinstance(info.value, CliCooperError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("content", [b"", b"x" * 31, b"x" * 33])
def test_wrong_length_secret_is_rejected(tmp_path: Path, content: bytes) -> None:
    create_secrets(tmp_path)
    (secrets_dir(tmp_path) / NOISE_SECRET).write_bytes(content)

    with pytest.raises(PrivacyError, match="restore it from your backup"):
        load_secret(tmp_path, NOISE_SECRET)


def test_unknown_secret_name_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(PrivacyError, match="unknown secret"):
        load_secret(tmp_path, "../keys/DO")


def test_backup_reminder_names_the_label_key_file(tmp_path: Path) -> None:
    text = backup_reminder(tmp_path)

    assert str(secrets_dir(tmp_path) / LABEL_KEY) in text
    assert "back up" in text
