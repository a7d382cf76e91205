"""Ledger forgery and tampering (DESIGN §7, issue 6): tampered copies of an honest run, each checked by
:func:`clicooper.provenance.verify_run` (and, optionally, the ``clicooper verify`` command).

The honest run is **never modified**: every case is built in a fresh temporary copy (``checkpoints/``
left out) and the honest ledger's bytes are compared before and after. The headline is the share of
cases ``verify`` rejects (target 100 %), with the failing checks per case.

Cases (who could do it): forged signature (outsider), reordered entries, substituted entry (by another
party; and re-signed by its own author after the fact), skipped entry, replayed entry (same run; and a
genuinely signed entry of *another run with the same keys*), truncated ledger (no closing; last round
cut), swapped and altered segment files, a trainer claiming another trainer's stage, the DO forging a
trainer's signature in the genesis, the DO writing a whole ledger with a trainer key it made up, a
non-UTF-8 line, a half-written (torn) closing line.

Trusted keys: ``verify_run`` is called with the honest parties' public keys known out of band (what the
CLI reads from ``RUN/keys``). The made-up-trainer ledger is self-consistent; it is caught **only** against
trusted keys — the case also reports the verdict without them. A torn line appended after a complete,
closed ledger is not a tamper (it is what a crash mid-append leaves and is ignored with a note); it is
reported separately as ``benign`` and not counted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from clicooper.attacks.base import AttackResult, LevelResult, register, require

ALL_CASES = ("forged-signature", "reordered", "substituted", "substituted-resigned", "skipped",
             "replayed", "replayed-other-run", "truncated-closing", "truncated-round", "swapped-segments",
             "altered-segment", "claims-another-stage", "do-forges-genesis-signature", "do-made-up-trainer",
             "non-utf8-line", "half-written-closing")


@dataclass(frozen=True)
class ForgeryConfig:
    """Settings of the forgery attack."""

    cases: tuple[str, ...] = ALL_CASES
    cli: bool = True  # also run ``clicooper verify`` on each tampered copy (exit code)

    def __post_init__(self) -> None:
        bad = [c for c in self.cases if c not in ALL_CASES]
        require(not bad, f"unknown forgery cases {bad}; choose from {', '.join(ALL_CASES)}")


@dataclass
class Case:
    """One tampered copy: its ledger lines and presented segments (position → state dict)."""

    lines: list[bytes]
    segments: dict[int, dict[str, torch.Tensor]]
    raw: bytes | None = None  # exact ledger bytes when lines cannot express it (torn tail)
    trusted: dict[str, bytes] | None = None  # None: use the honest run's keys
    note: str = ""


class _Honest:
    """The honest run, read once (nothing here writes to it)."""

    def __init__(self, run_dir: Path) -> None:
        from clicooper import rundir
        from clicooper.cli_provenance import load_segments
        from clicooper.provenance import load_identity
        from clicooper.provenance.ledger import read_ledger

        self.run = run_dir
        self.ledger = run_dir / rundir.LEDGER
        require(self.ledger.is_file(), f"{self.ledger} not found: train the run with provenance on")
        self.bytes = self.ledger.read_bytes()
        self.lines = self.bytes.rstrip(b"\n").split(b"\n")
        self.entries, _ = read_ledger(self.ledger)
        self.segments = load_segments(run_dir)
        g = self.entries[0]
        self.genesis = g
        # the parties' keys: the forgers below use only the key of the party they play
        self.ids = {p.name: load_identity(run_dir / rundir.KEYS / f"{p.name}.key") for p in g.parties}  # type: ignore[union-attr]
        self.trusted = {n: i.public_key for n, i in self.ids.items()}
        self.owner = {pos: p.name for p in g.parties for pos in p.positions}  # type: ignore[union-attr]
        self.positions = sorted(self.owner)

    def idx(self, r: int, p: int) -> int:
        from clicooper.provenance.entries import StageEntry

        return next(i for i, e in enumerate(self.entries) if isinstance(e, StageEntry) and e.stage == (r, p))


def _line(e: Any) -> bytes:
    from clicooper.provenance.canonical import canonical_json

    return canonical_json(e.to_json())


def _trainer_positions(h: _Honest) -> list[int]:
    return [p for p in h.positions if h.owner[p] != "DO"]


def _other_run(h: _Honest, tmp: Path, ids: dict[str, Any]) -> Any:
    """A genuine ledger of *another* run signed with ``ids``, over copies of the run's segments."""
    from clicooper.provenance.simulate import simulate_run
    from clicooper.runs import load_run

    handle = load_run(h.run)
    mods = {pp.position: handle.modules[pp.party] for pp in handle.plan.parties}
    segs = [torch.nn.Sequential(*[m for m in mods[p]]) for p in h.positions]
    segs = [_clone(s) for s in segs]
    return simulate_run(tmp / f"other-{len(list(tmp.iterdir()))}.jsonl", segs,
                        rounds=int(h.genesis.planned_rounds), identities=ids, steps_per_round=1)  # type: ignore[union-attr]


def _clone(m: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(m)


def build_case(name: str, h: _Honest, tmp: Path) -> Case:
    """The tampered ledger lines / segments of case ``name``."""
    from clicooper.provenance.entries import StageEntry, sign_multi

    lines, segs = list(h.lines), dict(h.segments)
    t1, t2 = _trainer_positions(h)[:2] if len(_trainer_positions(h)) >= 2 else (_trainer_positions(h)[0],) * 2
    last_round = max(e.round for e in h.entries if isinstance(e, StageEntry))
    if name == "forged-signature":  # an outsider alters T1's entry bytes in its signature
        i = h.idx(0, t1)
        e = h.entries[i]
        sig = bytearray(e.signature)  # type: ignore[union-attr]
        sig[5] ^= 0x40
        lines[i] = _line(dataclasses.replace(e, signature=bytes(sig)))  # type: ignore[type-var]
        return Case(lines, segs)
    if name == "reordered":
        a, b = h.idx(0, t1), h.idx(0, t2 if t2 != t1 else h.positions[0])
        lines[a], lines[b] = lines[b], lines[a]
        return Case(lines, segs)
    if name in ("substituted", "substituted-resigned"):
        i = h.idx(last_round, t1)
        e = h.entries[i]
        inflated = dataclasses.replace(e, metrics={**e.metrics, "samples": 10**9})  # type: ignore[type-var]
        if name == "substituted-resigned":  # the author rewrites its own committed entry
            inflated = inflated.signed(h.ids[h.owner[t1]])
        lines[i] = _line(inflated)
        return Case(lines, segs, note="credit inflated to 10^9 samples")
    if name == "skipped":
        del lines[h.idx(0, t2)]
        return Case(lines, segs)
    if name == "replayed":  # the last entry of round 0 again at the start of round 1
        i = h.idx(0, h.positions[-1])
        lines.insert(i + 1, lines[i])
        return Case(lines, segs)
    if name == "replayed-other-run":  # same keys, same stage, genuinely signed, other run (nonce)
        other = _other_run(h, tmp, h.ids)
        o_lines = Path(other.ledger.path).read_bytes().rstrip(b"\n").split(b"\n")
        i = h.idx(last_round, t2)
        lines[i] = o_lines[i]
        return Case(lines, segs, note="entry taken from a genuine ledger of another run with the same keys")
    if name == "truncated-closing":
        return Case(lines[:-1], segs)
    if name == "truncated-round":  # last round and closing cut; segments of the last round presented
        return Case(lines[:h.idx(last_round, h.positions[0])], segs)
    if name == "swapped-segments":
        segs[t1], segs[t2] = h.segments[t2], h.segments[t1]
        return Case(lines, segs)
    if name == "altered-segment":
        sd = {k: v.clone() for k, v in h.segments[t2].items()}
        k0 = sorted(sd)[0]
        sd[k0].view(-1)[0] += 1e-6  # one weight nudged
        segs[t2] = sd
        return Case(lines, segs)
    if name == "claims-another-stage":  # T2 puts its name on T1's stage and signs it as itself
        i = h.idx(last_round, t1)
        e = h.entries[i]
        other = h.ids[h.owner[t2]]
        lines[i] = _line(dataclasses.replace(e, party_id=other.party_id).signed(other))  # type: ignore[type-var]
        return Case(lines, segs)
    if name == "do-forges-genesis-signature":  # the DO cannot make T1 sign the genesis
        g = h.genesis
        t1_id = h.ids[h.owner[t1]].party_id
        fake = dataclasses.replace(sign_multi(h.ids["DO"], g), party_id=t1_id)
        lines[0] = _line(g.with_signatures([s for s in g.signatures if s.party_id != t1_id] + [fake]))  # type: ignore[union-attr]
        return Case(lines, segs)
    if name == "do-made-up-trainer":  # a whole, self-consistent ledger with a T1 key the DO generated
        from clicooper.provenance import Identity

        fake_ids = {**h.ids, h.owner[t1]: Identity.generate()}
        other = _other_run(h, tmp, fake_ids)
        f_lines = Path(other.ledger.path).read_bytes().rstrip(b"\n").split(b"\n")
        f_segs = {p: {k: v.detach().clone() for k, v in m.state_dict().items()} for p, m in other.segments.items()}
        return Case(f_lines, f_segs, note="self-consistent; detectable only against trusted (out-of-band) keys")
    if name == "non-utf8-line":
        i = h.idx(0, t1)
        b = bytearray(lines[i])
        b[len(b) // 2] = 0xFF
        lines[i] = bytes(b)
        return Case(lines, segs)
    if name == "half-written-closing":  # a crash mid-append of the closing: torn, no newline
        raw = b"".join(x + b"\n" for x in lines[:-1]) + lines[-1][: len(lines[-1]) // 2]
        return Case(lines, segs, raw=raw)
    if name == "benign-torn-after-closing":
        raw = h.bytes + lines[-1][: len(lines[-1]) // 3]
        return Case(lines, segs, raw=raw)
    raise AssertionError(name)


def _materialise(h: _Honest, case: Case, dst: Path) -> None:
    """A run-directory copy holding the tampered ledger and segments (for the CLI)."""
    from safetensors.torch import save_file

    from clicooper import rundir
    from clicooper.runs import model_file

    shutil.copytree(h.run, dst, ignore=shutil.ignore_patterns("checkpoints", "secrets"))
    (dst / rundir.LEDGER).write_bytes(case.raw if case.raw is not None else b"".join(x + b"\n" for x in case.lines))
    plan = rundir.read_json(h.run / rundir.PLAN)
    for pp in plan["parties"]:
        pos = pp["position"]
        if pos in case.segments and case.segments[pos] is not h.segments.get(pos):
            sd = {k: v.detach().contiguous() for k, v in case.segments[pos].items()}
            save_file(sd, str(dst / rundir.MODEL_DIR / model_file(pp["party"])))


@register("forgery")
class ForgeryAttack:
    """Ledger forgery and tampering against ``verify`` (see module docstring)."""

    name: ClassVar[str] = "forgery"
    knowledge: ClassVar[tuple[str, ...]] = ("outsider", "cheating trainer", "data owner")

    def __init__(self, **config: Any) -> None:
        if "cases" in config:
            config["cases"] = tuple(config["cases"])
        self._config = ForgeryConfig(**config)

    @property
    def config(self) -> ForgeryConfig:
        """The validated config."""
        return self._config

    def run(self, views: Any) -> AttackResult:
        """Build every case from the honest run directory ``views`` (a path) and verify it."""
        from clicooper.provenance import verify_run

        t0 = time.perf_counter()
        h = _Honest(Path(views))
        before = hashlib.sha256(h.bytes).hexdigest()
        honest = verify_run(h.ledger, h.segments, trusted_keys=h.trusted)
        rows: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory(prefix="clicooper-forgery-") as td:
            tmp = Path(td)
            for name in (*self.config.cases, "benign-torn-after-closing"):
                case = build_case(name, h, tmp)
                path = tmp / f"{name}.jsonl"
                path.write_bytes(case.raw if case.raw is not None else b"".join(x + b"\n" for x in case.lines))
                rep = verify_run(path, case.segments, trusted_keys=h.trusted)
                row: dict[str, Any] = {"case": name, "rejected": not rep.ok,
                                       "checks": sorted(rep.checks_failed()),
                                       "failures": [str(f) for f in rep.failures][:6], "notes": rep.notes,
                                       "note": case.note}
                if name == "do-made-up-trainer":
                    plain = verify_run(path, case.segments)
                    row["rejected_without_trusted_keys"] = not plain.ok
                if self.config.cli:
                    row["cli_exit"] = _cli_verify(h, case, tmp / f"run-{name}")
                rows.append(row)
        after = hashlib.sha256(h.ledger.read_bytes()).hexdigest()
        require(before == after, "the honest ledger changed during the forgery attack (must never happen)")
        counted = [r for r in rows if not r["case"].startswith("benign")]
        share = sum(r["rejected"] for r in counted) / len(counted)
        info = {"run_dir": str(h.run), "honest_ok": honest.ok, "honest_failures": [str(f) for f in honest.failures],
                "cases": rows, "rejected": sum(r["rejected"] for r in counted), "total": len(counted),
                "honest_ledger_unchanged": before == after, "config": asdict(self.config),
                "seconds": time.perf_counter() - t0}
        lvl = LevelResult("rejected_share", share, 1.0, True, {
            "not_rejected": [r["case"] for r in counted if not r["rejected"]]})
        # "beats floor" means strictly above 1.0, impossible: the floor here is the target, reached at 1.0
        return AttackResult("forgery", {"verify": lvl}, info)


def _cli_verify(h: _Honest, case: Case, dst: Path) -> int:
    """Exit code of ``clicooper verify`` on a materialised copy (trusted keys = the copy's keys/)."""
    from typer.testing import CliRunner

    from clicooper.cli import app
    from clicooper.cli_provenance import register as reg

    reg(app)
    _materialise(h, case, dst)
    res = CliRunner().invoke(app, ["verify", str(dst), "--json"])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        return -1  # a traceback: never acceptable
    return int(res.exit_code)


def run_forgery(run_dir: str | Path, out: str | Path | None = None, **config: Any) -> dict[str, Any]:
    """Run the forgery attack on ``run_dir`` (never modified); write the JSON to ``out`` when given."""
    obj = ForgeryAttack(**config).run(Path(run_dir)).to_json()
    if out is not None:
        Path(out).write_text(json.dumps(obj, indent=1) + "\n", "utf-8")
    return obj


__all__ = ["ALL_CASES", "ForgeryAttack", "ForgeryConfig", "build_case", "run_forgery"]
