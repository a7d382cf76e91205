"""Self-signed TLS identities for the parties and their pinned fingerprints (DESIGN §5 genesis, §6).

Each party gets an ECDSA P-256 key and a self-signed certificate (not a CA: it cannot issue others).
Its SHA-256 fingerprint (hex of the SHA-256 of the DER certificate) goes into the ledger genesis; peers
trust exactly that certificate (``GrpcTransport`` pins it both ways: the client trusts only the pinned
certificate of the peer it dials, the server accepts only the pinned certificates and binds each stream
to the party whose certificate it presented). No public CA is involved.

P-256 rather than Ed25519 because every TLS 1.2/1.3 stack gRPC links against accepts it.
A future ``clicooper certs`` command is ``save_party_cert(generate_party_cert(name), dir)`` per party,
then publishing ``fingerprints(...)`` into the genesis.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clicooper.errors import ConfigError, KeyFileError

_ORG = "CliCooper"


def party_dns_name(name: str) -> str:
    """The DNS name a party's certificate carries (the TLS host-name check uses it, not DNS lookups)."""
    return f"{name.lower().replace('_', '-')}.clicooper"


def cert_fingerprint(cert_pem_or_der: bytes) -> str:
    """SHA-256 fingerprint (64 lowercase hex characters) of a certificate, from PEM or DER."""
    if cert_pem_or_der.lstrip().startswith(b"-----BEGIN"):
        try:
            der = x509.load_pem_x509_certificate(cert_pem_or_der).public_bytes(serialization.Encoding.DER)
        except ValueError as e:
            raise ConfigError(f"not a PEM certificate: {e}") from e
    else:
        der = cert_pem_or_der
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class PartyCert:
    """One party's TLS identity: PEM certificate and PEM private key (keep the key private)."""

    name: str
    cert_pem: bytes
    key_pem: bytes

    @property
    def fingerprint(self) -> str:
        """SHA-256 fingerprint of the certificate (what the genesis pins)."""
        return cert_fingerprint(self.cert_pem)

    def __repr__(self) -> str:  # never print the key
        return f"PartyCert(name={self.name!r}, fingerprint={self.fingerprint[:16]}…)"


#: What to do about a certificate outside its validity period (a run's certificates are pinned in its genesis).
RENEW_HINT = ("create a new certificate set with `clicooper certs RUN_CONFIG` for a new run; a run's certificates "
              "are pinned in its genesis and cannot be rotated mid-run")


def check_cert_validity(name: str, cert_pem_or_der: bytes, *, now: dt.datetime | None = None,
                        role: str = "") -> None:
    """Refuse party ``name``'s certificate outside its validity period (:class:`ConfigError` with the date).

    ``role`` qualifies the name in the message (e.g. ``"this party"`` or ``"peer"``).
    """
    try:
        if cert_pem_or_der.lstrip().startswith(b"-----BEGIN"):
            cert = x509.load_pem_x509_certificate(cert_pem_or_der)
        else:
            cert = x509.load_der_x509_certificate(cert_pem_or_der)
    except ValueError as e:
        raise ConfigError(f"the TLS certificate of {name} is not a certificate ({e}): {RENEW_HINT}") from e
    now = now or dt.datetime.now(dt.UTC)
    who = f"the TLS certificate of {role + ' ' if role else ''}{name}"
    fmt = "%Y-%m-%d %H:%M:%S UTC"
    if now > cert.not_valid_after_utc:
        raise ConfigError(f"{who} expired on {cert.not_valid_after_utc.strftime(fmt)} (valid from "
                          f"{cert.not_valid_before_utc.strftime(fmt)}; now {now.strftime(fmt)}): {RENEW_HINT}")
    if now < cert.not_valid_before_utc:
        raise ConfigError(f"{who} is not valid before {cert.not_valid_before_utc.strftime(fmt)} (now "
                          f"{now.strftime(fmt)}): check this machine's clock, or {RENEW_HINT}")


def generate_party_cert(name: str, *, valid_days: int = 365, hosts: Iterable[str] = ()) -> PartyCert:
    """A fresh key and self-signed certificate for ``name``.

    ``hosts`` adds DNS names to the certificate (informational: peers verify the pinned fingerprint and
    :func:`party_dns_name`, not the host they dial).
    """
    if valid_days <= 0:
        raise ConfigError(f"valid_days must be positive, got {valid_days}")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
        x509.NameAttribute(NameOID.COMMON_NAME, name),
    ])
    now = dt.datetime.now(dt.UTC)
    dns = [party_dns_name(name), *(h for h in hosts if h)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))  # tolerate modest clock skew between machines
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dict.fromkeys(dns)]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False,
                          crl_sign=False, encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                              x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return PartyCert(
        name=name,
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
    )


def generate_party_certs(names: Iterable[str], *, valid_days: int = 365) -> dict[str, PartyCert]:
    """:func:`generate_party_cert` for each name (e.g. ``["DO", "T1", "T2"]``)."""
    names = list(names)
    if len({party_dns_name(n) for n in names}) != len(names):
        raise ConfigError(f"party names must be distinct (case-insensitively): {names}")
    return {n: generate_party_cert(n, valid_days=valid_days) for n in names}


def fingerprints(certs: Mapping[str, PartyCert]) -> dict[str, str]:
    """``{party: fingerprint}`` — the table the genesis pins."""
    return {name: c.fingerprint for name, c in certs.items()}


def save_party_cert(cert: PartyCert, directory: Path) -> tuple[Path, Path]:
    """Write ``NAME.crt`` (public) and ``NAME.key`` (mode 0600) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    crt, key = directory / f"{cert.name}.crt", directory / f"{cert.name}.key"
    crt.write_bytes(cert.cert_pem)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(cert.key_pem)
    return crt, key


def load_party_cert(directory: Path, name: str, *, with_key: bool = True) -> PartyCert:
    """Read what :func:`save_party_cert` wrote (``with_key=False`` for a peer's public certificate)."""
    directory = Path(directory)
    try:
        cert_pem = (directory / f"{name}.crt").read_bytes()
        key_pem = (directory / f"{name}.key").read_bytes() if with_key else b""
    except OSError as e:
        raise KeyFileError(f"cannot read the TLS certificate of {name} in {directory}: {e}; "
                           "create it with generate_party_cert / `clicooper certs`") from e
    return PartyCert(name=name, cert_pem=cert_pem, key_pem=key_pem)


def write_cert_set(names: Iterable[str], directory: Path, *, valid_days: int = 365) -> dict[str, str]:
    """``clicooper certs``: a certificate + key per party in ``directory`` and ``fingerprints.json``.

    Each party keeps its own ``NAME.key`` (mode 0600) and everybody gets all ``NAME.crt`` and
    ``fingerprints.json`` (the pin table: a node trusts exactly these certificates). Refuses to overwrite an
    existing set (a new set changes the run id).
    """
    import json

    directory = Path(directory)
    if (directory / "fingerprints.json").exists():
        raise ConfigError(f"{directory} already holds a certificate set; choose another --out or delete it "
                          "(new certificates change the run id: every node must get the new set)")
    certs = generate_party_certs(names, valid_days=valid_days)
    for c in certs.values():
        save_party_cert(c, directory)
    fps = fingerprints(certs)
    (directory / "fingerprints.json").write_text(json.dumps(fps, indent=2) + "\n", encoding="utf-8")
    return fps
