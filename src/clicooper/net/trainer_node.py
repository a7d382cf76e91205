"""The trainer's role as a node: answer the DO's records, handle activations and gradients, deliver.

With ``config.record_observations`` the trainer records what it received on its own machine
(:class:`~clicooper.core.observe.ReceivedRecorder`, ``RUN_DIR/observations/<party>/``), for the DO to import
(``clicooper observations import``). Where ``config.adversary`` names this trainer (a research option) it is
that behaviour's malicious trainer, lent the public auxiliary data (the test split's first half) but not the
evaluator's ground truth, which is the DO's; its report goes to ``RUN_DIR/attacks/active.json``.
"""

from __future__ import annotations

from typing import Any

from clicooper import rundir
from clicooper.core.checkpoint import save_model_files, write_state
from clicooper.core.observe import ReceivedRecorder
from clicooper.core.run_loop import ACTIVE_REPORT
from clicooper.core.security import adversary_context
from clicooper.data import load_dataset
from clicooper.errors import WireError
from clicooper.models.blueprint import blueprint_for
from clicooper.net.builder import dataset_meta, node_party
from clicooper.net.delivery import chunk_bytes, segment_payloads
from clicooper.net.node_base import Node, NodeOptions
from clicooper.net.node_ledger import genesis_from_wire, wire_entry
from clicooper.net.node_records import (
    Close,
    CloseSig,
    Deliver,
    Entry,
    GenesisEntry,
    GenesisPropose,
    GenesisSig,
    Hello,
    Ready,
    RoundEnd,
    RoundSaved,
    Shutdown,
    StageRequest,
    Start,
    is_node_record,
)
from clicooper.protocol.messages import Control, Header, Message
from clicooper.provenance.commitments import stamp_architecture
from clicooper.rundir import model_file


class TrainerNode(Node):
    """A trainer ``T<i>``: its segment, its neighbours' links, its ledger copy (see :mod:`.node_base`)."""

    def __init__(self, opts: NodeOptions) -> None:
        super().__init__(opts)
        plan, meta = self.plan_and_meta()
        if meta is None:
            meta = dataset_meta(self.given)
        bp = blueprint_for(self.given, meta.input_shape, meta.num_classes, plan=plan)
        stamp_architecture(bp.plan.extra, bp.model)  # the DO's plan.json names the model: the same one
        adv, context = self.given.adversary, None
        if adv is not None and adv.party_for(self.given.trainers) == self.name:  # public aux data, no truth
            context = adversary_context(self.given, load_dataset(self.given.dataset, options=self.given.data), None)
        self.attach(node_party(self.given, self.name, bp, device=opts.device, context=context), self.given)
        self.recorder = ReceivedRecorder(self.run_dir / rundir.OBSERVATIONS, self.name) \
            if self.given.record_observations else None

    def play(self) -> dict[str, Any]:
        """Hello, then every record and party message until ``shutdown``."""
        party = self.node.party
        hello = Hello(self.completed())
        if self.prov is not None:
            hello = Hello(hello.completed, self.prov.identity.public_key.hex(), self.prov.count())
        self.send("DO", hello)
        steps_before = party.steps_taken
        while True:
            msg = self.recv("the data owner" if steps_before == party.steps_taken else "activations or gradients")
            if isinstance(msg, Control) and msg.header.sender == "DO" and is_node_record(msg):
                if msg.kind == Shutdown.KIND:
                    return self._shutdown()
                self._record(msg)
                continue
            self._party_message(msg)

    def _party_message(self, msg: Message) -> None:
        party = self.node.party
        if self.recorder is not None:
            self.recorder(msg)
        n0 = party.steps_taken
        for reply in party.handle(msg):
            self.transport.send(reply)
        if party.steps_taken != n0:
            self.emit("step", round=msg.header.epoch, step=msg.header.step)

    def _record(self, msg: Control) -> None:
        kind = msg.kind
        if kind == Start.KIND:
            st = Start.from_control(msg)
            self.rollback(st.round)
            if self.prov is not None and st.round < self.config.epochs:
                self.prov.round_start(st.round)
            self.emit("start", round=st.round, epochs=st.epochs, steps=st.steps)
            self.send("DO", Ready(), st.round)
        elif kind == RoundEnd.KIND:
            r = RoundEnd.from_control(msg).round
            if self.prov is not None:
                self.prov.round_end_hooks_off()
            if self.recorder is not None:
                self.recorder.flush(r + 1, self.node.party.module)
            self.save_round(r)
            self._active_report()
            if self.prov is not None and r + 1 < self.config.epochs:
                self.prov.round_start(r + 1)
            self.emit("round", round=r)
            self.send("DO", RoundSaved(r), r)
        elif kind == Deliver.KIND:
            self._deliver(Deliver.from_control(msg))
        elif self.prov is not None and kind in (GenesisPropose.KIND, GenesisEntry.KIND, StageRequest.KIND,
                                                Entry.KIND, Close.KIND):
            self._ledger(msg)
        else:
            raise WireError(f"{self.name}: unexpected {kind} from the DO")

    def _ledger(self, msg: Control) -> None:
        """Ledger records from the DO (see :mod:`clicooper.net.node_ledger`)."""
        prov = self.prov
        assert prov is not None
        if msg.kind == GenesisPropose.KIND:
            self.send("DO", GenesisSig(prov.sign_genesis(GenesisPropose.from_control(msg).genesis)))
        elif msg.kind == GenesisEntry.KIND:
            prov.create(genesis_from_wire(GenesisEntry.from_control(msg).entry))
            self.emit("ledger", entries=prov.count())
        elif msg.kind == StageRequest.KIND:
            req = StageRequest.from_control(msg)
            entry, _ = prov.own_stage(req.round, req.position)
            self.send("DO", Entry(wire_entry(entry)), req.round)
        elif msg.kind == Entry.KIND:
            prov.accept(msg)
        elif msg.kind == Close.KIND:
            self.send("DO", CloseSig(prov.closing_signature()))

    def _deliver(self, req: Deliver) -> None:
        """Send this party's final segment file (the one at ``req.position``) to the DO in chunks."""
        n = self.node
        entries = [e for e in n.own_plan_entries if n.plan.party(e).position == req.position]
        if not entries:
            raise WireError(f"{self.name}: the DO asks for position {req.position}, which {self.name} does not "
                            "hold: every party must run the same config and plan.json")
        entry, done = entries[0], self.completed()
        if done < self.config.epochs:
            raise WireError(f"{self.name}: the DO asks for the final segment, but only {done} of "
                            f"{self.config.epochs} rounds are checkpointed here; restart every node")
        f = self.run_dir / rundir.MODEL_DIR / model_file(entry)
        if not f.is_file():  # e.g. deleted by hand: the weights in memory are those of the last checkpoint
            save_model_files(self.run_dir, self.config, n.plan, n.modules, done, n.own_plan_entries)
        data = f.read_bytes()
        for kind, payload in segment_payloads(data, position=req.position, file=model_file(entry),
                                              chunk=chunk_bytes(self.transport.limits)):
            self.transport.send(Control(Header(self.name, "DO", self.config.epochs, 0), kind, payload))
        self.emit("delivered", position=req.position, bytes=len(data))

    def _active_report(self) -> None:
        """A malicious trainer's own report (``RUN_DIR/attacks/active.json``, ``"trainer"``)."""
        summary = getattr(self.node.party, "summary", None)
        if summary is not None:
            rundir.write_json(self.run_dir / rundir.ATTACKS / ACTIVE_REPORT, {"trainer": summary()})

    def _shutdown(self) -> dict[str, Any]:
        self._active_report()
        done = self.completed()
        if done >= self.config.epochs:
            write_state(self.run_dir, done, finished=True)
        return {"steps": self.node.party.steps_taken, "completed_rounds": done}

