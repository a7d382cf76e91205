"""One node's copy of the provenance ledger (DESIGN §5–6; docs/network.md "Ledger across nodes").

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
- closing: ``node-close`` → each trainer signs the closing body of ITS OWN copy (``node-close-sig``); the
  DO assembles it, appends it and relays it as ``node-entry``; the multi-signature is checked on append.

Because every copy appends exactly the same checked entries, the copies are byte-identical.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from clicooper import rundir
from clicooper.config import RunConfig
from clicooper.errors import LedgerError
from clicooper.protocol.messages import Control
from clicooper.provenance.commitments import (
    architecture_hash,
    config_hash,
    dataset_commitment,
    module_commitment,
)
from clicooper.provenance.entries import (
    Closing,
    Genesis,
    PartyRecord,
    SignatureRecord,
    StageEntry,
    entry_bytes,
    entry_from_json,
    sign_multi,
)
from clicooper.provenance.identity import Identity, load_identity
from clicooper.provenance.ledger import Ledger, parse_line
from clicooper.provenance.watermark import (
    Mark,
    WatermarkTerm,
    derive_stage_key,
    embed_until_zero,
    marks_for_round,
    module_errors,
    module_layout,
)
from clicooper.training.provenance_hooks import (
    EXTRA_STEP_LAMBDA,
    _dataset_salt,
    capacity_for,
    key_path,
    num_params,
    owner_of,
)

GENESIS_PROPOSE, GENESIS_SIG, GENESIS, STAGE, ENTRY, CLOSE, CLOSE_SIG = (
    "node-genesis-propose", "node-genesis-sig", "node-genesis", "node-stage", "node-entry", "node-close",
    "node-close-sig")


def load_or_create_identity(path: Path, *, create: bool) -> Identity:
    """This party's key; created (0600) only for a fresh run without a key file."""
    if Path(path).is_file():
        return load_identity(path)
    if not create:
        raise LedgerError(f"identity {path} is missing but this node already has a ledger: restore its key "
                          "(--identity) — another key cannot sign for the genesis' party")
    Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    ident = Identity.generate()
    ident.save(path)
    return ident


def wire_entry(entry: Any) -> str:
    """An entry as it travels: its canonical ledger line (text)."""
    return entry_bytes(entry).decode("utf-8")


@dataclass
class _Pos:
    position: int
    plan_party: str
    owner: str
    module: nn.Module | None  # None for other parties' positions
    cap: Any = None
    flops_per_sample: int = 0


class NodeLedger:
    """The ledger side of one node: its identity, its ledger copy, its positions' watermarks."""

    def __init__(self, name: str, config: RunConfig, plan: Any, modules: dict[str, nn.Module], party: Any,
                 run_dir: Path, identity_path: Path | None = None) -> None:
        self.name, self.config, self.plan, self.party = name, config, plan, party
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / rundir.LEDGER
        self.positions: list[_Pos] = []
        for pp in sorted(plan.parties, key=lambda x: x.position):
            owner = owner_of(pp.party)
            mod = modules[pp.party] if owner == name else None
            cap = capacity_for(config, num_params(mod)) if mod is not None else None
            self.positions.append(_Pos(pp.position, pp.party, owner, mod, cap, int(pp.flops)))
        self.ledger: Ledger | None = Ledger.open(self.path) if self.path.exists() else None
        self.identity = load_or_create_identity(Path(identity_path or key_path(self.run_dir, name)),
                                                create=self.ledger is None)
        if self.ledger is not None:
            self._check_own_key(self.ledger.genesis)
        self.marks: dict[int, list[Mark]] = {}
        self.starts: dict[int, str] = {}
        self.samples0 = self.steps0 = 0

    # -- helpers ----------------------------------------------------------------------------------------
    @property
    def own(self) -> list[_Pos]:
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

    # -- genesis ----------------------------------------------------------------------------------------
    def propose_genesis(self, public_keys: dict[str, bytes], dataset: Any, train_ids: Any, model: nn.Module,
                        fingerprints: dict[str, str] | None = None) -> Genesis:
        """DO: the unsigned genesis body (parties in name order DO, T1, …)."""
        names = ["DO", *sorted((n for n in public_keys if n != "DO"), key=lambda n: int(n[1:]))]
        keys = dict(public_keys) | {"DO": self.identity.public_key}
        fps = fingerprints or {}
        parties = tuple(PartyRecord(n, keys[n], tuple(p.position for p in self.positions if p.owner == n),
                                    fps.get(n)) for n in names)
        salt = _dataset_salt(self.run_dir, create=True)
        return Genesis(
            config_hash=config_hash(self.config.model_dump(mode="json")),
            dataset_commitment=dataset_commitment(salt, {"x": dataset.x_train, "y": dataset.y_train}, ids=train_ids),
            architecture_hash=architecture_hash(model), planned_rounds=self.config.epochs,
            topology=self.config.topology, parties=parties)

    def sign_genesis(self, text: str) -> str:
        """Trainer: check a proposed body (own key and positions, rounds, topology, parties) and sign it."""
        obj = json.loads(text)
        g = Genesis.from_json(obj)
        if g.signatures:
            raise LedgerError("a proposed genesis must come unsigned")
        self._check_own_key(g)
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
        if not isinstance(entry, StageEntry | Closing):
            raise LedgerError(f"{msg.kind} from {msg.header.sender}: a {type(entry).__name__} is not a stage "
                              "or closing entry")
        if expect is not None and (not isinstance(entry, StageEntry) or entry.stage != expect):
            raise LedgerError(f"{msg.header.sender} sent an entry for {getattr(entry, 'stage', 'closing')} where "
                              f"stage {expect} was asked for")
        try:
            return ledger.append(entry, allow_identical=True)
        except LedgerError as e:
            raise LedgerError(f"{self.name} refuses the ledger entry relayed by {msg.header.sender}: {e}") from e

    # -- rounds -----------------------------------------------------------------------------------------
    def round_start(self, r: int) -> None:
        """Marks and start commitments of this party's positions, fresh transcripts, watermark step hooks."""
        ledger = self._need()
        if ledger.closed:
            raise LedgerError(f"the ledger of {self.run_dir} is closed; round {r} cannot be added")
        hooks = []
        for pos in self.own:
            assert pos.module is not None
            anchors = {q: ledger.anchor(q) for q in pos.cap.retained_for(r)}
            self.marks[pos.position] = marks_for_round(self.identity, ledger.run_id, pos.position, r, anchors,
                                                       pos.cap, module_layout(pos.module))
            self.starts[pos.position] = module_commitment(pos.module)
            if self.marks[pos.position]:
                hooks.append(WatermarkTerm(pos.module, self.marks[pos.position], lam=pos.cap.lam))
        self.party.transcripts = {}
        self.party.step_hooks = hooks
        self.samples0, self.steps0 = self.party.samples_processed, self.party.steps_taken

    def own_stage(self, r: int, position: int) -> tuple[StageEntry, dict[str, Any]]:
        """Owner: extra steps until BER = 0, draft + sign stage (r, position), append to own copy."""
        ledger = self._need()
        pos = next(p for p in self.own if p.position == position)
        assert pos.module is not None
        marks = self.marks.get(position, [])
        wrong_before, total = module_errors(pos.module, marks)
        extra = 0
        if marks:
            extra = embed_until_zero(pos.module, marks, lam=max(pos.cap.lam, EXTRA_STEP_LAMBDA),
                                     optimizer=self.party.optimizer, max_steps=pos.cap.max_extra_steps)
        wrong_after, _ = module_errors(pos.module, marks)
        samples = self.party.samples_processed - self.samples0
        wm = kc = None
        if pos.cap.enabled:
            sk = derive_stage_key(self.identity, ledger.run_id, r, position, ledger.anchor(r))
            wm = pos.cap.mark_params(module_layout(pos.module), r, extra).to_json()
            kc = sk.commitment
        entry = ledger.draft_stage(
            round=r, position=position, start=self.starts[position], end=module_commitment(pos.module),
            transcripts=self.party.transcript_digests(), watermark=wm, key_commitment=kc,
            metrics={"samples": samples, "flops_fwd_bwd": pos.flops_per_sample * samples,
                     "steps": self.party.steps_taken - self.steps0, "extra_watermark_steps": extra})
        committed = ledger.stage(r, position)
        if committed is not None:  # round redone after a crash: must reproduce the committed entry exactly
            entry = dataclasses.replace(entry, prev=committed.prev)
            if entry.signed(self.identity) != committed:
                raise LedgerError(f"round {r} was redone but stage ({r}, {position}) differs from the committed "
                                  "entry; restore the round's checkpoint or start a new run")
        signed = entry.signed(self.identity)
        written = ledger.append(signed, allow_identical=True)
        return signed, {"party": pos.plan_party, "bits": total, "extra_steps": extra, "committed": written,
                        "ber_before_extra": wrong_before / total if total else None,
                        "ber": wrong_after / total if total else None}

    def round_end_hooks_off(self) -> None:
        self.party.step_hooks = []

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
    g = entry_from_json(json.loads(text))
    if not isinstance(g, Genesis):
        raise LedgerError("expected a genesis entry")
    return g
