"""Provenance round hooks: signed ledger + dynamic chained watermarks in the training loop (DESIGN §5).

:func:`default_hooks` returns a :class:`ProvenanceHooks` (a ``RoundHooks``) when ``config.provenance`` is
on. It follows the integration sequence of ``docs/provenance.md``:

- new run: one Ed25519 identity per party in ``RUN/keys/<name>.key`` (0600; in a distributed run each
  party keeps its own), the per-position watermark capacity in ``plan.json`` (``extra["watermark"]``), a
  DO-only dataset salt in ``RUN/secrets/dataset_salt`` and the genesis signed by every party; resume:
  ``Ledger.open`` (cuts a torn last line) and the saved keys;
- round start: marks of every position (retained rounds' keys re-derived from their anchors), start
  commitments, fresh transcripts, the watermark term as each party's step hook;
- round end, positions 0 … N-1 in order: bounded watermark-only steps until BER = 0, then the stage entry
  (signed by its owner, appended with ``allow_identical=True`` so that a round redone after a crash between
  its ledger commit and its checkpoint is a no-op when it is byte-identical — training is deterministic);
  per-position BER and extra steps go into the round's metrics (``metrics["provenance"]``);
- run end: the closing entry, signed by every party (skipped if the ledger is already closed).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from clicooper import rundir
from clicooper.config import RunConfig
from clicooper.errors import LedgerError
from clicooper.provenance.commitments import (
    architecture_hash,
    config_hash,
    dataset_commitment,
    module_commitment,
)
from clicooper.provenance.entries import Genesis, PartyRecord, sign_multi
from clicooper.provenance.identity import Identity, load_identity
from clicooper.provenance.ledger import Ledger
from clicooper.provenance.watermark import (
    CapacityPlan,
    Mark,
    WatermarkTerm,
    derive_stage_key,
    embed_until_zero,
    marks_for_round,
    module_errors,
    module_layout,
    plan_capacity,
)

DATASET_SALT = "dataset_salt"
#: λ floor of the round-end watermark-only steps. Those steps minimise the watermark term alone, so λ only
#: scales their gradient against the optimizer's state: Adam's second moments still hold the (much larger)
#: task gradients, and with the training-time λ = 0.01 the 200-step bound was nearly exhausted on the
#: digits head (199 steps). With a floor of 1 the same stage takes a few steps. The ledger records the
#: training-time λ (the regularizer's strength); the extra steps are counted in the entry.
EXTRA_STEP_LAMBDA = 1.0
SALT_BYTES = 32


def owner_of(plan_party: str) -> str:
    """Party name holding a plan entry: ``DO:head``/``DO:tail`` → ``DO``, ``T<i>`` → itself."""
    return "DO" if plan_party.startswith("DO") else plan_party


def key_path(run_dir: Path, name: str) -> Path:
    """``RUN/keys/<name>.key``."""
    return Path(run_dir) / rundir.KEYS / f"{name}.key"


def num_params(module: nn.Module) -> int:
    """Number of trainable weights of a segment (the watermark layout's length)."""
    return sum(p.numel() for p in module.parameters())


def capacity_for(config: RunConfig, n: int) -> CapacityPlan:
    """The watermark capacity of an ``n``-weight segment under ``config.watermark``."""
    wm = config.watermark
    if not wm.enabled or n < 1:
        return CapacityPlan(n, False, 0, 0, 0, wm.strength, 0, n // 8, -1, -1, False,
                            reason="watermark disabled in the run config" if not wm.enabled else "no weights")
    if n < wm.min_params:
        # DESIGN §5: a segment too small for a robust mark gets none, stated in the plan. Measured on
        # fmnist-cnn's 1,290-weight tail: a 128-bit mark needed 300+ watermark-only steps per round and
        # cost accuracy, because the task's gradients on so few weights keep undoing it.
        return CapacityPlan(n, False, 0, 0, 0, wm.strength, 0, n // 8, -1, -1, False,
                            reason=f"{n} weights < watermark.min_params = {wm.min_params}: no mark")
    return plan_capacity(n, planned_rounds=config.epochs, lam=wm.strength, max_extra_steps=wm.max_extra_steps,
                         robust_min_params=wm.min_params)


def _dataset_salt(run_dir: Path, *, create: bool) -> bytes:
    path = Path(run_dir) / rundir.SECRETS / DATASET_SALT
    if path.is_file():
        salt = path.read_bytes()
        if len(salt) != SALT_BYTES:
            raise LedgerError(f"{path} has {len(salt)} bytes, expected {SALT_BYTES}: restore it from backup")
        return salt
    if not create:
        raise LedgerError(f"{path} is missing; the dataset commitment of this run cannot be reproduced")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    salt = os.urandom(SALT_BYTES)
    rundir.atomic_write_bytes(path, salt, mode=0o600)
    return salt


@dataclass
class _Position:
    position: int
    plan_party: str  # "DO:head", "T1", …
    owner: str  # "DO", "T1", …
    module: nn.Module
    cap: CapacityPlan
    flops_per_sample: int


class ProvenanceHooks:
    """``RoundHooks`` keeping the ledger and embedding the watermarks (see module docstring)."""

    def __init__(self, config: RunConfig, run_dir: Path, session: Any, *, new_run: bool) -> None:
        self.config, self.run_dir, self.session = config, Path(run_dir), session
        plan = session.plan
        self.positions: list[_Position] = []
        for pp in sorted(plan.parties, key=lambda x: x.position):
            mod = session.modules[pp.party]
            self.positions.append(_Position(pp.position, pp.party, owner_of(pp.party), mod,
                                            capacity_for(config, num_params(mod)), int(pp.flops)))
        self.names = ["DO"] + [t.name for t in session.trainers]
        ledger_path = self.run_dir / rundir.LEDGER
        if new_run or not ledger_path.exists():
            self.identities = self._make_identities()
            plan.extra["watermark"] = {str(p.position): p.cap.to_json() for p in self.positions}
            from dataclasses import asdict

            rundir.write_json(self.run_dir / rundir.PLAN, asdict(plan))
            self.ledger = Ledger.create(ledger_path, self._genesis())
        else:
            self.identities = {n: load_identity(key_path(self.run_dir, n)) for n in self.names}
            self.ledger = Ledger.open(ledger_path)
            ids = {p.name: p.public_key for p in self.ledger.genesis.parties}
            for n, ident in self.identities.items():
                if ids.get(n) != ident.public_key:
                    raise LedgerError(f"key file {key_path(self.run_dir, n)} does not hold {n}'s genesis key")
        self.marks: dict[int, list[Mark]] = {}
        self.starts: dict[int, str] = {}
        self.samples0: dict[str, int] = {}
        self.steps0: dict[str, int] = {}

    # -- run start ------------------------------------------------------------------------------------
    def _make_identities(self) -> dict[str, Identity]:
        out = {}
        (self.run_dir / rundir.KEYS).mkdir(mode=0o700, parents=True, exist_ok=True)
        for n in self.names:
            path = key_path(self.run_dir, n)
            if path.exists():  # a genesis that crashed before being written: keep the keys
                out[n] = load_identity(path)
            else:
                ident = Identity.generate()
                ident.save(path)
                out[n] = ident
        return out

    def _genesis(self) -> Genesis:
        s, c = self.session, self.config
        ds = s.dataset
        salt = _dataset_salt(self.run_dir, create=True)
        parties = tuple(
            PartyRecord(n, self.identities[n].public_key,
                        tuple(p.position for p in self.positions if p.owner == n))
            for n in self.names
        )
        body = Genesis(
            config_hash=config_hash(c.model_dump(mode="json")),
            dataset_commitment=dataset_commitment(salt, {"x": ds.x_train, "y": ds.y_train}, ids=s.train_ids),
            architecture_hash=architecture_hash(s.model),
            planned_rounds=c.epochs, topology=c.topology, parties=parties,
        )
        return body.with_signatures([sign_multi(self.identities[n], body) for n in self.names])

    # -- rounds ---------------------------------------------------------------------------------------
    def on_round_start(self, r: int, parties: dict[str, Any]) -> None:
        """Marks, start commitments, fresh transcripts, watermark terms as step hooks."""
        if self.ledger.closed:
            raise LedgerError(f"the ledger of {self.run_dir} is closed; round {r} cannot be added")
        run_id = self.ledger.run_id
        hooks: dict[str, list[WatermarkTerm]] = {n: [] for n in parties}
        for pos in self.positions:
            anchors = {q: self.ledger.anchor(q) for q in pos.cap.retained_for(r)}
            self.marks[pos.position] = marks_for_round(
                self.identities[pos.owner], run_id, pos.position, r, anchors, pos.cap, module_layout(pos.module))
            self.starts[pos.position] = module_commitment(pos.module)
            if self.marks[pos.position]:
                # the term ignores the module it is called with (the DO's ModuleDict) and uses the segment
                hooks[pos.owner].append(WatermarkTerm(pos.module, self.marks[pos.position], lam=pos.cap.lam))
        for name, party in parties.items():
            party.transcripts = {}
            party.step_hooks = hooks[name]
            self.samples0[name] = party.samples_processed
            self.steps0[name] = party.steps_taken

    def on_round_end(self, r: int, parties: dict[str, Any], metrics: dict[str, Any]) -> None:
        """BER = 0 (bounded extra steps), then stage entries in position order; metrics["provenance"]."""
        report: dict[str, Any] = {}
        for pos in self.positions:
            party = parties[pos.owner]
            marks = self.marks[pos.position]
            wrong_before, total = module_errors(pos.module, marks)
            extra = 0
            if marks:
                extra = embed_until_zero(pos.module, marks, lam=max(pos.cap.lam, EXTRA_STEP_LAMBDA), optimizer=party.optimizer,
                                         max_steps=pos.cap.max_extra_steps)
            wrong_after, _ = module_errors(pos.module, marks)
            samples = party.samples_processed - self.samples0[pos.owner]
            wm = kc = None
            if pos.cap.enabled:
                sk = derive_stage_key(self.identities[pos.owner], self.ledger.run_id, r, pos.position,
                                      self.ledger.anchor(r))
                wm = pos.cap.mark_params(module_layout(pos.module), r, extra).to_json()
                kc = sk.commitment
            entry = self.ledger.draft_stage(
                round=r, position=pos.position, start=self.starts[pos.position], end=module_commitment(pos.module),
                transcripts=party.transcript_digests(), watermark=wm, key_commitment=kc,
                metrics={"samples": samples, "flops_fwd_bwd": pos.flops_per_sample * samples,
                         "steps": party.steps_taken - self.steps0[pos.owner], "extra_watermark_steps": extra},
            )
            committed = self.ledger.stage(r, pos.position)
            if committed is not None:
                # Redone after a crash between this round's ledger commit and its checkpoint: the redo must
                # reproduce the committed entry byte for byte (it chains to that entry's prev, not the head).
                entry = dataclasses.replace(entry, prev=committed.prev)
                if entry.signed(self.identities[pos.owner]) != committed:
                    raise LedgerError(
                        f"round {r} was redone after an interruption but stage ({r}, {pos.position}) differs "
                        "from the entry already committed (training was not reproduced exactly); the ledger "
                        "cannot hold both: restore the round's checkpoint or start a new run")
            written = self.ledger.append(entry.signed(self.identities[pos.owner]), allow_identical=True)
            report[str(pos.position)] = {
                "party": pos.plan_party, "bits": total, "ber_before_extra": wrong_before / total if total else None,
                "ber": wrong_after / total if total else None, "extra_steps": extra, "committed": written,
            }
        for party in parties.values():
            party.step_hooks = []
        metrics["provenance"] = report
        if any(v["extra_steps"] for v in report.values()) and "test_acc" in metrics:
            # the extra steps changed the weights that are checkpointed and delivered: report their accuracy
            metrics["test_acc_before_extra_watermark_steps"] = metrics["test_acc"]
            metrics["test_acc"] = self.session.test_accuracy()

    def on_run_end(self, parties: dict[str, Any]) -> None:
        """Closing entry signed by every party (no-op when already closed)."""
        if self.ledger.closed:
            return
        closing = self.ledger.closing_body()
        self.ledger.close([sign_multi(self.identities[n], closing) for n in self.names])


def default_hooks(config: RunConfig, run_dir: Path, session: Any, *, new_run: bool) -> Any:
    """The run's round hooks, or ``None`` when provenance is off."""
    if not config.provenance:
        return None
    return ProvenanceHooks(config, run_dir, session, new_run=new_run)
