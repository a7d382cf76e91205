"""One node's copy of the provenance ledger (docs/design/ledger.md; docs/network.md "Ledger across nodes").

Each node holds only its OWN Ed25519 identity (``RUN/keys/<party>.key`` in its run directory, or
``--identity``), keeps its own ``ledger.jsonl`` and signs only its own stage entries. Everything that
travels is a ``Control`` record on the existing links (the DO is connected to every trainer, so it relays):

- genesis: trainers send their public key in ``node-hello``; the DO proposes the body
  (``node-genesis-propose {genesis}``), each trainer checks it (its own key and positions, planned rounds,
  topology, party list) and answers ``node-genesis-sig {signature}``; the DO assembles the signed genesis,
  creates its ledger and sends ``node-genesis {entry}``; each trainer checks every signature
  (:meth:`Ledger.create`) and creates its copy;
- round end, positions in order: the owner runs the watermark-only extra steps until BER = 0, drafts and
  signs its entry and appends it to its own copy; the DO asks a trainer with ``node-stage {round,
  position}`` and gets back ``node-entry {entry}``; every entry is relayed by the DO to every other trainer
  as ``node-entry``. Each receiver parses the canonical line and appends it only if
  :class:`~clicooper.provenance.ledger.ChainState` accepts it (owner's signature against the genesis key,
  ``prev`` chain, round/position order, start = previous end) — a forged or reordered entry is refused with
  a :class:`LedgerError` and nothing is appended;
- accusation: when the DO's live detection stops the run, the DO signs an accusation entry, appends it and
  relays it as ``node-entry``; each trainer checks the DO's signature and the chain before appending it;
- closing: ``node-close`` → each trainer signs the closing body of ITS OWN copy (``node-close-sig``); the
  DO assembles it, appends it and relays it as ``node-entry``; the multi-signature is checked on append.

Because every copy appends exactly the same checked entries, the copies are byte-identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from clicooper import jsonbound, rundir
from clicooper.config import RunConfig
from clicooper.core.audit_log import AuditLog
from clicooper.errors import LedgerError
from clicooper.models.partition import Plan
from clicooper.protocol.messages import Control
from clicooper.provenance.accusation import Accusation
from clicooper.provenance.entries import (
    Closing,
    Genesis,
    SignatureRecord,
    StageEntry,
    entry_bytes,
    entry_from_json,
    sign_multi,
)
from clicooper.provenance.ledger import MAX_LINE_BYTES, Ledger, parse_line
from clicooper.provenance.setup import genesis_body, key_path, load_or_create_identity
from clicooper.provenance.stages import Position, StageEngine, positions_of

GENESIS_PROPOSE, GENESIS_SIG, GENESIS, STAGE, ENTRY, CLOSE, CLOSE_SIG = (
    "node-genesis-propose", "node-genesis-sig", "node-genesis", "node-stage", "node-entry", "node-close",
    "node-close-sig")


def wire_entry(entry: Any) -> str:
    """An entry as it travels: its canonical ledger line (text)."""
    return entry_bytes(entry).decode("utf-8")


class NodeLedger:
    """The ledger side of one node: its identity, its ledger copy, its positions' watermarks."""

    def __init__(self, name: str, config: RunConfig, plan: Plan, modules: dict[str, nn.Module], party: Any,
                 run_dir: Path, identity_path: Path | None = None, *,
                 pinned_keys: dict[str, bytes] | None = None) -> None:
        self.name, self.config, self.plan, self.party = name, config, plan, party
        self.pinned_keys = dict(pinned_keys or {})  # party → ledger public key, from the assembled set
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / rundir.LEDGER
        self.positions: list[Position] = positions_of(config, plan, modules, holder=name)
        self.ledger: Ledger | None = Ledger.open(self.path) if self.path.exists() else None
        self.identity = load_or_create_identity(Path(identity_path or key_path(self.run_dir, name)),
                                                create=self.ledger is None)
        mine = self.pinned_keys.get(name)
        if mine is not None and mine != self.identity.public_key:
            raise LedgerError(f"{self.name}'s ledger key is not the one its card pinned in the certificate set: "
                              f"pass --identity with the NAME.ledger.key that `clicooper certs --party {name}` made")
        if self.ledger is not None:
            self._check_own_key(self.ledger.genesis)
        self._engine: StageEngine | None = None
        # a trainer keeps its audit log (core/audit_log.py) in its own run directory, as in an in-process run
        self.audit = AuditLog(party, self.run_dir, config.audit) if config.audit.enabled and name != "DO" else None

    # -- helpers ----------------------------------------------------------------------------------------
    @property
    def own(self) -> list[Position]:
        return [p for p in self.positions if p.owner == self.name]

    def owner(self, position: int) -> str:
        return next(p.owner for p in self.positions if p.position == position)

    def count(self) -> int:
        return len(self.ledger.entries) if self.ledger is not None else 0

    def _need(self) -> Ledger:
        if self.ledger is None:
            raise LedgerError(f"{self.name} has no ledger yet (no genesis received)")
        return self.ledger

    def _check_own_key(self, g: Genesis) -> None:
        mine = [p for p in g.parties if p.name == self.name]
        if not mine or mine[0].public_key != self.identity.public_key:
            raise LedgerError(f"the genesis does not hold {self.name}'s key {self.identity.party_id}: wrong "
                              "--identity, or a genesis of another run")
        want = tuple(p.position for p in self.own)
        if tuple(mine[0].positions) != want:
            raise LedgerError(f"the genesis gives {self.name} positions {mine[0].positions}, the plan {want}")

    def _check_pinned(self, keys: dict[str, bytes], where: str) -> None:
        """Every party's ledger key must be the one its card pinned (when the set pins keys)."""
        for name, pk in sorted(keys.items()):
            want = self.pinned_keys.get(name)
            if self.pinned_keys and want is None:
                raise LedgerError(f"{where}: {name} has no ledger key in the certificate set's ledger-keys.json")
            if want is not None and pk != want:
                raise LedgerError(f"{where}: the ledger key of {name} is not the one its card pinned "
                                  "(ledger-keys.json): refusing a party that is not who it claims")

    # -- genesis ----------------------------------------------------------------------------------------
    def propose_genesis(self, public_keys: dict[str, bytes], dataset: Any, train_ids: Any, model: nn.Module,
                        fingerprints: dict[str, str] | None = None) -> Genesis:
        """DO: the unsigned genesis body (parties in name order DO, T1, …)."""
        self._check_pinned(dict(public_keys), "the trainers' node-hello")
        return genesis_body(self.config, self.run_dir, dataset=dataset, train_ids=train_ids, model=model,
                            positions=self.positions, public_keys=dict(public_keys) | {"DO": self.identity.public_key},
                            fingerprints=fingerprints)

    def sign_genesis(self, text: str) -> str:
        """Trainer: check a proposed body (own key and positions, rounds, topology, parties) and sign it."""
        g = genesis_from_wire(text)
        if g.signatures:
            raise LedgerError("a proposed genesis must come unsigned")
        self._check_own_key(g)
        self._check_pinned({p.name: p.public_key for p in g.parties}, "the proposed genesis")
        if g.planned_rounds != self.config.epochs or g.topology != self.config.topology:
            raise LedgerError(f"proposed genesis plans {g.planned_rounds} rounds ({g.topology}); this node's config "
                              f"says {self.config.epochs} ({self.config.topology})")
        want = {p.position: p.owner for p in self.positions}
        got = {q: p.name for p in g.parties for q in p.positions}
        if got != want:
            raise LedgerError(f"proposed genesis assigns positions {got}; the plan says {want}")
        return sign_multi(self.identity, g).signature.hex()

    def create(self, genesis: Genesis) -> None:
        """Create this node's copy from the signed genesis (every signature is checked)."""
        self._check_own_key(genesis)
        if self.ledger is not None:
            if wire_entry(self.ledger.genesis) != wire_entry(genesis):
                raise LedgerError(f"{self.name} already holds another genesis in {self.path}")
            return
        self.ledger = Ledger.create(self.path, genesis)

    def assemble_genesis(self, body: Genesis, sigs: dict[str, str]) -> Genesis:
        """DO: body + the DO's signature + each trainer's (checked by :meth:`create`)."""
        recs = [sign_multi(self.identity, body)]
        for p in body.parties:
            if p.name != self.name:
                recs.append(SignatureRecord(p.party_id, bytes.fromhex(sigs[p.name])))
        return body.with_signatures(recs)

    # -- receiving entries ------------------------------------------------------------------------------
    def parse(self, msg: Control) -> Any:
        """The entry carried by ``node-entry``/``node-genesis`` (canonical line, else :class:`LedgerError`)."""
        text = msg.payload.get("entry")
        if text is None:
            raise LedgerError(f"{msg.kind} from {msg.header.sender} carries no entry")
        return parse_line(text.encode("utf-8"), self.count())

    def accept(self, msg: Control, *, expect: tuple[int, int] | None = None) -> bool:
        """Check the entry in ``msg`` and append it to this copy; ``True`` if written (``False``: identical
        entry already committed, a redone round). Raises :class:`LedgerError`; nothing appended then."""
        ledger = self._need()
        entry = self.parse(msg)
        if not isinstance(entry, StageEntry | Closing | Accusation):
            raise LedgerError(f"{msg.kind} from {msg.header.sender}: a {type(entry).__name__} is not a stage, "
                              "closing or accusation entry")
        if expect is not None and (not isinstance(entry, StageEntry) or entry.stage != expect):
            raise LedgerError(f"{msg.header.sender} sent an entry for {getattr(entry, 'stage', 'closing')} where "
                              f"stage {expect} was asked for")
        try:
            return ledger.append(entry, allow_identical=True)
        except LedgerError as e:
            raise LedgerError(f"{self.name} refuses the ledger entry relayed by {msg.header.sender}: {e}") from e

    # -- rounds (the stage engine, as in an in-process run) --------------------------------------------
    @property
    def engine(self) -> StageEngine:
        """The stage engine over this node's ledger copy and its own positions."""
        ledger = self._need()
        if self._engine is None or self._engine.ledger is not ledger:
            self._engine = StageEngine(ledger, self.positions, {self.name: self.identity})
        return self._engine

    def round_start(self, r: int) -> None:
        """Marks and start commitments of this party's positions, fresh transcripts, watermark step hooks."""
        self.engine.begin_round(r, {self.name: self.party})
        if self.audit is not None:
            self.audit.begin_round(r)

    def own_stage(self, r: int, position: int) -> tuple[StageEntry, dict[str, Any]]:
        """Owner: extra steps until BER = 0, draft + sign stage (r, position), append to own copy."""
        audit = self.audit.end_round() if self.audit is not None else None
        return self.engine.end_stage(r, position, self.party, audit=audit)

    def round_end_hooks_off(self) -> None:
        """The round's steps are over: no watermark term on the extra steps' neighbours."""
        self.engine.end_round({self.name: self.party})

    # -- closing ----------------------------------------------------------------------------------------
    def closing_signature(self) -> str:
        """Sign the closing body of this node's own copy (hex)."""
        return sign_multi(self.identity, self._need().closing_body()).signature.hex()

    def close(self, sigs: dict[str, str]) -> Closing:
        """DO: closing with every party's signature (checked on append)."""
        ledger = self._need()
        g = ledger.genesis
        recs = [sign_multi(self.identity, ledger.closing_body())]
        for p in g.parties:
            if p.name != self.name:
                recs.append(SignatureRecord(p.party_id, bytes.fromhex(sigs[p.name])))
        return ledger.close(recs)


def genesis_from_wire(text: str) -> Genesis:
    """A genesis (signed or proposed) from its JSON text."""
    try:
        obj = jsonbound.loads(text, max_bytes=MAX_LINE_BYTES, what="the genesis")
    except ValueError as e:  # bad JSON, too large or too deep: never a RecursionError
        raise LedgerError(f"a genesis that cannot be read: {e}") from None
    g = entry_from_json(obj)
    if not isinstance(g, Genesis):
        raise LedgerError("expected a genesis entry")
    return g
