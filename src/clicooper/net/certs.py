"""Self-signed TLS identities for the parties and their pinned fingerprints (docs/design/ledger.md#the-ledger, docs/design/protocol.md#transport).

Each party gets an ECDSA P-256 key and a self-signed certificate (not a CA: it cannot issue others).
Its SHA-256 fingerprint (hex of the SHA-256 of the DER certificate) goes into the ledger genesis; peers
trust exactly that certificate (``GrpcTransport`` pins it both ways: the client trusts only the pinned
certificate of the peer it dials, the server accepts only the pinned certificates and binds each stream
to the party whose certificate it presented). No public CA is involved.

P-256 rather than Ed25519 because every TLS 1.2/1.3 stack gRPC links against accepts it.

Across organisations each party makes its own keys on its own machine (:func:`write_own_party`,
``clicooper certs --party NAME``): its TLS key and certificate and its Ed25519 ledger identity. Only the
public half travels: a *party card* (``NAME.party.json``: certificate, fingerprint, ledger public key).
The data owner assembles the cards into the run's public set (:func:`assemble_set`, ``clicooper certs
assemble``): every certificate, the pin table ``fingerprints.json`` and ``ledger-keys.json`` (party →
ledger public key: the genesis keys nodes accept, and the ``verify --trusted-keys`` file). Nothing here
writes another party's private key, except :func:`write_cert_set` (``clicooper certs RUN_CONFIG
--local``), a one-machine convenience for tests and ``launch --local``.

Key files are created ``O_CREAT|O_EXCL|O_NOFOLLOW`` with mode 0600: an existing file (or a symlink) is
refused, never overwritten or re-permissioned.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
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
RENEW_HINT = ("create a new certificate set for a new run (each party: `clicooper certs --party NAME`, then `clicooper "
              "certs assemble`; one machine: `clicooper certs RUN_CONFIG --local`); a run's certificates are "
              "pinned in its genesis and cannot be rotated mid-run")


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


def create_new_file(path: Path, data: bytes, *, mode: int = 0o600) -> Path:
    """Write ``data`` to a file that must not exist yet: ``O_CREAT|O_EXCL|O_NOFOLLOW``, ``mode`` (0600 for
    a key) set on the new file whatever the umask. An existing file or a symlink at ``path`` is a
    :class:`KeyFileError` (the file is left as it was); a failed write removes the partial file."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise KeyFileError(f"{p} already exists (or is a link); it is never overwritten: delete it yourself or "
                           "choose another --out") from None
    except OSError as e:
        raise KeyFileError(f"cannot create {p}: {e}") from e
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    except OSError as e:
        os.close(fd)
        p.unlink(missing_ok=True)
        raise KeyFileError(f"cannot write {p}: {e}") from e
    os.close(fd)
    return p


def save_party_cert(cert: PartyCert, directory: Path) -> tuple[Path, Path]:
    """Write ``NAME.crt`` (public, 0644) and ``NAME.key`` (0600) into ``directory``; both must be new
    (:func:`create_new_file`), so an existing key is never replaced or re-permissioned."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    crt, key = directory / f"{cert.name}.crt", directory / f"{cert.name}.key"
    for f in (crt, key):
        if f.exists() or f.is_symlink():
            raise KeyFileError(f"{f} already exists (or is a link); it is never overwritten: delete it yourself or "
                               "choose another --out")
    create_new_file(key, cert.key_pem, mode=0o600)
    create_new_file(crt, cert.cert_pem, mode=0o644)
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
    """``clicooper certs RUN_CONFIG --local``: a certificate + key per party in ``directory`` and
    ``fingerprints.json``, all on ONE machine (tests, ``launch --local``).

    Whoever runs this holds every party's TLS key and can impersonate any of them: across organisations
    each party runs :func:`write_own_party` instead. Refuses to overwrite an existing set (a new set
    changes the run id).
    """
    directory = Path(directory)
    if (directory / "fingerprints.json").exists():
        raise ConfigError(f"{directory} already holds a certificate set; choose another --out or delete it "
                          "(new certificates change the run id: every node must get the new set)")
    certs = generate_party_certs(names, valid_days=valid_days)
    for c in certs.values():
        save_party_cert(c, directory)
    fps = fingerprints(certs)
    create_new_file(directory / FINGERPRINTS_FILE, (json.dumps(fps, indent=2) + "\n").encode(), mode=0o644)
    return fps


# ------------------------------------------------------------------------------ one party, many machines
FINGERPRINTS_FILE = "fingerprints.json"
LEDGER_KEYS_FILE = "ledger-keys.json"
CARD_SUFFIX = ".party.json"
_PARTY = re.compile(r"^(DO|T[1-9][0-9]{0,3})$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_CARD_BYTES = 64 << 10


@dataclass(frozen=True)
class OwnParty:
    """What :func:`write_own_party` wrote: private files stay, the card is sent."""

    name: str
    tls_key: Path
    certificate: Path
    ledger_key: Path
    ledger_pub: Path
    card: Path
    fingerprint: str
    ledger_public_key: str


def _check_party(name: str) -> str:
    if not _PARTY.match(name):
        raise ConfigError(f"party name {name!r}: use DO or T1 … TK (the names of the run's plan)")
    return name


def write_own_party(name: str, directory: Path, *, valid_days: int = 365) -> OwnParty:
    """``clicooper certs --party NAME``: this party's own keys, made on its own machine.

    Writes into ``directory`` (created 0700): ``NAME.key`` (TLS private key) and ``NAME.ledger.key``
    (Ed25519 ledger identity), both 0600 and new; ``NAME.crt``; ``NAME.pub`` (the ledger public key, 64
    hex digits); ``NAME.party.json``, the card to send to the data owner (public only). Nothing of any other
    party is written. Refuses when any of these files exists already."""
    from clicooper.provenance.identity import Identity  # the ledger identity type

    _check_party(name)
    d = Path(directory)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    names = [f"{name}.key", f"{name}.crt", f"{name}.ledger.key", f"{name}.pub", f"{name}{CARD_SUFFIX}"]
    taken = [n for n in names if (d / n).exists() or (d / n).is_symlink()]
    if taken:
        raise KeyFileError(f"{d} already holds {', '.join(taken)}; existing keys are never overwritten: choose "
                           "another --out (a new key set means new pins for the next run)")
    cert = generate_party_cert(name, valid_days=valid_days)
    crt, key = save_party_cert(cert, d)
    ident = Identity.generate()
    ledger_key = create_new_file(d / f"{name}.ledger.key", ident.to_pem(), mode=0o600)
    pub_hex = ident.public_key.hex()
    pub = create_new_file(d / f"{name}.pub", (pub_hex + "\n").encode("ascii"), mode=0o644)
    card_obj = {"party": name, "fingerprint": cert.fingerprint, "ledger_public_key": pub_hex,
                "certificate": cert.cert_pem.decode("ascii")}
    card = create_new_file(d / f"{name}{CARD_SUFFIX}", (json.dumps(card_obj, indent=2) + "\n").encode(), mode=0o644)
    return OwnParty(name, key, crt, ledger_key, pub, card, cert.fingerprint, pub_hex)


@dataclass(frozen=True)
class Card:
    """One party's public material, as it sent it."""

    name: str
    cert_pem: bytes
    fingerprint: str
    ledger_public_key: str | None


def read_card(path: Path) -> Card:
    """A party card (``NAME.party.json``) or a bare certificate (``NAME.crt``, with ``NAME.pub`` beside it
    when there is one); :class:`ConfigError` naming the file for anything malformed. The certificate's
    common name must be the party's name and its fingerprint the card's."""
    from clicooper import jsonbound

    p = Path(path)
    try:
        if p.name.endswith(CARD_SUFFIX):
            obj = jsonbound.load_file(p, max_bytes=MAX_CARD_BYTES)
            if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str) for k in (
                    "party", "fingerprint", "ledger_public_key", "certificate")):
                raise ConfigError(f"{p}: a party card holds party, fingerprint, ledger_public_key and certificate")
            name, pem, fp, pub = obj["party"], obj["certificate"].encode("ascii"), obj["fingerprint"], \
                obj["ledger_public_key"]
        elif p.suffix == ".crt":
            name, pem = p.stem, jsonbound.read_bytes(p, MAX_CARD_BYTES)
            fp = cert_fingerprint(pem)
            side = p.with_suffix(".pub")
            pub = side.read_text("ascii").strip() if side.is_file() else None
        else:
            raise ConfigError(f"{p}: give party cards (NAME{CARD_SUFFIX}) or certificates (NAME.crt)")
    except (OSError, ValueError, UnicodeError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"cannot read {p}: {e}") from None
    _check_party(name)
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise ConfigError(f"{p}: the certificate of {name} is not a PEM certificate ({e})") from None
    cn = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cn != [name]:
        raise ConfigError(f"{p}: the certificate names {cn}, not {name}")
    if cert_fingerprint(pem) != fp:
        raise ConfigError(f"{p}: the card's fingerprint is not its certificate's")
    if pub is not None and not _HEX64.match(pub.lower()):
        raise ConfigError(f"{p}: the ledger public key of {name} must be 64 hex digits")
    check_cert_validity(name, pem)
    return Card(name, pem, fp, pub.lower() if pub is not None else None)


def assemble_set(cards: Iterable[Path], directory: Path, *, expect: Mapping[str, str] | None = None,
                 names: Iterable[str] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """``clicooper certs assemble``: the run's public set from what each party sent.

    Writes into ``directory`` every ``NAME.crt``, ``fingerprints.json`` (the TLS pin table) and
    ``ledger-keys.json`` (party → ledger public key hex), all public: give the folder to every party. Each
    fingerprint in ``expect`` (learnt from the party over another channel) must match; ``names``, when
    given, must be exactly the parties present. Returns (fingerprints, ledger keys)."""
    got: dict[str, Card] = {}
    for f in cards:
        c = read_card(Path(f))
        if c.name in got:
            raise ConfigError(f"two inputs for {c.name} ({f}); give each party's card once")
        got[c.name] = c
    if not got:
        raise ConfigError("no party cards given: pass each party's NAME.party.json (or NAME.crt)")
    if names is not None and sorted(names) != sorted(got):
        raise ConfigError(f"the run's parties are {sorted(names)} but cards came for {sorted(got)}")
    for name, fp in (expect or {}).items():
        if name not in got:
            raise ConfigError(f"--fingerprint names {name}, but no card of {name} was given")
        if got[name].fingerprint != fp.strip().lower():
            raise ConfigError(f"the certificate of {name} has fingerprint {got[name].fingerprint}, not the {fp} "
                              f"{name} told you: do not use this card (ask {name} to send it again)")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if (d / FINGERPRINTS_FILE).exists():
        raise ConfigError(f"{d} already holds a certificate set; choose another --out or delete it")
    fps = {n: got[n].fingerprint for n in sorted(got, key=_order)}
    keys = {n: got[n].ledger_public_key for n in fps if got[n].ledger_public_key}
    for n in fps:
        create_new_file(d / f"{n}.crt", got[n].cert_pem, mode=0o644)
    create_new_file(d / LEDGER_KEYS_FILE, (json.dumps(keys, indent=2) + "\n").encode(), mode=0o644)
    create_new_file(d / FINGERPRINTS_FILE, (json.dumps(fps, indent=2) + "\n").encode(), mode=0o644)
    return fps, keys


def _order(name: str) -> int:
    return 0 if name == "DO" else int(name[1:])


def read_ledger_keys(directory: Path) -> dict[str, bytes] | None:
    """``ledger-keys.json`` of a certificate set (party → ledger public key), or ``None`` when the set has
    none (a ``--local`` set: each node then makes or reads its own key)."""
    from clicooper import jsonbound

    f = Path(directory) / LEDGER_KEYS_FILE
    if not f.is_file():
        return None
    try:
        obj = jsonbound.load_file(f, max_bytes=MAX_CARD_BYTES)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {f}: {e}; assemble the set again with `clicooper certs assemble`") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, str) and _HEX64.match(v.lower())
                                            for k, v in obj.items()):
        raise ConfigError(f"{f} must map party names to ledger public keys (64 hex digits)")
    return {k: bytes.fromhex(v) for k, v in obj.items()}
