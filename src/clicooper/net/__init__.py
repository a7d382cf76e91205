"""gRPC transport: each party in its own process or machine (docs/design/protocol.md#transport; docs/network.md).

* :mod:`~clicooper.net.serde` — records ⇄ protobuf ``Envelope`` (validating decoder, size limits);
* :mod:`~clicooper.net.link` — per-link seq / replay / resend rules (no sockets);
* :mod:`~clicooper.net.certs`, :mod:`~clicooper.net.tls` — self-signed identities, pinned mutual TLS;
* :mod:`~clicooper.net.grpc_transport` — :class:`GrpcTransport` for one party process;
* :mod:`~clicooper.net.serve` — :func:`serve_party`, the event loop of a node.
"""

from clicooper.net.certs import (
    PartyCert,
    cert_fingerprint,
    fingerprints,
    generate_party_cert,
    generate_party_certs,
    load_party_cert,
    save_party_cert,
)
from clicooper.net.grpc_transport import GrpcTransport, ShapeTable
from clicooper.net.serde import WireLimits, message_from_proto, message_to_proto
from clicooper.net.serve import ServeResult, serve_party
from clicooper.net.tls import TlsConfig

__all__ = [
    "GrpcTransport",
    "PartyCert",
    "ServeResult",
    "ShapeTable",
    "TlsConfig",
    "WireLimits",
    "cert_fingerprint",
    "fingerprints",
    "generate_party_cert",
    "generate_party_certs",
    "load_party_cert",
    "message_from_proto",
    "message_to_proto",
    "save_party_cert",
    "serve_party",
]
