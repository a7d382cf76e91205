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
4. after the last round the DO sends ``shutdown``; every node flushes and exits 0.

Progress goes to stdout as JSON lines (``{"event": "step", "party": …, "round": …, "step": …}``), which
``clicooper launch`` reads. Provenance (the ledger) is not kept by nodes yet: run them with provenance off.
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
from clicooper.errors import ConfigError, RunDirError, WireError
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
from clicooper.net.grpc_transport import GrpcTransport
from clicooper.net.serde import WireLimits
from clicooper.net.tls import TlsConfig
from clicooper.protocol.messages import Control, Header, Message
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


def save_model_files(node: NodeParty, run_dir: Path, epoch: int) -> None:
    """This party's delivered weights in ``model/`` (same files and metadata as an in-process run)."""
    for entry in node.own_plan_entries:
        pp = node.plan.party(entry)
        rundir.save_tensors(
            run_dir / rundir.MODEL_DIR / model_file(entry), node.modules[entry].state_dict(),
            {"party": entry, "position": str(pp.position), "model": node.config.model, "epoch": str(epoch),
             "layers": json.dumps(pp.layers)},
        )


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
        if given.provenance:
            raise ConfigError("nodes do not keep the provenance ledger yet: set \"provenance\": false in the run "
                              "config (clicooper launch does this), or train in-process with `clicooper train`")
        self.name = opts.party
        self.peers = neighbours(given, self.name)
        missing = [p for p in self.peers if p not in opts.peers]
        if missing:
            raise ConfigError(f"--peers lacks {', '.join(missing)}: {self.name} talks to {', '.join(self.peers)}; "
                              "give name=host:port for each")
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
            self.config = given.resolved(len(ds.train_ids(given.train_range)))
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
        self.ctl("DO", HELLO, completed=completed_rounds(self.run_dir))
        steps_before = party.steps_taken
        while True:
            msg = self.recv("the data owner" if steps_before == party.steps_taken else "activations or gradients")
            if isinstance(msg, Control) and msg.header.sender == "DO" and (msg.kind.startswith("node-") or msg.kind == SHUTDOWN):
                r = int(msg.payload.get("round", "0"))
                if msg.kind == START:
                    self.rollback(r)
                    self.emit("start", round=r, epochs=int(msg.payload["epochs"]), steps=int(msg.payload["steps"]))
                    self.ctl("DO", READY, r)
                elif msg.kind == ROUND_END:
                    save_round(self.node, self.run_dir, r)
                    self.emit("round", round=r)
                    self.ctl("DO", ROUND_SAVED, r, round=r)
                elif msg.kind == SHUTDOWN:
                    return {"steps": party.steps_taken, "completed_rounds": completed_rounds(self.run_dir)}
                else:
                    raise WireError(f"{self.name}: unexpected {msg.kind} from the DO")
                continue
            n0 = party.steps_taken
            for reply in party.handle(msg):
                self.transport.send(reply)
            if party.steps_taken != n0:
                self.emit("step", round=msg.header.epoch, step=msg.header.step)

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
            order = epoch_order(train_ids, seed=cfg.seed, epoch=r)
            t0 = time.perf_counter()
            for s in range(steps):
                for m in do.start_step(r, s, order[s * bs : (s + 1) * bs]):
                    self.transport.send(m)
                while not do.step_done:
                    self._do_handle(self.recv(f"the replies of step {s} of round {r}"))
                self.emit("step", round=r, step=s, steps=steps)
            secs = time.perf_counter() - t0
            for p in trainers:
                self.ctl(p, ROUND_END, r, round=r)
            self._wait_all(ROUND_SAVED, trainers, self._do_handle)
            save_round(self.node, self.run_dir, r)
            stats = do.take_stats()
            m = {"epoch": r + 1, "loss": stats.loss_sum / max(1, stats.count),
                 "train_acc": stats.correct / max(1, stats.count), "seconds": secs,
                 "samples_per_s": len(order) / secs if secs > 0 else 0.0, "transport": "grpc"}
            metrics["epochs"].append(m)
            rundir.write_json(metrics_file, metrics)
            self.emit("round", round=r, loss=m["loss"], train_acc=m["train_acc"], seconds=secs)
        for p in trainers:
            self.ctl(p, SHUTDOWN, cfg.epochs)
        return {"steps": do.steps_taken, "completed_rounds": cfg.epochs, "resumed_from": r0}


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
    ap.add_argument("--plan", type=Path)
    ap.add_argument("--insecure-loopback", action="store_true")
    ap.add_argument("--connect-timeout", type=float, default=30.0)
    ap.add_argument("--idle-timeout", type=float, default=300.0)
    a = ap.parse_args(argv)
    try:
        run_node(NodeOptions(config=a.config, party=a.party, run_dir=a.run_dir, listen=a.listen,
                             peers=parse_peers(a.peers), certs=a.certs, key=a.key, plan=a.plan,
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
