"""One party as its own process: ``clicooper node`` (docs/design/protocol.md#transport; docs/network.md "Nodes").

The node builds its party with the session core (:mod:`clicooper.core`) exactly as an in-process run
does, connects to its neighbours with :class:`~clicooper.net.GrpcTransport` and runs the same state
machines (``DataOwner`` / ``Trainer``) and the same round loop (:func:`clicooper.core.rounds.run_round`).
This module holds what both roles share (:class:`Node`); the roles are
:class:`~clicooper.net.do_node.DataOwnerNode` (it drives: per step ``start_step`` → send → receive and
``handle`` until ``step_done``) and :class:`~clicooper.net.trainer_node.TrainerNode`.

Round protocol (all node-level records are typed ``Control`` messages, :mod:`clicooper.net.node_records`;
the party objects never see them):

1. every trainer sends ``node-hello {completed}`` (rounds it has checkpointed) to the DO;
2. the DO rolls everybody back to ``R = min(completed)`` of all parties (itself included): it loads its
   checkpoint of round ``R-1`` and sends ``node-start {round: R}``; each trainer loads the same round and
   answers ``node-ready``. A killed party therefore costs at most the round in flight, and every party
   restarts from the same committed boundary, so the resumed run reaches the same weights;
3. after the last step of round ``r`` the DO sends ``node-round-end {round: r}``; each trainer writes its
   checkpoint (weights + optimizer, safetensors) and its model file, then answers ``node-round-saved``;
   then the DO writes its own. A party is at most one round ahead of another, and every party keeps its
   older round checkpoints, so ``R-1`` always exists where needed;
4. after the last round (and the ledger's closing) the DO collects the trainers' final segments in band
   (:mod:`clicooper.net.delivery`: ``node-deliver`` → ``node-segment`` … ``node-segment-end``), checks each
   against its plan and the ledger's final commitment and writes it into its own ``model/``; it then marks
   its run directory finished (``state.json {"finished": true}``) and sends ``shutdown``; every trainer
   marks its own finished, flushes and exits 0. A node started again on a finished run directory stops
   with "the run is closed, nothing to resume" and changes nothing.

Progress goes to stdout as JSON lines (``{"event": "step", "party": …, "round": …, "step": …}``), which
``clicooper launch`` reads. With ``provenance: true`` every node keeps its own ledger copy and signs its own
stage entries with its own key (:mod:`clicooper.net.node_ledger`): the genesis is agreed after step 1, the
stage entries are exchanged in position order before step 3's checkpoints, the closing before step 4.
"""

from __future__ import annotations

import json
import os
import resource
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from clicooper import jsonbound, rundir
from clicooper.config import RunConfig
from clicooper.core.builder import neighbours, party_names
from clicooper.core.checkpoint import (
    completed_rounds,
    load_checkpoint,
    run_finished,
    save_checkpoint,
    save_model_files,
    write_state,
)
from clicooper.errors import ConfigError, RunDirError, WireError
from clicooper.net.builder import (
    NodeParty,
    check_node_config,
    cut_shapes,
    load_run_config,
    read_plan,
    run_id_for,
    shape_table,
)
from clicooper.net.certs import PartyCert, read_ledger_keys
from clicooper.net.grpc_transport import GrpcTransport
from clicooper.net.node_ledger import NodeLedger
from clicooper.net.node_records import NodeRecord
from clicooper.net.serde import WireLimits
from clicooper.net.tls import TlsConfig
from clicooper.protocol.messages import Message
from clicooper.provenance.ledger import Ledger

FINGERPRINTS = "fingerprints.json"


@dataclass
class NodeOptions:
    """Everything ``clicooper node`` takes (see :func:`run_node`)."""

    config: Path
    party: str
    run_dir: Path
    listen: str
    peers: dict[str, str]
    certs: Path | None = None
    key: Path | None = None
    identity: Path | None = None  # Ed25519 ledger key (default RUN_DIR/keys/<party>.key, made if missing)
    insecure_loopback: bool = False
    plan: Path | None = None
    connect_timeout_s: float = 30.0
    idle_timeout_s: float = 300.0
    threads: int | None = 1
    device: str | None = None  # this node's device (auto, cpu, cuda); default: the config's for this party
    dataset: str | None = None  # the DO's own data, named on its own command line (python:pkg.module:fn)
    max_epsilon: float | None = None  # DO: stop cleanly before a round that would exceed this ε (core/budget.py)
    dismiss_detection: bool = False  # DO: live detection off for this invocation (after reviewing an accusation)
    events: TextIO | None = field(default=None, repr=False)


def parse_peers(text: str) -> dict[str, str]:
    """``"T1=127.0.0.1:7001,T2=[::1]:7002"`` → ``{"T1": "127.0.0.1:7001", …}``."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, addr = item.partition("=")
        if not sep or not name or not addr:
            raise ConfigError(f"--peers entry {item!r} is not name=host:port (e.g. T1=10.0.0.2:7001)")
        out[name.strip()] = addr.strip()
    return out


# ---------------------------------------------------------------------------------------------- TLS set-up
def load_tls(certs: Path, party: str, key: Path | None, peers: list[str]) -> tuple[TlsConfig, dict[str, str]]:
    """Pinned TLS for ``party`` from a ``clicooper certs`` folder; returns it and the whole pin table.

    ``key`` is this party's private key (default ``certs/<party>.key``); it must belong to
    ``certs/<party>.crt``, which must carry the fingerprint of ``fingerprints.json``.
    """
    fp_file = Path(certs) / FINGERPRINTS
    if not fp_file.is_file():
        raise ConfigError(f"{fp_file} is missing: assemble the run's certificates (`clicooper certs assemble --out "
                          f"{certs} CARD…`, or on one machine `clicooper certs RUN_CONFIG --local --out {certs}`)")
    try:
        pinned = jsonbound.load_file(fp_file, max_bytes=1 << 20)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {fp_file}: {e}; make the set again (`clicooper certs assemble`)") from None
    if not isinstance(pinned, dict) or not all(isinstance(v, str) for v in pinned.values()):
        raise ConfigError(f"{fp_file} must map party names to certificate fingerprints")
    missing = [n for n in [party, *peers] if n not in pinned]
    if missing:
        raise ConfigError(f"{fp_file} pins no certificate for {', '.join(missing)}: assemble the set again (`clicooper certs assemble`)")
    key_path = Path(key) if key is not None else Path(certs) / f"{party}.key"
    try:
        cert_pem = (Path(certs) / f"{party}.crt").read_bytes()
        key_pem = key_path.read_bytes()
        peer_pems = {p: (Path(certs) / f"{p}.crt").read_bytes() for p in peers}
    except OSError as e:
        raise ConfigError(f"cannot read a certificate or key of {party}: {e}; pass --certs DIR from `clicooper certs` "
                          "and --key with this party's own key") from e
    try:
        priv = serialization.load_pem_private_key(key_pem, password=None)
        pub = x509.load_pem_x509_certificate(cert_pem).public_key()
    except (ValueError, TypeError) as e:
        raise ConfigError(f"--key {key_path} is not an unencrypted PEM private key ({e}): pass {party}'s key "
                          "from `clicooper certs`") from e
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if priv.public_key().public_bytes(*fmt) != pub.public_bytes(*fmt):
        raise ConfigError(f"wrong key: {key_path} does not belong to the certificate of {party} "
                          f"({certs}/{party}.crt); pass {party}'s own key (--key)")
    identity = PartyCert(party, cert_pem, key_pem)
    tls = TlsConfig.from_certs(identity, peer_pems, pinned={n: pinned[n] for n in [party, *peers]})
    return tls, {str(k): str(v) for k, v in pinned.items()}


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: ``VmHWM`` of /proc/self/status (of this program only;
    ``ru_maxrss`` would also count the parent's memory at fork time), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------- run state
def check_run_open(run_dir: Path, party: str, *, provenance: bool) -> None:
    """Refuse to start on a run directory whose run is over ("expired session"); reads, never writes.

    Over = marked finished (the DO: every segment received and checked; a trainer: ``shutdown`` received
    after delivering) and, with provenance, the ledger copy holds the closing entry. A closed ledger whose
    delivery was cut short is NOT over: the nodes resume and deliver again.
    """
    run_dir = Path(run_dir)
    if not run_finished(run_dir):
        return
    what = "it finished"
    if provenance and (run_dir / rundir.LEDGER).is_file():
        led = Ledger.open(run_dir / rundir.LEDGER, repair=False)
        if not led.closed:
            return
        what = f"its ledger {run_dir / rundir.LEDGER} holds the closing entry ({led.rounds_completed} rounds)"
    raise RunDirError(f"{party}: the run in {run_dir} is closed — {what} and the trainers' segments were "
                      "delivered — so there is nothing to resume; start a new run with a fresh --run-dir for "
                      "every node (and new certificates: `clicooper certs --party NAME` per party)")


# ---------------------------------------------------------------------------------------------- the node
class Node(ABC):
    """What both roles share: options, config, plan, TLS, transport, run directory, events, messaging.

    Construction checks everything a user can get wrong (party, peers, certificates, a closed run) before
    anything is started; :func:`run_node` builds the role and runs it.
    """

    def __init__(self, opts: NodeOptions):
        self.opts = opts
        if opts.threads:
            torch.set_num_threads(opts.threads)
        given = load_run_config(opts.config)
        names = party_names(given)
        if opts.party not in names:
            raise ConfigError(f"--party {opts.party} is not a party of this run; choose one of {', '.join(names)}")
        self.name = opts.party
        if opts.dataset is not None and opts.party != "DO":
            raise ConfigError(f"--dataset names the data owner's own data; {opts.party} is a trainer and never "
                              "loads data: drop --dataset")
        if opts.device not in (None, "auto", "cpu", "cuda"):
            raise ConfigError(f"--device {opts.device} is not a device; use auto, cpu or cuda")
        self.peers = neighbours(given, self.name)
        missing = [p for p in self.peers if p not in opts.peers]
        if missing:
            raise ConfigError(f"--peers lacks {', '.join(missing)}: {self.name} talks to {', '.join(self.peers)}; "
                              "give name=host:port for each")
        check_run_open(Path(opts.run_dir), self.name, provenance=bool(given.provenance))
        check_node_config(given)
        if self.name != "DO" and (opts.max_epsilon is not None or opts.dismiss_detection):
            raise ConfigError(f"--max-epsilon and --dismiss-detection are the DO's options (it drives the rounds); "
                              f"drop them from {self.name}'s command")
        if opts.insecure_loopback:
            self.tls, self.pins = None, {}
        else:
            if opts.certs is None:
                raise ConfigError("--certs DIR is required (made by `clicooper certs`), or --insecure-loopback for a "
                                  "plaintext run on 127.0.0.1 only")
            self.tls, self.pins = load_tls(opts.certs, self.name, opts.key, self.peers)
        # an assembled set (`clicooper certs assemble`) pins every party's ledger key as well
        self.ledger_keys = read_ledger_keys(opts.certs) if opts.certs is not None and not opts.insecure_loopback \
            else None
        self.given = given
        self.run_dir = Path(opts.run_dir)
        plan_file = opts.plan or (Path(opts.config).parent / rundir.PLAN)
        self.plan_file: Path | None = plan_file if plan_file.is_file() else None
        if self.plan_file is None and opts.plan is not None:
            raise ConfigError(f"--plan {plan_file} not found; pass the run's plan.json")

    def plan_and_meta(self) -> tuple[Any, Any]:
        """(the run's plan, its input shape / classes) from the plan file, or (None, None) without one."""
        return read_plan(self.plan_file) if self.plan_file is not None else (None, None)

    def attach(self, node: NodeParty, config: RunConfig) -> None:
        """The built party: its transport, run id and (with provenance) its ledger copy."""
        self.node, self.config = node, config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id_for(self.given, self.pins, node.plan)
        limit_bs = self.given.batch_size or max(128, self.given.micro_batches)
        det = self.given.detection
        if det.enabled and det.validation.enabled:  # the DO's validation queries carry this many rows at once
            limit_bs = max(limit_bs, det.validation.rows)
        self.transport = GrpcTransport(
            self.name, run_id=self.run_id, listen=self.opts.listen,
            peers={p: self.opts.peers[p] for p in self.peers}, tls=self.tls,
            insecure_loopback=self.opts.insecure_loopback,
            limits=WireLimits.for_shapes(cut_shapes(node.plan, limit_bs)),
            expected_shapes=shape_table(node.plan, self.given), connect_timeout_s=self.opts.connect_timeout_s,
        )
        self.prov: NodeLedger | None = None
        if self.given.provenance:
            self.prov = NodeLedger(self.name, config, node.plan, node.modules, node.party, self.run_dir,
                                   self.opts.identity, pinned_keys=self.ledger_keys)

    # -- events and messaging -------------------------------------------------------------------------
    def emit(self, event: str, **fields: Any) -> None:
        """One JSON line on the events stream (stdout for ``clicooper node``)."""
        if self.opts.events is not None:
            self.opts.events.write(json.dumps({"event": event, "party": self.name, **fields}) + "\n")
            self.opts.events.flush()

    def send(self, to: str, record: NodeRecord, r: int = 0) -> None:
        """Send a node record to ``to`` (round ``r`` in its header)."""
        self.transport.send(record.to_control(self.name, to, r))

    def recv(self, waiting_for: str) -> Message:
        """Next message, or a :class:`WireError` after ``idle_timeout_s`` of silence."""
        end = time.monotonic() + self.opts.idle_timeout_s
        while True:
            msg = self.transport.recv(timeout=min(1.0, max(0.01, end - time.monotonic())))
            if msg is not None:
                return msg
            if time.monotonic() >= end:
                stuck = "".join(f"; {p} has not acknowledged {n} message(s)"
                                for p, n in self.transport.unacknowledged().items())
                raise WireError(
                    f"{self.name} received nothing for {self.opts.idle_timeout_s:.0f} s while waiting for "
                    f"{waiting_for}{stuck}: a peer is down or stuck; stop every node and start them all again "
                    "(they resume from the last round every party checkpointed)")

    # -- checkpoints ----------------------------------------------------------------------------------
    def save_round(self, r: int) -> None:
        """Checkpoint after round ``r`` (weights + optimizer), this party's model file(s), ``state.json``."""
        n = self.node
        save_checkpoint(self.run_dir, r, [n.party])
        save_model_files(self.run_dir, self.config, n.plan, n.modules, r + 1, n.own_plan_entries)
        write_state(self.run_dir, r + 1)

    def rollback(self, r_start: int) -> None:
        """Load the checkpoint of round ``r_start - 1`` (nothing to load for round 0: fresh weights)."""
        if r_start > 0:
            load_checkpoint(self.run_dir, r_start - 1, [self.node.party])
        write_state(self.run_dir, r_start)

    def completed(self) -> int:
        """Rounds this party has checkpointed."""
        return completed_rounds(self.run_dir)

    # -- the role -------------------------------------------------------------------------------------
    @abstractmethod
    def play(self) -> dict[str, Any]:
        """The role's protocol (:class:`~clicooper.net.do_node.DataOwnerNode`,
        :class:`~clicooper.net.trainer_node.TrainerNode`); returns its summary."""

    def run(self) -> dict[str, Any]:
        """Start the transport, play the role, flush and close; returns a summary."""
        t0 = time.monotonic()
        with self.transport.start():
            self.emit("listening", address=self.transport.address, pid=os.getpid())
            out = self.play()
            self.transport.run_until_idle(timeout=self.opts.connect_timeout_s)
        out["seconds"] = time.monotonic() - t0
        out["max_rss_mb"] = peak_rss_mb()
        self.emit("done", **out)
        return out
