"""One party as its own process: ``clicooper node`` (DESIGN §6; docs/network.md "Nodes").

The node builds its party exactly as the in-process :class:`~clicooper.training.loop.Session` does
(:mod:`clicooper.net.builder`), connects to its neighbours with :class:`~clicooper.net.GrpcTransport` and
runs the same state machines (``DataOwner`` / ``Trainer``). The data owner drives: per step
``start_step`` → send → receive and ``handle`` until ``step_done``.

Round protocol (all node-level records are ``Control`` messages with kinds ``node-*``; the party objects
never see them):

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
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from clicooper import rundir
from clicooper.errors import ConfigError, LedgerError, RunDirError, WireError
from clicooper.net.builder import (
    NodeParty,
    build_party,
    cut_shapes,
    dataset_meta,
    load_run_config,
    neighbours,
    party_names,
    read_plan,
    run_id_for,
    shape_table,
)
from clicooper.net.delivery import (
    DELIVER,
    SEGMENT,
    SEGMENT_END,
    ExpectedSegment,
    SegmentInbox,
    chunk_bytes,
    segment_payloads,
)
from clicooper.net.grpc_transport import GrpcTransport
from clicooper.net.node_ledger import (
    CLOSE,
    CLOSE_SIG,
    ENTRY,
    GENESIS,
    GENESIS_PROPOSE,
    GENESIS_SIG,
    STAGE,
    NodeLedger,
    genesis_from_wire,
    wire_entry,
)
from clicooper.net.serde import WireLimits
from clicooper.net.tls import TlsConfig
from clicooper.protocol.messages import Control, Header, Message
from clicooper.provenance.entries import Closing
from clicooper.runs import model_file
from clicooper.training.loop import epoch_order

HELLO, START, READY, ROUND_END, ROUND_SAVED, SHUTDOWN = (
    "node-hello", "node-start", "node-ready", "node-round-end", "node-round-saved", "shutdown")
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
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from clicooper.net.certs import PartyCert

    fp_file = Path(certs) / FINGERPRINTS
    if not fp_file.is_file():
        raise ConfigError(f"{fp_file} is missing: create the run's certificates with `clicooper certs RUN_CONFIG --out {certs}`")
    pinned = json.loads(fp_file.read_text("utf-8"))
    missing = [n for n in [party, *peers] if n not in pinned]
    if missing:
        raise ConfigError(f"{fp_file} pins no certificate for {', '.join(missing)}: regenerate with `clicooper certs`")
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


# ---------------------------------------------------------------------------------------------- checkpoints
def completed_rounds(run_dir: Path) -> int:
    """Rounds this party has checkpointed (``state.json``), 0 for a fresh run directory."""
    f = Path(run_dir) / rundir.STATE
    return int(rundir.read_json(f)["completed_rounds"]) if f.is_file() else 0


def save_round(node: NodeParty, run_dir: Path, r: int) -> None:
    """Checkpoint after round ``r`` (weights + optimizer, as ``Session.save_checkpoint``) + model file(s)."""
    p = node.party
    d = run_dir / rundir.CHECKPOINTS / f"round_{r}"
    rundir.save_tensors(d / f"{p.name}.weights.safetensors", p.module.state_dict(), {"round": str(r)})
    t, meta = rundir.optimizer_tensors(p.optimizer)
    rundir.save_tensors(d / f"{p.name}.optim.safetensors", t, meta)
    save_model_files(node, run_dir, r + 1)
    rundir.write_json(run_dir / rundir.STATE, {"completed_rounds": r + 1})


def load_round(node: NodeParty, run_dir: Path, r: int) -> None:
    """Inverse of :func:`save_round` (weights + optimizer of round ``r``)."""
    p = node.party
    d = run_dir / rundir.CHECKPOINTS / f"round_{r}"
    rundir.load_state_into(p.module, d / f"{p.name}.weights.safetensors")
    t, meta = rundir.load_tensors(d / f"{p.name}.optim.safetensors")
    try:
        rundir.restore_optimizer(p.optimizer, t, meta)
    except (ValueError, KeyError, RuntimeError) as e:
        raise RunDirError(f"optimizer checkpoint of {p.name} in {d} is corrupt: {e}") from e


def model_file_metadata(node: NodeParty, entry: str, epoch: int) -> dict[str, str]:
    """Metadata of plan entry ``entry``'s model file (as an in-process run writes it)."""
    pp = node.plan.party(entry)
    return {"party": entry, "position": str(pp.position), "model": node.config.model, "epoch": str(epoch),
            "layers": json.dumps(pp.layers)}


def save_model_files(node: NodeParty, run_dir: Path, epoch: int) -> None:
    """This party's delivered weights in ``model/`` (same files and metadata as an in-process run)."""
    for entry in node.own_plan_entries:
        rundir.save_tensors(run_dir / rundir.MODEL_DIR / model_file(entry), node.modules[entry].state_dict(),
                            model_file_metadata(node, entry, epoch))


def run_finished(run_dir: Path) -> bool:
    """Whether this party's run directory is marked finished (segments delivered, ``shutdown`` done)."""
    f = Path(run_dir) / rundir.STATE
    return f.is_file() and bool(rundir.read_json(f).get("finished", False))


def mark_finished(run_dir: Path, rounds: int) -> None:
    rundir.write_json(Path(run_dir) / rundir.STATE, {"completed_rounds": rounds, "finished": True})


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
        from clicooper.provenance.ledger import Ledger

        led = Ledger.open(run_dir / rundir.LEDGER, repair=False)
        if not led.closed:
            return
        what = f"its ledger {run_dir / rundir.LEDGER} holds the closing entry ({led.rounds_completed} rounds)"
    raise RunDirError(f"{party}: the run in {run_dir} is closed — {what} and the trainers' segments were "
                      "delivered — so there is nothing to resume; start a new run with a fresh --run-dir for "
                      "every node (and new certificates: `clicooper certs RUN_CONFIG`)")


# ---------------------------------------------------------------------------------------------- the node
class Node:
    """A built party, its transport and its run directory. :meth:`run` is the whole node."""

    def __init__(self, opts: NodeOptions):
        self.opts = opts
        if opts.threads:
            torch.set_num_threads(opts.threads)
        given = load_run_config(opts.config)
        names = party_names(given)
        if opts.party not in names:
            raise ConfigError(f"--party {opts.party} is not a party of this run; choose one of {', '.join(names)}")
        self.name = opts.party
        self.peers = neighbours(given, self.name)
        missing = [p for p in self.peers if p not in opts.peers]
        if missing:
            raise ConfigError(f"--peers lacks {', '.join(missing)}: {self.name} talks to {', '.join(self.peers)}; "
                              "give name=host:port for each")
        check_run_open(Path(opts.run_dir), self.name, provenance=bool(given.provenance))
        if opts.insecure_loopback:
            tls, pins = None, {}
        else:
            if opts.certs is None:
                raise ConfigError("--certs DIR is required (made by `clicooper certs`), or --insecure-loopback for a "
                                  "plaintext run on 127.0.0.1 only")
            tls, pins = load_tls(opts.certs, self.name, opts.key, self.peers)
        self.run_dir = Path(opts.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        plan_file = opts.plan or (Path(opts.config).parent / rundir.PLAN)
        plan = meta = None
        if plan_file.is_file():
            plan, meta = read_plan(plan_file)
        elif opts.plan is not None:
            raise ConfigError(f"--plan {plan_file} not found; pass the run's plan.json")
        if self.name == "DO":
            from clicooper.data import load_dataset
            from clicooper.training.privacy_hooks import build_privacy

            ds = load_dataset(given.dataset)
            self.config = given.resolved(len(ds.train_ids(given.train_range)), dataset=ds)
            new_run = completed_rounds(self.run_dir) == 0 and not (self.run_dir / rundir.SECRETS).exists()
            privacy = build_privacy(self.config, self.run_dir, ds, new_run=new_run)
            self.node = build_party(self.config, "DO", dataset=ds, privacy=privacy, plan=plan)
        else:
            self.config = given
            if meta is None:
                _, meta = dataset_meta(given, None)
            self.node = build_party(given, self.name, meta=meta, plan=plan)
        self.run_id = run_id_for(given, pins, self.node.plan)
        limit_bs = given.batch_size or max(128, given.micro_batches)
        self.transport = GrpcTransport(
            self.name, run_id=self.run_id, listen=opts.listen, peers={p: opts.peers[p] for p in self.peers},
            tls=tls, insecure_loopback=opts.insecure_loopback,
            limits=WireLimits.for_shapes(cut_shapes(self.node.plan, limit_bs)),
            expected_shapes=shape_table(self.node.plan, given), connect_timeout_s=opts.connect_timeout_s,
        )
        self._last_step_event = 0.0
        self.pins = pins
        self.prov: NodeLedger | None = None
        if given.provenance:
            n = self.node
            self.prov = NodeLedger(self.name, self.config, n.plan, n.modules, n.party, self.run_dir, opts.identity)

    # -- events ---------------------------------------------------------------------------------------
    def emit(self, event: str, **fields: Any) -> None:
        """One JSON line on the events stream (stdout for ``clicooper node``)."""
        if self.opts.events is not None:
            self.opts.events.write(json.dumps({"event": event, "party": self.name, **fields}) + "\n")
            self.opts.events.flush()

    # -- messaging ------------------------------------------------------------------------------------
    def ctl(self, to: str, kind: str, r: int = 0, **payload: Any) -> None:
        self.transport.send(Control(Header(self.name, to, max(0, r), 0), kind, {k: str(v) for k, v in payload.items()}))

    def recv(self, waiting_for: str) -> Message:
        """Next message, or a :class:`WireError` after ``idle_timeout_s`` of silence."""
        end = time.monotonic() + self.opts.idle_timeout_s
        while True:
            msg = self.transport.recv(timeout=min(1.0, max(0.01, end - time.monotonic())))
            if msg is not None:
                return msg
            if time.monotonic() >= end:
                raise WireError(
                    f"{self.name} received nothing for {self.opts.idle_timeout_s:.0f} s while waiting for "
                    f"{waiting_for}: a peer is down or stuck; stop every node and start them all again "
                    "(they resume from the last round every party checkpointed)")

    def rollback(self, r_start: int) -> None:
        """Load the checkpoint of round ``r_start - 1`` (nothing to load for round 0: fresh weights)."""
        if r_start > 0:
            load_round(self.node, self.run_dir, r_start - 1)
        rundir.write_json(self.run_dir / rundir.STATE, {"completed_rounds": r_start})

    # -- roles ----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Start the transport, play the role, flush and close; returns a summary."""
        t0 = time.monotonic()
        with self.transport.start():
            self.emit("listening", address=self.transport.address)
            out = self._run_do() if self.name == "DO" else self._run_trainer()
            self.transport.run_until_idle(timeout=self.opts.connect_timeout_s)
        out["seconds"] = time.monotonic() - t0
        self.emit("done", **out)
        return out

    def _run_trainer(self) -> dict[str, Any]:
        party = self.node.party
        hello: dict[str, Any] = {"completed": completed_rounds(self.run_dir)}
        if self.prov is not None:
            hello |= {"public_key": self.prov.identity.public_key.hex(), "entries": self.prov.count()}
        self.ctl("DO", HELLO, **hello)
        steps_before = party.steps_taken
        while True:
            msg = self.recv("the data owner" if steps_before == party.steps_taken else "activations or gradients")
            if isinstance(msg, Control) and msg.header.sender == "DO" and (msg.kind.startswith("node-") or msg.kind == SHUTDOWN):
                r = int(msg.payload.get("round", "0"))
                if msg.kind == START:
                    self.rollback(r)
                    if self.prov is not None and r < self.config.epochs:
                        self.prov.round_start(r)
                    self.emit("start", round=r, epochs=int(msg.payload["epochs"]), steps=int(msg.payload["steps"]))
                    self.ctl("DO", READY, r)
                elif msg.kind == ROUND_END:
                    if self.prov is not None:
                        self.prov.round_end_hooks_off()
                    save_round(self.node, self.run_dir, r)
                    if self.prov is not None and r + 1 < self.config.epochs:
                        self.prov.round_start(r + 1)
                    self.emit("round", round=r)
                    self.ctl("DO", ROUND_SAVED, r, round=r)
                elif self.prov is not None and msg.kind in (GENESIS_PROPOSE, GENESIS, STAGE, ENTRY, CLOSE):
                    self._trainer_ledger(msg, r)
                elif msg.kind == DELIVER:
                    self._deliver(msg)
                elif msg.kind == SHUTDOWN:
                    done = completed_rounds(self.run_dir)
                    if done >= self.config.epochs:
                        mark_finished(self.run_dir, done)
                    return {"steps": party.steps_taken, "completed_rounds": done}
                else:
                    raise WireError(f"{self.name}: unexpected {msg.kind} from the DO")
                continue
            n0 = party.steps_taken
            for reply in party.handle(msg):
                self.transport.send(reply)
            if party.steps_taken != n0:
                self.emit("step", round=msg.header.epoch, step=msg.header.step)

    def _trainer_ledger(self, msg: Control, r: int) -> None:
        """Ledger records from the DO (see :mod:`clicooper.net.node_ledger`)."""
        prov = self.prov
        assert prov is not None
        if msg.kind == GENESIS_PROPOSE:
            self.ctl("DO", GENESIS_SIG, signature=prov.sign_genesis(msg.payload["genesis"]))
        elif msg.kind == GENESIS:
            prov.create(genesis_from_wire(msg.payload["entry"]))
            self.emit("ledger", entries=prov.count())
        elif msg.kind == STAGE:
            entry, _ = prov.own_stage(r, int(msg.payload["position"]))
            self.ctl("DO", ENTRY, r, entry=wire_entry(entry))
        elif msg.kind == ENTRY:
            prov.accept(msg)
        elif msg.kind == CLOSE:
            self.ctl("DO", CLOSE_SIG, r, signature=prov.closing_signature())

    def _deliver(self, msg: Control) -> None:
        """Send this party's final segment file (the one at ``position``) to the DO in chunks."""
        try:
            position = int(msg.payload["position"])
        except (KeyError, ValueError) as e:
            raise WireError(f"{self.name}: {DELIVER} from the DO names no position") from e
        entries = [e for e in self.node.own_plan_entries if self.node.plan.party(e).position == position]
        if not entries:
            raise WireError(f"{self.name}: the DO asks for position {position}, which {self.name} does not hold: "
                            "every party must run the same config and plan.json")
        entry, done = entries[0], completed_rounds(self.run_dir)
        if done < self.config.epochs:
            raise WireError(f"{self.name}: the DO asks for the final segment, but only {done} of "
                            f"{self.config.epochs} rounds are checkpointed here; restart every node")
        f = self.run_dir / rundir.MODEL_DIR / model_file(entry)
        if not f.is_file():  # e.g. deleted by hand: the weights in memory are those of the last checkpoint
            save_model_files(self.node, self.run_dir, done)
        data = f.read_bytes()
        chunk = chunk_bytes(self.transport.limits)
        for kind, payload in segment_payloads(data, position=position, file=model_file(entry), chunk=chunk):
            self.ctl("DO", kind, self.config.epochs, **payload)
        self.emit("delivered", position=position, bytes=len(data))

    def _wait_all(self, kind: str, parties: list[str], on_other: Callable[[Message], None]) -> dict[str, Control]:
        got: dict[str, Control] = {}
        while len(got) < len(parties):
            msg = self.recv(f"{kind} from {', '.join(p for p in parties if p not in got)}")
            if isinstance(msg, Control) and msg.kind == kind and msg.header.sender in parties:
                got[msg.header.sender] = msg
            else:
                on_other(msg)
        return got

    def _do_handle(self, msg: Message) -> None:
        if isinstance(msg, Control) and (msg.kind.startswith("node-") or msg.kind == SHUTDOWN):
            raise WireError(f"DO: unexpected {msg.kind} from {msg.header.sender} during training")
        for reply in self.node.party.handle(msg):
            self.transport.send(reply)

    def _run_do(self) -> dict[str, Any]:
        do, cfg = self.node.party, self.config
        trainers = self.peers
        self.transport.wait_for_peers(timeout=self.opts.connect_timeout_s)
        hellos = self._wait_all(HELLO, trainers, self._do_handle)
        done = {p: int(m.payload.get("completed", "0")) for p, m in hellos.items()} | {"DO": completed_rounds(self.run_dir)}
        r0 = min(min(done.values()), cfg.epochs)
        if self.prov is not None:
            self._do_genesis(hellos)
        train_ids = self.node.dataset.train_ids(cfg.train_range)
        bs = cfg.batch_size
        assert bs is not None  # resolved above
        steps = (len(train_ids) + bs - 1) // bs
        self.rollback(r0)
        metrics_file = self.run_dir / rundir.METRICS
        metrics = rundir.read_json(metrics_file) if metrics_file.is_file() else {"epochs": []}
        metrics["epochs"] = [m for m in metrics["epochs"] if m["epoch"] <= r0]
        if r0 == 0:
            rundir.write_json(self.run_dir / rundir.CONFIG, cfg.model_dump(mode="json"))
            from dataclasses import asdict

            rundir.write_json(self.run_dir / rundir.PLAN, asdict(self.node.plan))
        for p in trainers:
            self.ctl(p, START, r0, round=r0, epochs=cfg.epochs, steps=steps)
        self._wait_all(READY, trainers, self._do_handle)
        self.emit("start", round=r0, epochs=cfg.epochs, steps=steps, rolled_back_from=done)
        for r in range(r0, cfg.epochs):
            if self.prov is not None:
                self.prov.round_start(r)
            order = epoch_order(train_ids, seed=cfg.seed, epoch=r)
            t0 = time.perf_counter()
            for s in range(steps):
                for m in do.start_step(r, s, order[s * bs : (s + 1) * bs]):
                    self.transport.send(m)
                while not do.step_done:
                    self._do_handle(self.recv(f"the replies of step {s} of round {r}"))
                self.emit("step", round=r, step=s, steps=steps)
            secs = time.perf_counter() - t0
            prov_report = self._do_round_ledger(r) if self.prov is not None else None
            for p in trainers:
                self.ctl(p, ROUND_END, r, round=r)
            self._wait_all(ROUND_SAVED, trainers, self._do_handle)
            save_round(self.node, self.run_dir, r)
            stats = do.take_stats()
            m = {"epoch": r + 1, "loss": stats.loss_sum / max(1, stats.count),
                 "train_acc": stats.correct / max(1, stats.count), "seconds": secs,
                 "samples_per_s": len(order) / secs if secs > 0 else 0.0, "transport": "grpc"}
            if prov_report is not None:
                m["provenance"] = prov_report
            metrics["epochs"].append(m)
            rundir.write_json(metrics_file, metrics)
            self.emit("round", round=r, loss=m["loss"], train_acc=m["train_acc"], seconds=secs)
        if self.prov is not None:
            self._do_close()
        self._do_collect_segments()
        mark_finished(self.run_dir, cfg.epochs)
        for p in trainers:
            self.ctl(p, SHUTDOWN, cfg.epochs)
        return {"steps": do.steps_taken, "completed_rounds": cfg.epochs, "resumed_from": r0}


    # -- ledger (DO side; protocol in clicooper.net.node_ledger) -----------------------------------------
    def _do_genesis(self, hellos: dict[str, Control]) -> None:
        """Agree on the signed genesis (new run) and bring every trainer's copy up to the DO's."""
        prov = self.prov
        assert prov is not None
        trainers = self.peers
        if prov.ledger is None:
            keys = {}
            for p, m in hellos.items():
                if int(m.payload.get("entries", "0")) > 0:
                    raise WireError(f"{p} holds a ledger but the DO has none in {self.run_dir}: restore the DO's "
                                    "ledger.jsonl, or start every party with a fresh run directory")
                try:
                    keys[p] = bytes.fromhex(m.payload["public_key"])
                except (KeyError, ValueError) as e:
                    raise WireError(f"{p}'s node-hello carries no public key: run every node with provenance on") from e
            n = self.node
            assert n.model is not None and n.dataset is not None
            body = prov.propose_genesis(keys, n.dataset, n.dataset.train_ids(self.config.train_range), n.model,
                                        self.pins or None)
            for p in trainers:
                self.ctl(p, GENESIS_PROPOSE, genesis=json.dumps(body.to_json()))
            sigs = self._wait_all(GENESIS_SIG, trainers, self._do_handle)
            prov.create(prov.assemble_genesis(body, {p: m.payload["signature"] for p, m in sigs.items()}))
            self.emit("ledger", entries=prov.count())
        assert prov.ledger is not None
        entries = prov.ledger.entries
        for p, m in hellos.items():  # catch-up: entries a restarted trainer lacks (same link, checked there)
            have = int(m.payload.get("entries", "0"))
            if have == 0:
                self.ctl(p, GENESIS, 0, entry=wire_entry(entries[0]))
                have = 1
            for e in entries[have:]:
                self.ctl(p, ENTRY, 0, entry=wire_entry(e))

    def _do_round_ledger(self, r: int) -> dict[str, Any]:
        """Round end: stage entries in position order, each drafted by its owner, checked and relayed."""
        prov = self.prov
        assert prov is not None
        prov.round_end_hooks_off()
        report: dict[str, Any] = {}
        for pos in prov.positions:
            if pos.owner == self.name:
                entry, rep = prov.own_stage(r, pos.position)
                report[str(pos.position)] = rep
                text, skip = wire_entry(entry), None
            else:
                self.ctl(pos.owner, STAGE, r, round=r, position=pos.position)
                got = self._wait_all(ENTRY, [pos.owner], self._do_handle)[pos.owner]
                prov.accept(got, expect=(r, pos.position))
                text, skip = got.payload["entry"], pos.owner
                report[str(pos.position)] = {"party": pos.plan_party, **{
                    k: v for k, v in json.loads(text)["metrics"].items() if k == "extra_watermark_steps"}}
            for p in self.peers:
                if p != skip:
                    self.ctl(p, ENTRY, r, entry=text)
        return report

    def expected_segments(self) -> list[ExpectedSegment]:
        """DO: what each trainer position must deliver (names/shapes/dtypes from its own copy of the initial
        model, the model file's metadata, and with provenance the closing entry's final commitment)."""
        final: dict[str, str] | None = None
        if self.prov is not None:
            led = self.prov.ledger
            if led is None or not led.closed:
                raise LedgerError("the DO's ledger is not closed: the segments are checked against the closing "
                                  "entry's final commitments; restart every node to finish the run")
            closing = led.entries[-1]
            assert isinstance(closing, Closing)
            final = dict(closing.final_commitments)
        out = []
        for pp in sorted(self.node.plan.parties, key=lambda x: x.position):
            if pp.party.startswith("DO"):
                continue
            commit = None
            if final is not None:
                commit = final.get(str(pp.position))
                if commit is None:
                    raise LedgerError(f"the closing entry holds no final commitment for position {pp.position} "
                                      f"({pp.party}): the ledger is not of this plan")
            out.append(ExpectedSegment.of_state(
                pp.party, pp.position, model_file(pp.party), self.node.modules[pp.party].state_dict(),
                model_file_metadata(self.node, pp.party, self.config.epochs), commit))
        return out

    def _do_collect_segments(self) -> None:
        """DO: ask every trainer for its final segment, check each (:mod:`clicooper.net.delivery`) and write it
        atomically into this node's ``model/``; a refused segment stops the node and nothing of it is kept."""
        expected = self.expected_segments()
        inbox = SegmentInbox(expected, max_chunk=chunk_bytes(self.transport.limits))
        for e in expected:
            self.ctl(e.trainer, DELIVER, self.config.epochs, round=self.config.epochs, position=e.position,
                     file=e.file)
        while not inbox.done:
            msg = self.recv(f"the final segments of {', '.join(inbox.missing)}")
            if isinstance(msg, Control) and msg.kind in (SEGMENT, SEGMENT_END):
                got = inbox.feed(msg)
                if got is not None:
                    exp, data, _ = got
                    rundir.atomic_write_bytes(self.run_dir / rundir.MODEL_DIR / exp.file, data)
                    self.emit("segment", trainer=exp.trainer, position=exp.position, bytes=len(data))
            else:
                self._do_handle(msg)

    def _do_close(self) -> None:
        prov = self.prov
        assert prov is not None and prov.ledger is not None
        if prov.ledger.closed:
            return
        for p in self.peers:
            self.ctl(p, CLOSE, self.config.epochs)
        sigs = self._wait_all(CLOSE_SIG, self.peers, self._do_handle)
        closing = prov.close({p: m.payload["signature"] for p, m in sigs.items()})
        for p in self.peers:
            self.ctl(p, ENTRY, self.config.epochs, entry=wire_entry(closing))
        self.emit("ledger", entries=prov.count(), closed=True)


def run_node(opts: NodeOptions) -> dict[str, Any]:
    """Build and run one node (raises :class:`ConfigError` / :class:`WireError` with what to do)."""
    return Node(opts).run()


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - thin; the CLI is the front door
    """``python -m clicooper.net.node`` = ``clicooper node`` (used by the launcher: lighter start-up)."""
    import argparse

    from clicooper.errors import CliCooperError

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
    a = ap.parse_args(argv)
    try:
        run_node(NodeOptions(config=a.config, party=a.party, run_dir=a.run_dir, listen=a.listen,
                             peers=parse_peers(a.peers), certs=a.certs, key=a.key, identity=a.identity, plan=a.plan,
                             insecure_loopback=a.insecure_loopback, connect_timeout_s=a.connect_timeout,
                             idle_timeout_s=a.idle_timeout, events=sys.stdout))
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
