"""Mutual TLS with pinned self-signed certificates (docs/design/protocol.md#transport), as gRPC credentials.

Pinning, both ways:

* **client** (dialling peer P): the only trust root is P's pinned certificate, and the TLS host name
  checked is :func:`~clicooper.net.certs.party_dns_name` (P) — any other certificate fails the handshake;
* **server**: client certificates are required and must chain to one of the pinned peer certificates
  (which cannot issue others: ``CA:FALSE``); each stream is then bound to the party whose certificate
  fingerprint it presented, and a stream claiming another name is refused.
"""

from __future__ import annotations

import socket
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from clicooper.errors import ConfigError
from clicooper.net.certs import PartyCert, cert_fingerprint, check_cert_validity, party_dns_name


@dataclass(frozen=True)
class TlsConfig:
    """A party's TLS identity and its peers' pinned certificates.

    ``pinned`` maps each peer to the fingerprint fixed in the genesis; ``peer_certs`` holds the peers'
    PEM certificates (gRPC needs the certificate, not only its hash) and is checked against ``pinned``
    here, so a swapped certificate file is a :class:`ConfigError` before any connection is made. So is a
    certificate (own or peer's) outside its validity period: it would fail every handshake later with an
    obscure TLS error.
    """

    identity: PartyCert
    peer_certs: Mapping[str, bytes]
    pinned: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.identity.key_pem:
            raise ConfigError(f"TLS identity of {self.identity.name} has no private key")
        pinned = dict(self.pinned) or {n: cert_fingerprint(c) for n, c in self.peer_certs.items()}
        object.__setattr__(self, "pinned", pinned)
        for name, pem in self.peer_certs.items():
            if name not in pinned:
                raise ConfigError(f"peer {name} has a certificate but no pinned fingerprint in the genesis")
            actual = cert_fingerprint(pem)
            if actual != pinned[name].lower():
                raise ConfigError(
                    f"certificate file of {name} has fingerprint {actual}, but the genesis pins "
                    f"{pinned[name]}: use the certificate the genesis was made with"
                )
        missing = set(pinned) - set(self.peer_certs)
        if missing:
            raise ConfigError(f"pinned peers without a certificate: {sorted(missing)}")
        check_cert_validity(self.identity.name, self.identity.cert_pem, role="this party")
        for name, pem in self.peer_certs.items():
            check_cert_validity(name, pem, role="peer")

    @classmethod
    def from_certs(
        cls, identity: PartyCert, peers: Mapping[str, PartyCert | bytes],
        pinned: Mapping[str, str] | None = None,
    ) -> TlsConfig:
        """Build from :class:`PartyCert` objects (or PEM bytes) of the peers; pins default to theirs.

        ``pinned`` may be the genesis's whole table: this party's own entry is checked and dropped.
        """
        me = identity.name
        pinned = dict(pinned or {})
        if me in pinned and pinned.pop(me).lower() != identity.fingerprint:
            raise ConfigError(f"the certificate of {me} is not the one the genesis pins for {me}: "
                              "load this party's own certificate and key")
        peer_pems = {n: (c.cert_pem if isinstance(c, PartyCert) else c) for n, c in peers.items() if n != me}
        return cls(identity=identity, peer_certs=peer_pems, pinned=pinned)

    def party_of_fingerprint(self, fingerprint: str) -> str | None:
        """The peer whose pinned fingerprint this is, or ``None``."""
        for name, fp in self.pinned.items():
            if fp.lower() == fingerprint:
                return name
        return None

    def channel_credentials(self, peer: str) -> grpc.ChannelCredentials:
        """Client credentials that trust only ``peer``'s pinned certificate and present ours."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.peer_certs[peer],
            private_key=self.identity.key_pem,
            certificate_chain=self.identity.cert_pem,
        )

    def channel_options(self, peer: str) -> list[tuple[str, str]]:
        """Host-name override: peers are verified by pinned identity, not by the address dialled."""
        return [("grpc.ssl_target_name_override", party_dns_name(peer))]

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server credentials that require a client certificate among the pinned peers'."""
        roots = b"".join(self.peer_certs[n] for n in sorted(self.peer_certs))
        return grpc.ssl_server_credentials(
            [(self.identity.key_pem, self.identity.cert_pem)],
            root_certificates=roots or None,
            require_client_auth=True,
        )


def peer_fingerprint_of_context(context: grpc.ServicerContext) -> str | None:
    """Fingerprint of the client certificate of a gRPC call (``None`` on a plaintext call)."""
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        return None
    pem = pems[0]
    return cert_fingerprint(pem if isinstance(pem, bytes) else pem.encode())


def probe_certificate(host: str, port: int, identity: PartyCert, *, timeout: float = 3.0) -> str:
    """Fingerprint of the certificate a TLS server at ``host:port`` presents (diagnostics only).

    Used after a failed connection to tell "wrong certificate" from "nothing there". It trusts nothing
    and sends nothing but a handshake (presenting our certificate, since peers require one).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory(prefix="clicooper-probe-") as d:
        crt, key = Path(d) / "c.pem", Path(d) / "k.pem"
        crt.write_bytes(identity.cert_pem)
        key.write_bytes(identity.key_pem)
        ctx.load_cert_chain(str(crt), str(key))
    with socket.create_connection((host, port), timeout=timeout) as sock:
        with ctx.wrap_socket(sock, server_hostname=None) as tls:
            der = tls.getpeercert(binary_form=True)
    if not der:
        raise OSError("the server presented no certificate")
    return cert_fingerprint(der)
