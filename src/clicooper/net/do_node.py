"""The data owner's role as a node: it drives the rounds over gRPC with the session core's run loop
(:class:`~clicooper.core.run_loop.RunLoop`, the one an in-process run drives), agrees the ledger with the
trainers, and collects their final segments (see :mod:`.node_base`).

The run loop gives a node run what an in-process one has: the ε budget stop (``--max-epsilon``), the privacy
record ``privacy.json``, the DO's live detection (``config.detection``: the guard on the DO, its validation
queries through the chain) with its clean stop, the DO's signed accusation relayed into every party's ledger
copy, and ``attacks/active.json``. After a stop the DO sends ``shutdown`` to every trainer; the run resumes
when every node is started again (``clicooper launch --resume RUN``), from the rounds every party completed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from clicooper import rundir
from clicooper.core.budget import check_max_epsilon
from clicooper.core.checkpoint import model_file_metadata, write_state
from clicooper.core.privacy import build_privacy
from clicooper.core.rounds import round_metrics, run_round
from clicooper.core.run_loop import Progress, RunLoop, dismiss, read_metrics
from clicooper.core.security import Validator, build_guard
from clicooper.core.setup import resolve_run
from clicooper.data import steps_in
from clicooper.data.given import open_dataset
from clicooper.errors import LedgerError, WireError
from clicooper.net.builder import node_party
from clicooper.net.delivery import SEGMENT, SEGMENT_END, ExpectedSegment, SegmentInbox, chunk_bytes
from clicooper.net.node_base import Node, NodeOptions
from clicooper.net.node_ledger import wire_entry
from clicooper.net.node_records import (
    Close,
    CloseSig,
    Deliver,
    Entry,
    GenesisEntry,
    GenesisPropose,
    GenesisSig,
    Hello,
    NodeRecord,
    Ready,
    RoundEnd,
    RoundSaved,
    Shutdown,
    StageRequest,
    Start,
    is_node_record,
)
from clicooper.protocol.messages import Control, Message
from clicooper.provenance.accusation import draft_accusation
from clicooper.provenance.entries import Closing, entry_hash
from clicooper.rundir import model_file


class GrpcDriver:
    """:class:`~clicooper.core.rounds.StepDriver` of the DO node: send, then handle replies until done."""

    def __init__(self, node: DataOwnerNode) -> None:
        self.node = node

    def run_step(self, messages: Iterable[Message], *, round: int, step: int) -> None:
        """Send the step's messages and handle what comes back until the DO's step is done."""
        n = self.node
        for m in messages:
            n.transport.send(m)
        while not n.do.ready:
            n.handle(n.recv(f"the replies of step {step} of round {round}"))

    def drain(self, *, round: int) -> None:
        """Handle replies until no step is in flight (overlap_steps: the round's last one)."""
        n = self.node
        while not n.do.step_done:
            n.handle(n.recv(f"the replies of the last step of round {round}"))

    def run_query(self, messages: Iterable[Message], *, round: int, step: int, answered: Callable[[], bool]) -> None:
        """Send a query (the DO's validation) and handle what comes back until it is answered."""
        n = self.node
        for m in messages:
            n.transport.send(m)
        while not answered():
            n.handle(n.recv(f"the answer of the validation query after step {step} of round {round}"))


class NodeHooks:
    """The run loop's round hooks on the DO node: the ledger protocol with the trainers
    (:mod:`clicooper.net.node_ledger`) and the DO's accusation, relayed into every copy."""

    def __init__(self, node: DataOwnerNode) -> None:
        self.node = node

    def on_round_start(self, r: int, parties: dict[str, Any]) -> None:
        """Marks and start commitments of the DO's positions."""
        assert self.node.prov is not None
        self.node.prov.round_start(r)

    def on_round_end(self, r: int, parties: dict[str, Any], metrics: dict[str, Any]) -> None:
        """Stage entries in position order (``metrics["provenance"]``)."""
        metrics["provenance"] = self.node._round_ledger(r)

    def on_run_end(self, parties: dict[str, Any]) -> None:
        """The closing entry, signed by every party."""
        self.node._close()

    def accuse(self, alarm: Any) -> str:
        """The DO's signed accusation of ``alarm`` appended to its copy and relayed to every trainer's."""
        prov = self.node.prov
        assert prov is not None and prov.ledger is not None
        entry = draft_accusation(prov.ledger, prov.identity, round=alarm.round, step=alarm.step,
                                 suspects=list(alarm.suspects), detector=alarm.detector, evidence=alarm.evidence)
        prov.ledger.append(entry)
        self.node.to_all(Entry(wire_entry(entry)), alarm.round)
        self.node.emit("ledger", entries=prov.count(), accusation=list(alarm.suspects))
        return entry_hash(entry)


class DataOwnerNode(Node):
    """The DO: dataset, resolved config, privacy mechanisms, the round loop, the ledger's relay."""

    def __init__(self, opts: NodeOptions) -> None:
        super().__init__(opts)
        plan, _ = self.plan_and_meta()
        # the DO's own python: data only when it names it itself (--dataset), never from the shared config alone
        ds = open_dataset(self.given.dataset, self.given.data, opts.dataset,
                          fingerprint_of_run=plan.extra.get("data_fingerprint") if plan is not None else None)
        if ds.streamed is not None:  # read inline in a node (StreamedImages.read_inline says why)
            ds.streamed.read_inline()
        self.train_ids = ds.train_ids(self.given.train_range)
        config, bp = resolve_run(self.given, num_train=len(self.train_ids), input_shape=ds.input_shape,
                                 num_classes=ds.num_classes, plan=plan, check_devices=False)
        check_max_epsilon(opts.max_epsilon, config)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        new_run = self.completed() == 0 and not (self.run_dir / rundir.SECRETS).exists()
        privacy = build_privacy(config, self.run_dir, ds, bp, new_run=new_run)
        self.privacy = privacy
        self.attach(node_party(config, "DO", bp, dataset=ds, privacy=privacy, device=opts.device), config)
        self.do = self.node.party
        self.guard = build_guard(config, self.do, ds.num_classes, self.run_dir)  # None unless detection is on
        self.validator = Validator(config, self.do, ds) \
            if self.guard is not None and config.detection.validation.enabled else None
        if opts.dismiss_detection:  # the DO reviewed an accusation and continues
            dismiss(self)

    # -- the run loop's RoundDriver (core/run_loop.py) ---------------------------------------------------
    @property
    def parties(self) -> dict[str, Any]:
        """The DO (the only party in this process)."""
        return {"DO": self.do}

    def train_round(self, r: int, progress: Progress | None) -> dict[str, Any]:
        """Round ``r``'s steps over gRPC (the guard's checks after each); its metrics."""
        result = run_round(self.do, GrpcDriver(self), self.config, self.train_ids, r, validator=self.validator,
                           on_step=lambda r_, s, n: self.emit("step", round=r_, step=s, steps=n))
        m = round_metrics(r, result, self.config, transport="grpc")
        self.emit("round", round=r, loss=m["loss"], train_acc=m["train_acc"], seconds=m["seconds"])
        return m

    def save_round(self, r: int) -> None:
        """Every trainer checkpoints round ``r`` (``node-round-end`` → ``node-round-saved``), then the DO."""
        self.to_all(RoundEnd(r), r)
        self.wait_all(RoundSaved, self.peers)
        super().save_round(r)

    def trainer_reports(self) -> dict[str, Any]:
        """Nothing: a trainer's own report stays on its machine (``clicooper launch`` gathers it)."""
        return {}

    def flop_share(self) -> float:
        """The DO's share of the model's FLOPs."""
        return self.node.plan.do_flop_share

    # -- messaging ------------------------------------------------------------------------------------
    def handle(self, msg: Message) -> None:
        """A party message during training (a node record here is a protocol error)."""
        if isinstance(msg, Control) and is_node_record(msg):
            raise WireError(f"DO: unexpected {msg.kind} from {msg.header.sender} during training")
        for reply in self.do.handle(msg):
            self.transport.send(reply)

    def wait_all(self, record: type[NodeRecord], parties: list[str],
                 on_other: Callable[[Message], None] | None = None) -> dict[str, Control]:
        """The next ``record`` from each of ``parties`` (anything else goes to ``on_other``)."""
        got: dict[str, Control] = {}
        while len(got) < len(parties):
            msg = self.recv(f"{record.KIND} from {', '.join(p for p in parties if p not in got)}")
            if isinstance(msg, Control) and msg.kind == record.KIND and msg.header.sender in parties:
                got[msg.header.sender] = msg
            else:
                (on_other or self.handle)(msg)
        return got

    def to_all(self, record: NodeRecord, r: int = 0, *, skip: str | None = None) -> None:
        """Send ``record`` to every trainer (but ``skip``)."""
        for p in self.peers:
            if p != skip:
                self.send(p, record, r)

    # -- the role -------------------------------------------------------------------------------------
    def play(self) -> dict[str, Any]:
        """Hellos, roll back to the round every party has, the run loop, then close the ledger, collect the
        segments and shut down — or, after a clean stop (budget, detection), shut down at once."""
        cfg = self.config
        self.transport.wait_for_peers(timeout=self.opts.connect_timeout_s)
        hellos = {p: Hello.from_control(m) for p, m in self.wait_all(Hello, self.peers).items()}
        done = {p: h.completed for p, h in hellos.items()} | {"DO": self.completed()}
        r0 = min(min(done.values()), cfg.epochs)
        if self.prov is not None:
            self._genesis(hellos)
        assert cfg.batch_size is not None  # resolved
        steps = steps_in(len(self.train_ids), cfg.batch_size)
        self.rollback(r0)
        metrics = self._metrics_until(r0)
        self.to_all(Start(r0, cfg.epochs, steps), r0)
        self.wait_all(Ready, self.peers)
        self.emit("start", round=r0, epochs=cfg.epochs, steps=steps, rolled_back_from=done)
        loop = RunLoop(self, self.run_dir, self.privacy, NodeHooks(self) if self.prov is not None else None, metrics,
                       resume_hint="start every node again (clicooper launch --resume RUN; add --dismiss-detection "
                                   "to continue past a detection)")
        try:
            stopped = loop.run(r0, max_epsilon=self.opts.max_epsilon)
        finally:
            self.privacy.close()  # the noise-prefetch thread (privacy/prefetch.py)
        if stopped is not None:
            if not self.do.step_done:  # overlap_steps: let the step in flight finish before the trainers stop
                GrpcDriver(self).drain(round=stopped["completed_epochs"])
            self.to_all(Shutdown(), stopped["completed_epochs"])
            self.emit("stopped", **{k: stopped[k] for k in ("reason", "completed_epochs")})
            return {"steps": self.do.steps_taken, "completed_rounds": stopped["completed_epochs"],
                    "resumed_from": r0, "stopped": stopped["reason"]}
        self._collect_segments()
        write_state(self.run_dir, cfg.epochs, finished=True)
        self.to_all(Shutdown(), cfg.epochs)
        return {"steps": self.do.steps_taken, "completed_rounds": cfg.epochs, "resumed_from": r0}

    def _metrics_until(self, r0: int) -> dict[str, Any]:
        """``metrics.json`` cut to the rounds before ``r0``; a new run writes its config and plan first."""
        if r0 == 0:
            rundir.write_json(self.run_dir / rundir.CONFIG, self.config.model_dump(mode="json"))
            rundir.write_json(self.run_dir / rundir.PLAN, self.node.plan.to_dict())
        return read_metrics(self.run_dir, r0)

    # -- ledger (protocol in clicooper.net.node_ledger) -----------------------------------------------
    def _genesis(self, hellos: dict[str, Hello]) -> None:
        """Agree on the signed genesis (new run) and bring every trainer's copy up to the DO's."""
        prov = self.prov
        assert prov is not None
        if prov.ledger is None:
            keys = {}
            for p, h in hellos.items():
                if h.entries > 0:
                    raise WireError(f"{p} holds a ledger but the DO has none in {self.run_dir}: restore the DO's "
                                    "ledger.jsonl, or start every party with a fresh run directory")
                try:
                    keys[p] = bytes.fromhex(h.public_key or "")
                except ValueError as e:
                    raise WireError(f"{p}'s node-hello carries no public key: run every node with provenance on") from e
                if not keys[p]:
                    raise WireError(f"{p}'s node-hello carries no public key: run every node with provenance on")
            n = self.node
            assert n.dataset is not None
            body = prov.propose_genesis(keys, n.dataset, self.train_ids, n.model, self.pins or None)
            self.to_all(GenesisPropose(json.dumps(body.to_json())))
            sigs = {p: GenesisSig.from_control(m).signature for p, m in self.wait_all(GenesisSig, self.peers).items()}
            prov.create(prov.assemble_genesis(body, sigs))
            self.emit("ledger", entries=prov.count())
        assert prov.ledger is not None
        entries = prov.ledger.entries
        for p, h in hellos.items():  # catch-up: entries a restarted trainer lacks (same link, checked there)
            have = h.entries
            if have == 0:
                self.send(p, GenesisEntry(wire_entry(entries[0])))
                have = 1
            for e in entries[have:]:
                self.send(p, Entry(wire_entry(e)))

    def _round_ledger(self, r: int) -> dict[str, Any]:
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
                self.send(pos.owner, StageRequest(r, pos.position), r)
                got = self.wait_all(Entry, [pos.owner])[pos.owner]
                prov.accept(got, expect=(r, pos.position))
                text, skip = Entry.from_control(got).entry, pos.owner
                report[str(pos.position)] = {"party": pos.plan_party, **{
                    k: v for k, v in json.loads(text)["metrics"].items() if k == "extra_watermark_steps"}}
            self.to_all(Entry(text), r, skip=skip)
        return report

    def _close(self) -> None:
        prov = self.prov
        assert prov is not None and prov.ledger is not None
        if prov.ledger.closed:
            return
        self.to_all(Close(), self.config.epochs)
        sigs = {p: CloseSig.from_control(m).signature for p, m in self.wait_all(CloseSig, self.peers).items()}
        closing = prov.close(sigs)
        self.to_all(Entry(wire_entry(closing)), self.config.epochs)
        self.emit("ledger", entries=prov.count(), closed=True)

    # -- delivery -------------------------------------------------------------------------------------
    def _final_commitments(self) -> dict[str, str] | None:
        if self.prov is None:
            return None
        led = self.prov.ledger
        if led is None or not led.closed:
            raise LedgerError("the DO's ledger is not closed: the segments are checked against the closing "
                              "entry's final commitments; restart every node to finish the run")
        closing = led.entries[-1]
        assert isinstance(closing, Closing)
        return dict(closing.final_commitments)

    def expected_segments(self) -> list[ExpectedSegment]:
        """What each trainer position must deliver (names/shapes/dtypes from the DO's own copy of the initial
        model, the model file's metadata, and with provenance the closing entry's final commitment)."""
        final = self._final_commitments()
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
                model_file_metadata(self.config, self.node.plan, pp.party, self.config.epochs), commit))
        return out

    def _collect_segments(self) -> None:
        """Ask every trainer for its final segment, check each (:mod:`clicooper.net.delivery`) and write it
        atomically into this node's ``model/``; a refused segment stops the node and nothing of it is kept."""
        expected = self.expected_segments()
        inbox = SegmentInbox(expected, max_chunk=chunk_bytes(self.transport.limits))
        for e in expected:
            self.send(e.trainer, Deliver(self.config.epochs, e.position, e.file), self.config.epochs)
        while not inbox.done:
            msg = self.recv(f"the final segments of {', '.join(inbox.missing)}")
            if isinstance(msg, Control) and msg.kind in (SEGMENT, SEGMENT_END):
                got = inbox.feed(msg)
                if got is not None:
                    exp, data, _ = got
                    rundir.atomic_write_bytes(self.run_dir / rundir.MODEL_DIR / exp.file, data)
                    self.emit("segment", trainer=exp.trainer, position=exp.position, bytes=len(data))
            else:
                self.handle(msg)
