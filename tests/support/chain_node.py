"""One party of a toy chain in its own process: ``python -m support.chain_node`` (``tests/`` on the path).

Protocol with the parent: print ``{"name", "address"}`` once listening; read one JSON line
``{peer: address}``; serve; print ``{"reason", "handled", "sent", ...}``. A sketch of ``clicooper node``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import torch

from clicooper.net.certs import load_party_cert
from clicooper.net.grpc_transport import GrpcTransport
from clicooper.net.serve import serve_party
from clicooper.net.tls import TlsConfig
from support.net import ChainDataOwner, ChainTrainer


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m support.chain_node")
    ap.add_argument("--name", required=True)
    ap.add_argument("--parties", required=True, help="comma-separated chain, DO first")
    ap.add_argument("--certs", required=True, help="directory with NAME.crt / own NAME.key")
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--run-id", default="test-run")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--deadline", type=float, default=30.0)
    return ap.parse_args(argv)


def child_main(argv: Sequence[str] | None = None) -> int:
    """Run one party (see module docstring); 0 when the chain ended with a shutdown."""
    a = _args(argv)
    torch.set_num_threads(1)
    names = a.parties.split(",")
    me = load_party_cert(a.certs, a.name)
    peers = {n: load_party_cert(a.certs, n, with_key=False) for n in names if n != a.name}
    t = GrpcTransport(a.name, run_id=a.run_id, listen=a.listen, peers={n: "" for n in peers},
                      tls=TlsConfig.from_certs(me, peers), connect_timeout_s=10.0)
    with t.start():
        print(json.dumps({"name": a.name, "address": t.address}), flush=True)
        for peer, address in json.loads(sys.stdin.readline()).items():
            if peer != a.name:
                t.set_peer_address(peer, address)
        trainers = names[1:]
        extra: dict[str, list[float]] = {}
        if a.name == names[0]:
            do = ChainDataOwner(trainers, steps=a.steps, name=a.name)
            result = serve_party(do, t, initial=do.start(), deadline_s=a.deadline)
            extra = {"outputs": [float(o.mean()) for o in do.outputs], "grads": [float(g.mean()) for g in do.grads]}
        else:
            i = trainers.index(a.name)
            prev = names[0] if i == 0 else trainers[i - 1]
            nxt = names[0] if i == len(trainers) - 1 else trainers[i + 1]
            result = serve_party(ChainTrainer(a.name, prev=prev, next=nxt), t, deadline_s=a.deadline)
    print(json.dumps({"reason": result.reason, "handled": result.handled, "sent": result.sent, **extra}),
          flush=True)
    return 0 if result.reason == "shutdown" else 1


if __name__ == "__main__":  # pragma: no cover
    code = child_main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter finalization: with peers exiting at the same moment, gRPC's native shutdown
    # has been seen to take ~3 s here, which only slows the tests that spawn these processes.
    os._exit(code)
