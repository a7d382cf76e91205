"""Started gRPC transports on 127.0.0.1, each knowing every other's address (benchmarks and tests).

Not used by training code: a real deployment gives each party its own process (``clicooper node``).
"""

from __future__ import annotations

from collections.abc import Sequence

from clicooper.net.certs import PartyCert, generate_party_certs
from clicooper.net.grpc_transport import GrpcTransport
from clicooper.net.tls import TlsConfig


def loopback_mesh(
    names: Sequence[str], *, run_id: str = "test-run", certs: dict[str, PartyCert] | None = None,
    tls: bool = False, **kwargs: object,
) -> dict[str, GrpcTransport]:
    """Started transports for ``names`` on 127.0.0.1 ephemeral ports, each knowing every other's address.

    ``tls=True`` (or ``certs``) uses pinned mutual TLS; otherwise plaintext ``insecure_loopback``.
    """
    if tls and certs is None:
        certs = generate_party_certs(names)
    out: dict[str, GrpcTransport] = {}
    for n in names:
        peers = {p: "" for p in names if p != n}
        sec: dict[str, object] = (
            {"tls": TlsConfig.from_certs(certs[n], certs)} if certs else {"insecure_loopback": True}
        )
        out[n] = GrpcTransport(n, run_id=run_id, listen="127.0.0.1:0", peers=peers, **sec, **kwargs).start()
    for n, t in out.items():
        for p in names:
            if p != n:
                t.set_peer_address(p, out[p].address)
    return out
