"""One error hierarchy for CliCooper.

Every error a user can cause subclasses :class:`CliCooperError` *and* the matching builtin, so callers
can catch either. The CLI turns any ``CliCooperError`` into a one-line message and a non-zero exit code;
messages therefore say what went wrong **and what to do**.
"""

from __future__ import annotations


class CliCooperError(Exception):
    """Base class of every error CliCooper raises on purpose."""

    exit_code: int = 2


class ConfigError(CliCooperError, ValueError):
    """A configuration value, CLI option or plan is invalid."""


class DataError(CliCooperError, ValueError):
    """A dataset is missing, malformed or contains invalid values (NaN, wrong labels, …)."""


class RunDirError(CliCooperError, OSError):
    """A run directory is missing, incomplete, corrupt, or would be overwritten."""


class PrivacyError(CliCooperError, ValueError):
    """A privacy parameter is invalid or a privacy secret (label key, noise secret) is missing/wrong."""


class LedgerError(CliCooperError, ValueError):
    """A ledger is malformed, tampered with, or fails verification."""


class KeyFileError(CliCooperError, ValueError):
    """A key file is missing, unreadable, or its passphrase is wrong."""


class WireError(CliCooperError, ValueError):
    """A message received from a peer is malformed, replayed, stale, oversized or otherwise rejected."""


class AttackError(CliCooperError, ValueError):
    """An attack cannot run on the given run directory or view (no observations, bad ranges, …)."""


class InterruptedRun(CliCooperError):
    """Training was interrupted; the last completed round is saved and can be resumed."""

    exit_code = 130
