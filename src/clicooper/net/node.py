"""One party as its own process: ``clicooper node`` (docs/design/protocol.md#transport; docs/network.md "Nodes").

:func:`run_node` builds the party's role — :class:`~clicooper.net.do_node.DataOwnerNode` or
:class:`~clicooper.net.trainer_node.TrainerNode`, both over :class:`~clicooper.net.node_base.Node` and the
session core — and runs it; the round protocol is described in :mod:`clicooper.net.node_base`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from clicooper.errors import CliCooperError
from clicooper.net.do_node import DataOwnerNode
from clicooper.net.node_base import Node, NodeOptions, check_run_open, load_tls, parse_peers
from clicooper.net.trainer_node import TrainerNode

__all__ = ["DataOwnerNode", "Node", "NodeOptions", "TrainerNode", "check_run_open", "load_tls", "make_node",
           "parse_peers", "run_node"]


def make_node(opts: NodeOptions) -> Node:
    """The node of ``opts.party``: the DO's role or a trainer's (every check of :class:`Node` first)."""
    return DataOwnerNode(opts) if opts.party == "DO" else TrainerNode(opts)


def run_node(opts: NodeOptions) -> dict[str, Any]:
    """Build and run one node (raises :class:`ConfigError` / :class:`WireError` with what to do)."""
    return make_node(opts).run()


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - thin; the CLI is the front door
    """``python -m clicooper.net.node`` = ``clicooper node`` (used by the launcher: lighter start-up)."""
    ap = argparse.ArgumentParser(prog="python -m clicooper.net.node")
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--party", required=True)
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--listen", required=True)
    ap.add_argument("--peers", required=True)
    ap.add_argument("--certs", type=Path)
    ap.add_argument("--key", type=Path)
    ap.add_argument("--identity", type=Path)
    ap.add_argument("--plan", type=Path)
    ap.add_argument("--insecure-loopback", action="store_true")
    ap.add_argument("--connect-timeout", type=float, default=30.0)
    ap.add_argument("--idle-timeout", type=float, default=300.0)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--max-epsilon", type=float)
    ap.add_argument("--dismiss-detection", action="store_true")
    a = ap.parse_args(argv)
    try:
        run_node(NodeOptions(config=a.config, party=a.party, run_dir=a.run_dir, listen=a.listen,
                             peers=parse_peers(a.peers), certs=a.certs, key=a.key, identity=a.identity, plan=a.plan,
                             insecure_loopback=a.insecure_loopback, connect_timeout_s=a.connect_timeout,
                             idle_timeout_s=a.idle_timeout, events=sys.stdout, device=a.device,
                             max_epsilon=a.max_epsilon, dismiss_detection=a.dismiss_detection))
    except CliCooperError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    return 0


if __name__ == "__main__":  # pragma: no cover
    import os

    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip gRPC's slow interpreter finalization (docs/network.md "known limits")
