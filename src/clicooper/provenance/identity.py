"""Ed25519 party identities (docs/design/ledger.md#identities).

Shaped like ``cryptography``'s asymmetric API: keys come from :meth:`Identity.generate` or
:meth:`Identity.from_bytes`; :func:`verify` returns ``None`` and raises :class:`LedgerError` on failure.

A party's id is the first 16 bytes of the SHA-256 of its raw 32-byte public key, in hex
(:func:`party_id`). Key files are PEM PKCS#8, created with mode 0600, encrypted with
``BestAvailableEncryption`` when a passphrase is given (:meth:`Identity.save`, :func:`load_identity`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from clicooper.errors import KeyFileError, LedgerError

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def party_id(public_key: bytes) -> str:
    """Party id of a raw 32-byte Ed25519 public key: hex of the first 16 bytes of its SHA-256."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise LedgerError(f"an Ed25519 public key has 32 bytes, got {len(public_key)}")
    return hashlib.sha256(public_key).digest()[:16].hex()


def verify(public_key: bytes, signature: bytes, data: bytes) -> None:
    """Check an Ed25519 ``signature`` over ``data``; return ``None`` or raise :class:`LedgerError`."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise LedgerError(f"an Ed25519 public key has 32 bytes, got {len(public_key)}")
    if len(signature) != SIGNATURE_BYTES:
        raise LedgerError(f"an Ed25519 signature has 64 bytes, got {len(signature)}")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except InvalidSignature as e:
        raise LedgerError(
            f"invalid Ed25519 signature for party {party_id(public_key)}: the data or signature was altered"
        ) from e
    except ValueError as e:  # not a valid curve point
        raise LedgerError(f"malformed Ed25519 public key: {e}") from e


class Identity:
    """A party's Ed25519 private key with its public key and party id."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._sk = private_key
        self._pk = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def generate(cls) -> Identity:
        """A fresh random identity (OS randomness)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_bytes(cls, private_bytes: bytes) -> Identity:
        """Identity from a raw 32-byte Ed25519 private key (seed)."""
        if len(private_bytes) != 32:
            raise KeyFileError(f"a raw Ed25519 private key has 32 bytes, got {len(private_bytes)}")
        return cls(Ed25519PrivateKey.from_private_bytes(private_bytes))

    @property
    def public_key(self) -> bytes:
        """Raw 32-byte public key."""
        return self._pk

    @property
    def party_id(self) -> str:
        """This identity's party id (see :func:`party_id`)."""
        return party_id(self._pk)

    def private_bytes(self) -> bytes:
        """Raw 32-byte private key. Handle with care: whoever holds it can sign as this party."""
        return self._sk.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def sign(self, data: bytes) -> bytes:
        """Deterministic 64-byte Ed25519 signature over ``data`` (RFC 8032)."""
        return self._sk.sign(data)

    def to_pem(self, passphrase: bytes | str | None = None) -> bytes:
        """PEM PKCS#8 encoding, encrypted with ``BestAvailableEncryption`` when a passphrase is given."""
        enc: serialization.KeySerializationEncryption
        if passphrase is None:
            enc = serialization.NoEncryption()
        else:
            pw = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
            if not pw:
                raise KeyFileError("an empty passphrase is not allowed; pass None for an unencrypted key")
            enc = serialization.BestAvailableEncryption(pw)
        return self._sk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)

    def save(self, path: str | os.PathLike[str], passphrase: bytes | str | None = None, *,
             overwrite: bool = False) -> Path:
        """Write the key file at ``path`` with mode 0600 (fsynced); refuse to overwrite unless asked."""
        p = Path(path)
        data = self.to_pem(passphrase)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        try:
            fd = os.open(p, flags, 0o600)
        except FileExistsError as e:
            raise KeyFileError(f"key file {p} already exists; delete it or choose another path") from e
        except OSError as e:
            raise KeyFileError(f"cannot create key file {p}: {e}") from e
        try:
            os.fchmod(fd, 0o600)  # O_CREAT's mode is masked by umask, and O_TRUNC keeps the old mode
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return p

    def __repr__(self) -> str:
        return f"Identity(party_id={self.party_id!r})"


#: a PEM Ed25519 key (encrypted or not) is a few hundred bytes
MAX_KEY_FILE_BYTES = 64 << 10


def load_identity(path: str | os.PathLike[str], passphrase: bytes | str | None = None) -> Identity:
    """Load a key file written by :meth:`Identity.save`.

    Raises :class:`KeyFileError` (never a raw ``cryptography`` error) when the file is missing, the
    passphrase is wrong, missing or superfluous, the file is not a PEM private key, or the key is not
    Ed25519.
    """
    p = Path(path)
    try:
        if p.stat().st_size > MAX_KEY_FILE_BYTES:
            raise KeyFileError(f"key file {p} is larger than {MAX_KEY_FILE_BYTES} bytes: it is no key file")
        data = p.read_bytes()
    except FileNotFoundError as e:
        raise KeyFileError(f"key file {p} not found; create one with `clicooper keygen`") from e
    except OSError as e:
        raise KeyFileError(f"cannot read key file {p}: {e}") from e
    pw = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
    encrypted = b"ENCRYPTED PRIVATE KEY" in data
    if encrypted and pw is None:
        raise KeyFileError(f"key file {p} is encrypted; give its passphrase")
    if not encrypted and pw is not None and b"PRIVATE KEY" in data:
        raise KeyFileError(f"key file {p} is not encrypted; do not give a passphrase")
    try:
        key = serialization.load_pem_private_key(data, password=pw)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        if encrypted:
            raise KeyFileError(f"cannot decrypt key file {p}: wrong passphrase (or a corrupt file)") from e
        raise KeyFileError(f"key file {p} is not a PEM PKCS#8 private key (corrupt or wrong file)") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"key file {p} holds a {type(key).__name__}, not an Ed25519 key")
    return Identity(key)
