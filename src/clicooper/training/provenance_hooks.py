"""Provenance round hooks of an in-process run: every party's key at hand, one ledger (docs/design/ledger.md#the-ledger).

:func:`default_hooks` returns a :class:`ProvenanceHooks` (a ``RoundHooks``) when ``config.provenance`` is
on. It follows the integration sequence of ``docs/provenance.md``; the rounds themselves are the stage
engine's (:mod:`clicooper.provenance.stages`), the same one a node runs:

- new run: one Ed25519 identity per party in ``RUN/keys/<name>.key`` (0600; in a distributed run each
  party keeps its own), the per-position watermark capacity in ``plan.json`` (``extra["watermark"]``), a
  DO-only dataset salt in ``RUN/secrets/dataset_salt`` and the genesis signed by every party; resume:
  ``Ledger.open`` (cuts a torn last line) and the saved keys;
- round start / end: :meth:`StageEngine.begin_round`, then :meth:`StageEngine.end_stage` per position in
  order; per-position BER and extra steps go into the round's metrics (``metrics["provenance"]``);
- run end: the closing entry, signed by every party (skipped if the ledger is already closed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clicooper import rundir
from clicooper.config import RunConfig
from clicooper.errors import LedgerError
from clicooper.provenance.accusation import draft_accusation
from clicooper.provenance.entries import entry_hash, sign_multi
from clicooper.provenance.identity import load_identity
from clicooper.provenance.ledger import Ledger
from clicooper.provenance.setup import genesis_body, key_path, load_or_create_identity
from clicooper.provenance.stages import StageEngine, positions_of


class ProvenanceHooks:
    """``RoundHooks`` keeping the ledger and embedding the watermarks (see module docstring)."""

    def __init__(self, config: RunConfig, run_dir: Path, session: Any, *, new_run: bool) -> None:
        self.config, self.run_dir, self.session = config, Path(run_dir), session
        plan = session.plan
        self.positions = positions_of(config, plan, session.modules)
        self.names = ["DO"] + [t.name for t in session.trainers]
        ledger_path = self.run_dir / rundir.LEDGER
        if new_run or not ledger_path.exists():
            (self.run_dir / rundir.KEYS).mkdir(mode=0o700, parents=True, exist_ok=True)
            # a genesis that crashed before being written keeps the keys already made
            self.identities = {n: load_or_create_identity(key_path(self.run_dir, n), create=True) for n in self.names}
            plan.extra["watermark"] = {str(p.position): p.cap.to_json() for p in self.positions if p.cap is not None}
            rundir.write_json(self.run_dir / rundir.PLAN, plan.to_dict())
            self.ledger = Ledger.create(ledger_path, self._genesis())
        else:
            self.identities = {n: load_identity(key_path(self.run_dir, n)) for n in self.names}
            self.ledger = Ledger.open(ledger_path)
            ids = {p.name: p.public_key for p in self.ledger.genesis.parties}
            for n, ident in self.identities.items():
                if ids.get(n) != ident.public_key:
                    raise LedgerError(f"key file {key_path(self.run_dir, n)} does not hold {n}'s genesis key")
        self.engine = StageEngine(self.ledger, self.positions, self.identities)

    def _genesis(self) -> Any:
        s = self.session
        body = genesis_body(self.config, self.run_dir, dataset=s.dataset, train_ids=s.train_ids, model=s.model,
                            positions=self.positions,
                            public_keys={n: i.public_key for n, i in self.identities.items()})
        return body.with_signatures([sign_multi(self.identities[n], body) for n in self.names])

    def on_round_start(self, r: int, parties: dict[str, Any]) -> None:
        """Marks, start commitments, fresh transcripts, watermark terms as step hooks."""
        self.engine.begin_round(r, parties)
        for log in getattr(self.session, "audit_logs", {}).values():  # core/audit_log.py (audit.enabled)
            log.begin_round(r)

    def on_round_end(self, r: int, parties: dict[str, Any], metrics: dict[str, Any]) -> None:
        """BER = 0 (bounded extra steps), then stage entries in position order; metrics["provenance"]."""
        logs = getattr(self.session, "audit_logs", {})
        report = {str(p.position): self.engine.end_stage(
            r, p.position, parties[p.owner], audit=logs[p.owner].end_round() if p.owner in logs else None)[1]
            for p in self.positions}
        self.engine.end_round(parties)
        metrics["provenance"] = report
        if any(v["extra_steps"] for v in report.values()) and "test_acc" in metrics:
            # the extra steps changed the weights that are checkpointed and delivered: report their accuracy
            metrics["test_acc_before_extra_watermark_steps"] = metrics["test_acc"]
            metrics["test_acc"] = self.session.test_accuracy()

    def accuse(self, alarm: Any) -> str:
        """The DO's signed accusation of ``alarm`` (parties/guard) appended to the ledger; its entry hash."""
        entry = draft_accusation(self.ledger, self.identities["DO"], round=alarm.round, step=alarm.step,
                                 suspects=list(alarm.suspects), detector=alarm.detector, evidence=alarm.evidence)
        self.ledger.append(entry)
        return entry_hash(entry)

    def on_run_end(self, parties: dict[str, Any]) -> None:
        """Closing entry signed by every party (no-op when already closed)."""
        if self.ledger.closed:
            return
        closing = self.ledger.closing_body()
        self.ledger.close([sign_multi(self.identities[n], closing) for n in self.names])


def default_hooks(config: RunConfig, run_dir: Path, session: Any, *, new_run: bool) -> ProvenanceHooks | None:
    """The run's round hooks, or ``None`` when provenance is off."""
    if not config.provenance:
        return None
    return ProvenanceHooks(config, run_dir, session, new_run=new_run)

