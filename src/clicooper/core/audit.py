"""``clicooper audit RUN --party T1 [--stages …] [--fraction f]``: re-execute sampled stages of a trainer
(Proof-of-Learning, Jia et al., S&P 2021, §4.2: the verifier samples update intervals after the prover
committed to them and reproduces them from the logged checkpoint and data).

For each audited stage (r, p) of ``party``:

1. the ledger's stage entry and the chain (``verify_run``: signatures, ``prev``, start = previous end,
   transcripts equal at both ends of every link) — the entry fixes what the party claims;
2. the party's log (:mod:`clicooper.core.audit_log`) must hash to the entry's transcript digests (so the
   received messages are what the neighbours signed they sent, the sent ones what the party signed), and
   its checkpoints to the entry's ``metrics["audit"]`` commitments, the first one to the entry's ``start``;
3. a share ``fraction`` of the intervals between checkpoints (at least one), drawn with ``seed`` *after*
   the commitments, is replayed by an honest trainer (:mod:`clicooper.core.replay`): every sent message and
   the next checkpoint must be reproduced, exactly or within ``tol``;
4. the round-end watermark steps are replayed from the last checkpoint and must reach the entry's ``end``.

Steps of a watermarked segment include the watermark term, so the replay needs the party's marks: from its
key file (it cooperates) or a reveal file of the stages the round retains (``reveal`` — the audit then
publishes those keys, as any dispute does). A stage that cannot be replayed fails. What an audit does not
cover (a trainer that deviates only outside the sampled intervals, …): docs/malicious.md.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clicooper import rundir
from clicooper.config import make_config
from clicooper.core.audit_log import optimizer_commitment, round_dir
from clicooper.core.builder import build_trainer
from clicooper.core.replay import StepReplay, rel_error, replay_steps, step_files, transcript_digests
from clicooper.errors import LedgerError, RunDirError
from clicooper.models.blueprint import blueprint_for
from clicooper.models.partition import Plan
from clicooper.provenance.commitments import module_commitment
from clicooper.provenance.entries import StageEntry
from clicooper.provenance.ledger import ledger_anchor, read_ledger
from clicooper.provenance.marks import Mark, stage_key_from_reveal
from clicooper.provenance.stages import EXTRA_STEP_LAMBDA, capacity_for, num_params
from clicooper.provenance.verify import verify_run
from clicooper.provenance.watermark import WatermarkTerm, embed_until_zero, module_layout

#: checks of verify_run that an unfinished (e.g. stopped) run fails without any stage being wrong
_RUN_LEVEL = {"closing-missing"}


@dataclass
class StageAudit:
    """The audit of one stage: each check's outcome, the replayed intervals, the verdict."""

    round: int
    position: int
    checks: dict[str, Any] = field(default_factory=dict)
    intervals: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every check held."""
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {"round": self.round, "position": self.position, "ok": self.ok, "failures": self.failures,
                "checks": self.checks, "intervals": self.intervals, "seconds": self.seconds}


@dataclass
class AuditReport:
    """The audit of one party: its stages."""

    party: str
    fraction: float
    tol: float
    stages: list[StageAudit] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every audited stage passed (and there was one)."""
        return bool(self.stages) and all(s.ok for s in self.stages)

    def to_json(self) -> dict[str, Any]:
        """JSON form (``clicooper audit --json``)."""
        return {"party": self.party, "ok": self.ok, "fraction": self.fraction, "tolerance": self.tol,
                "seconds": self.seconds, "stages": [s.to_json() for s in self.stages]}


class _Run:
    """A run directory as the auditor reads it: config, plan, ledger, the party's genesis record."""

    def __init__(self, run: Path, party: str) -> None:
        self.dir = Path(run)
        self.config = make_config(**rundir.read_json(self.dir / rundir.CONFIG))
        self.plan = Plan.from_dict(rundir.read_json(self.dir / rundir.PLAN))
        self.ledger = self.dir / rundir.LEDGER
        if not self.ledger.is_file():
            raise RunDirError(f"{self.ledger} not found: an audit needs the run's ledger (provenance on)")
        self.entries, _ = read_ledger(self.ledger)
        self.genesis = self.entries[0]
        rec = next((p for p in self.genesis.parties if p.name == party), None)  # type: ignore[union-attr]
        if rec is None or party == "DO":
            raise LedgerError(f"{party} is not a trainer of this run's genesis")
        self.party, self.record = party, rec
        self.honest = self.config.model_copy(update={"adversary": None})  # replay the protocol, not a deviation
        tail = self.plan.tail
        if tail is None:
            raise LedgerError("audits replay U-shape runs only (config.audit requires it)")
        m = self.config.labels.expansion if self.config.obfuscate_labels else 1
        bp = blueprint_for(self.honest, tuple(self.plan.input_shape), int(tail.output_shape[0]) // m, plan=self.plan)
        self._module = bp.modules()[party]

    def stages(self) -> list[StageEntry]:
        return [e for e in self.entries if isinstance(e, StageEntry) and e.party_id == self.record.party_id]

    def fresh_trainer(self) -> Any:
        """An honest trainer of ``party`` with the run's architecture (weights loaded by the caller)."""
        return build_trainer(self.honest, self.plan, {self.party: copy.deepcopy(self._module)}, self.party,
                             device="cpu")


def _marks(run: _Run, trainer: Any, entry: StageEntry, keys: Any) -> tuple[list[Mark], Any]:
    """The marks of the stage's round (retained rounds included), from the party's key or reveal."""
    cap = capacity_for(run.config, num_params(trainer.module))
    rounds = cap.retained_for(entry.round)
    if not rounds:
        return [], cap
    if keys is None:
        raise LedgerError(f"stage ({entry.round}, {entry.position}) is watermarked: the replay needs the "
                          "party's marks; give its key file or a reveal of the retained stages")
    layout = module_layout(trainer.module)
    out = []
    for q in rounds:
        sig = keys(q, entry.position)
        sk = stage_key_from_reveal(run.record.public_key, sig, run.genesis.run_id, q, entry.position,
                                   ledger_anchor(run.entries, q))
        out.append(Mark.derive(sk, cap.mark_params(layout, q)))
    return out, cap


def _load(trainer: Any, path: Path) -> None:
    tensors, meta = rundir.load_tensors(path)
    trainer.module.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("w.")})
    opt = {k[2:]: v for k, v in tensors.items() if k.startswith("o.")}
    rundir.restore_optimizer(trainer.optimizer, opt, meta)


def _commitment_checks(audit: StageAudit, entry: StageEntry, log: Path) -> list[list[Any]]:
    """Transcripts and checkpoint commitments (exact); returns the committed checkpoints."""
    digests, nbytes = transcript_digests(log)
    audit.checks["message_bytes"] = nbytes
    claimed = {k: v for k, v in entry.transcripts.items() if not k.split(":")[0].isdigit()}
    if digests != claimed:
        audit.failures.append("the logged messages do not hash to the entry's transcript digests")
    committed = (entry.metrics.get("audit") or {}).get("checkpoints")
    if not committed:
        audit.failures.append("the stage entry commits to no audit checkpoints")
        return []
    if committed[0][0] != 0 or committed[0][1] != entry.start:
        audit.failures.append("the first checkpoint is not the entry's start commitment")
    logged = rundir.read_json(log / "index.json").get("checkpoints")
    if logged != committed:
        audit.failures.append("the log's checkpoints differ from the ones the entry commits to")
    return committed


def _replay_interval(run: _Run, log: Path, marks: list[Mark], cap: Any, a: list[Any], b: list[Any],
                     tol: float) -> dict[str, Any]:
    trainer = run.fresh_trainer()
    _load(trainer, log / f"ckpt_{a[0]}.safetensors")
    if module_commitment(trainer.module) != a[1] or optimizer_commitment(trainer.optimizer) != a[2]:
        return {"from": a[0], "to": b[0], "status": "fail", "reason": "checkpoint file ≠ its commitment"}
    if marks:
        trainer.step_hooks = [WatermarkTerm(trainer.module, marks, lam=cap.lam)]
    res = StepReplay()
    replay_steps(trainer, [(s, f) for s, f in step_files(log) if a[0] <= s < b[0]], res)
    nxt = run.fresh_trainer()
    _load(nxt, log / f"ckpt_{b[0]}.safetensors")
    exact = module_commitment(trainer.module) == b[1] and res.max_error == 0
    werr = rel_error(_flat(trainer.module), _flat(nxt.module))
    ok = exact or (res.max_error <= tol and werr <= tol)
    return {"from": a[0], "to": b[0], "messages": res.messages, "max_message_error": res.max_error,
            "weights_error": werr, "status": "exact" if exact else ("tolerance" if ok else "fail"),
            "first_mismatch": res.first_mismatch}


def _flat(module: Any) -> Any:
    import torch

    return torch.cat([t.detach().flatten().double() for t in module.state_dict().values()])


def _end_check(run: _Run, log: Path, entry: StageEntry, marks: list[Mark], cap: Any, last: list[Any]) -> str | None:
    trainer = run.fresh_trainer()
    _load(trainer, log / f"ckpt_{last[0]}.safetensors")
    if marks:
        embed_until_zero(trainer.module, marks, lam=max(cap.lam, EXTRA_STEP_LAMBDA), optimizer=trainer.optimizer,
                         max_steps=cap.max_extra_steps)
    if module_commitment(trainer.module) != entry.end:
        return "the round-end watermark steps from the last checkpoint do not reach the entry's end commitment"
    return None


def audit_stage(run: _Run, entry: StageEntry, *, fraction: float, rng: random.Random, tol: float, keys: Any,
                bad_entries: set[int]) -> StageAudit:
    """Audit one stage (module docstring, steps 1–4)."""
    t0 = time.perf_counter()
    audit = StageAudit(entry.round, entry.position)
    if run.entries.index(entry) in bad_entries:
        audit.failures.append("the ledger's checks fail at this entry (verify)")
    log = round_dir(run.dir, run.party, entry.round)
    if not (log / "index.json").is_file():
        audit.failures.append(f"no audit log of round {entry.round} ({log}): not kept, expired or withheld")
        return audit
    committed = _commitment_checks(audit, entry, log)
    if len(committed) < 2:
        audit.failures.append("fewer than two checkpoints: nothing to replay")
        return audit
    marks, cap = _marks(run, run.fresh_trainer(), entry, keys)
    pairs = list(zip(committed[:-1], committed[1:], strict=True))
    k = max(1, math.ceil(fraction * len(pairs)))
    for a, b in sorted(rng.sample(pairs, k)):
        res = _replay_interval(run, log, marks, cap, a, b, tol)
        audit.intervals.append(res)
        if res["status"] == "fail":
            audit.failures.append(f"interval {a[0]}–{b[0]} not reproduced: {res.get('first_mismatch') or res}")
    end = _end_check(run, log, entry, marks, cap, committed[-1])
    if end:
        audit.failures.append(end)
    audit.checks.update(intervals_total=len(pairs), intervals_replayed=k)
    audit.seconds = time.perf_counter() - t0
    return audit


def audit_run(run_dir: str | Path, party: str, *, stages: list[tuple[int, int]] | None = None,
              fraction: float = 0.1, seed: int = 0, tol: float = 1e-4, keys: Any = None) -> AuditReport:
    """Audit ``party``'s stages (all of them, or ``stages``) of ``run_dir`` (module docstring).

    ``keys(round, position) → signature bytes``: the party's watermark signatures (from its key file or a
    reveal file), needed for watermarked segments."""
    if not 0 < fraction <= 1:
        raise LedgerError(f"--fraction must be in (0, 1], got {fraction}")
    t0 = time.perf_counter()
    run = _Run(Path(run_dir), party)
    report = verify_run(run.ledger)
    bad = {f.index for f in report.failures if f.index is not None and f.check not in _RUN_LEVEL}
    chosen = [e for e in run.stages() if stages is None or e.stage in stages]
    if not chosen:
        raise LedgerError(f"no committed stage of {party} to audit" + (f" among {stages}" if stages else ""))
    out = AuditReport(party, fraction, tol)
    rng = random.Random(seed)
    for e in chosen:
        out.stages.append(audit_stage(run, e, fraction=fraction, rng=rng, tol=tol, keys=keys, bad_entries=bad))
    out.seconds = time.perf_counter() - t0
    return out


def keys_from_identity(identity: Any, run_dir: str | Path) -> Any:
    """``keys`` for :func:`audit_run` from the party's own key (the party cooperates with the audit)."""
    from clicooper.provenance.marks import derive_stage_key

    entries, _ = read_ledger(Path(run_dir) / rundir.LEDGER)
    run_id = entries[0].run_id  # type: ignore[union-attr]
    return lambda q, p: derive_stage_key(identity, run_id, q, p, ledger_anchor(entries, q)).signature


def keys_from_reveal(reveal: dict[str, Any]) -> Any:
    """``keys`` for :func:`audit_run` from a reveal file's object (``clicooper reveal``)."""
    sigs = {(int(s["round"]), int(s["position"])): bytes.fromhex(s["signature"]) for s in reveal.get("stages", [])}

    def keys(q: int, p: int) -> bytes:
        if (q, p) not in sigs:
            raise LedgerError(f"the reveal has no signature of stage ({q}, {p}), which the audited round retains")
        return sigs[(q, p)]
    return keys
