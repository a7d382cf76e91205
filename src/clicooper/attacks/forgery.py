"""Ledger forgery and tampering (docs/design/metrics.md, issue 6): tampered copies of an honest run, each checked by
:func:`clicooper.provenance.verify_run` (and, optionally, for the exit status of ``clicooper verify``).

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

import copy
import dataclasses
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import save_file

from clicooper import rundir
from clicooper.attacks.base import AttackResult, LevelResult, register, require
from clicooper.errors import CliCooperError
from clicooper.provenance import Identity, load_identity, verify_run
from clicooper.provenance.canonical import canonical_json
from clicooper.provenance.delivered import load_segments, verify_delivered, verify_exit_code
from clicooper.provenance.entries import StageEntry, sign_multi
from clicooper.provenance.ledger import read_ledger
from clicooper.provenance.simulate import simulate_run
from clicooper.rundir import model_file
from clicooper.runs import load_run

ALL_CASES = ("forged-signature", "reordered", "substituted", "substituted-resigned", "skipped",
             "replayed", "replayed-other-run", "truncated-closing", "truncated-round", "swapped-segments",
             "altered-segment", "claims-another-stage", "do-forges-genesis-signature", "do-made-up-trainer",
             "non-utf8-line", "half-written-closing")


@dataclass(frozen=True)
class ForgeryConfig:
    """Settings of the forgery attack."""

    cases: tuple[str, ...] = ALL_CASES
    # also materialise each tampered copy as a run directory and record the exit status `clicooper verify`
    # gives on it (``cli_exit``): the command's own library calls, verify_delivered + verify_exit_code
    cli: bool = True

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

    def ledger_bytes(self) -> bytes:
        """The tampered ledger file's bytes."""
        return self.raw if self.raw is not None else b"".join(x + b"\n" for x in self.lines)


class _Honest:
    """The honest run, read once (nothing here writes to it)."""

    def __init__(self, run_dir: Path) -> None:
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
        tp = [p for p in self.positions if self.owner[p] != "DO"]
        self.t1, self.t2 = tp[:2] if len(tp) >= 2 else (tp[0],) * 2  # the two trainer positions attacked
        self.last_round = max(e.round for e in self.entries if isinstance(e, StageEntry))

    def idx(self, r: int, p: int) -> int:
        return next(i for i, e in enumerate(self.entries) if isinstance(e, StageEntry) and e.stage == (r, p))


def _line(e: Any) -> bytes:
    return canonical_json(e.to_json())


def _other_run(h: _Honest, tmp: Path, ids: dict[str, Any]) -> Any:
    """A genuine ledger of *another* run signed with ``ids``, over copies of the run's segments."""
    handle = load_run(h.run)
    mods = {pp.position: handle.modules[pp.party] for pp in handle.plan.parties}
    segs = [copy.deepcopy(torch.nn.Sequential(*[m for m in mods[p]])) for p in h.positions]
    return simulate_run(tmp / f"other-{len(list(tmp.iterdir()))}.jsonl", segs,
                        rounds=int(h.genesis.planned_rounds), identities=ids, steps_per_round=1)  # type: ignore[union-attr]


# the cases: each builds its tampered copy from the honest run (lines and segment dicts are copies) -------


def _forged_signature(h: _Honest, tmp: Path) -> Case:  # an outsider alters T1's entry bytes in its signature
    lines, i = list(h.lines), h.idx(0, h.t1)
    e = h.entries[i]
    sig = bytearray(e.signature)  # type: ignore[union-attr]
    sig[5] ^= 0x40
    lines[i] = _line(dataclasses.replace(e, signature=bytes(sig)))  # type: ignore[type-var]
    return Case(lines, dict(h.segments))


def _reordered(h: _Honest, tmp: Path) -> Case:
    lines = list(h.lines)
    a, b = h.idx(0, h.t1), h.idx(0, h.t2 if h.t2 != h.t1 else h.positions[0])
    lines[a], lines[b] = lines[b], lines[a]
    return Case(lines, dict(h.segments))


def _substituted(h: _Honest, tmp: Path, *, resigned: bool = False) -> Case:
    lines, i = list(h.lines), h.idx(h.last_round, h.t1)
    e = h.entries[i]
    inflated = dataclasses.replace(e, metrics={**e.metrics, "samples": 10**9})  # type: ignore[type-var]
    if resigned:  # the author rewrites its own committed entry
        inflated = inflated.signed(h.ids[h.owner[h.t1]])
    lines[i] = _line(inflated)
    return Case(lines, dict(h.segments), note="credit inflated to 10^9 samples")


def _skipped(h: _Honest, tmp: Path) -> Case:
    lines = list(h.lines)
    del lines[h.idx(0, h.t2)]
    return Case(lines, dict(h.segments))


def _replayed(h: _Honest, tmp: Path) -> Case:  # the last entry of round 0 again at the start of round 1
    lines, i = list(h.lines), h.idx(0, h.positions[-1])
    lines.insert(i + 1, lines[i])
    return Case(lines, dict(h.segments))


def _replayed_other_run(h: _Honest, tmp: Path) -> Case:  # same keys, same stage, genuinely signed, other run
    other = _other_run(h, tmp, h.ids)
    o_lines = Path(other.ledger.path).read_bytes().rstrip(b"\n").split(b"\n")
    lines, i = list(h.lines), h.idx(h.last_round, h.t2)
    lines[i] = o_lines[i]
    return Case(lines, dict(h.segments), note="entry taken from a genuine ledger of another run with the same keys")


def _truncated_round(h: _Honest, tmp: Path) -> Case:  # last round and closing cut; last segments presented
    return Case(list(h.lines)[:h.idx(h.last_round, h.positions[0])], dict(h.segments))


def _swapped_segments(h: _Honest, tmp: Path) -> Case:
    segs = dict(h.segments)
    segs[h.t1], segs[h.t2] = h.segments[h.t2], h.segments[h.t1]
    return Case(list(h.lines), segs)


def _altered_segment(h: _Honest, tmp: Path) -> Case:
    segs = dict(h.segments)
    sd = {k: v.clone() for k, v in h.segments[h.t2].items()}
    sd[sorted(sd)[0]].view(-1)[0] += 1e-6  # one weight nudged
    segs[h.t2] = sd
    return Case(list(h.lines), segs)


def _claims_another_stage(h: _Honest, tmp: Path) -> Case:  # T2 puts its name on T1's stage, signs as itself
    lines, i = list(h.lines), h.idx(h.last_round, h.t1)
    other = h.ids[h.owner[h.t2]]
    lines[i] = _line(dataclasses.replace(h.entries[i], party_id=other.party_id).signed(other))  # type: ignore[type-var]
    return Case(lines, dict(h.segments))


def _do_forges_genesis_signature(h: _Honest, tmp: Path) -> Case:  # the DO cannot make T1 sign the genesis
    g, lines = h.genesis, list(h.lines)
    t1_id = h.ids[h.owner[h.t1]].party_id
    fake = dataclasses.replace(sign_multi(h.ids["DO"], g), party_id=t1_id)
    lines[0] = _line(g.with_signatures([s for s in g.signatures if s.party_id != t1_id] + [fake]))  # type: ignore[union-attr]
    return Case(lines, dict(h.segments))


def _do_made_up_trainer(h: _Honest, tmp: Path) -> Case:  # a self-consistent ledger with a T1 key the DO made
    other = _other_run(h, tmp, {**h.ids, h.owner[h.t1]: Identity.generate()})
    f_lines = Path(other.ledger.path).read_bytes().rstrip(b"\n").split(b"\n")
    f_segs = {p: {k: v.detach().clone() for k, v in m.state_dict().items()} for p, m in other.segments.items()}
    return Case(f_lines, f_segs, note="self-consistent; detectable only against trusted (out-of-band) keys")


def _non_utf8_line(h: _Honest, tmp: Path) -> Case:
    lines, i = list(h.lines), h.idx(0, h.t1)
    b = bytearray(lines[i])
    b[len(b) // 2] = 0xFF
    lines[i] = bytes(b)
    return Case(lines, dict(h.segments))


def _half_written_closing(h: _Honest, tmp: Path) -> Case:  # a crash mid-append of the closing: torn, no newline
    lines = list(h.lines)
    raw = b"".join(x + b"\n" for x in lines[:-1]) + lines[-1][: len(lines[-1]) // 2]
    return Case(lines, dict(h.segments), raw=raw)


def _benign_torn_after_closing(h: _Honest, tmp: Path) -> Case:
    lines = list(h.lines)
    return Case(lines, dict(h.segments), raw=h.bytes + lines[-1][: len(lines[-1]) // 3])


_BUILDERS: dict[str, Callable[[_Honest, Path], Case]] = {
    "forged-signature": _forged_signature, "reordered": _reordered, "substituted": _substituted,
    "substituted-resigned": lambda h, tmp: _substituted(h, tmp, resigned=True), "skipped": _skipped,
    "replayed": _replayed, "replayed-other-run": _replayed_other_run,
    "truncated-closing": lambda h, tmp: Case(list(h.lines)[:-1], dict(h.segments)),
    "truncated-round": _truncated_round, "swapped-segments": _swapped_segments,
    "altered-segment": _altered_segment, "claims-another-stage": _claims_another_stage,
    "do-forges-genesis-signature": _do_forges_genesis_signature, "do-made-up-trainer": _do_made_up_trainer,
    "non-utf8-line": _non_utf8_line, "half-written-closing": _half_written_closing,
    "benign-torn-after-closing": _benign_torn_after_closing,
}


def build_case(name: str, h: _Honest, tmp: Path) -> Case:
    """The tampered ledger lines / segments of case ``name``."""
    builder = _BUILDERS.get(name)
    if builder is None:
        raise AssertionError(name)
    return builder(h, tmp)


def _materialise(h: _Honest, case: Case, dst: Path) -> None:
    """A run-directory copy holding the tampered ledger and segments (what ``clicooper verify`` reads)."""
    shutil.copytree(h.run, dst, ignore=shutil.ignore_patterns("checkpoints", "secrets"))
    (dst / rundir.LEDGER).write_bytes(case.ledger_bytes())
    plan = rundir.read_json(h.run / rundir.PLAN)
    for pp in plan["parties"]:
        pos = pp["position"]
        if pos in case.segments and case.segments[pos] is not h.segments.get(pos):
            sd = {k: v.detach().contiguous() for k, v in case.segments[pos].items()}
            save_file(sd, str(dst / rundir.MODEL_DIR / model_file(pp["party"])))


def _verify_exit(h: _Honest, case: Case, dst: Path) -> int:
    """Exit status of ``clicooper verify DST`` on a materialised copy (trusted keys = the copy's keys/): the
    command's own calls (:func:`verify_delivered`, :func:`verify_exit_code`), and for an error it reports on
    one line, that error's exit code."""
    _materialise(h, case, dst)
    try:
        report, _ = verify_delivered(dst)
    except CliCooperError as e:
        return e.exit_code
    except Exception:  # noqa: BLE001 - a traceback from verify: never acceptable, recorded as -1
        return -1
    return verify_exit_code(report)


def _case_row(name: str, h: _Honest, tmp: Path, *, cli: bool) -> dict[str, Any]:
    """Build case ``name`` in ``tmp``, verify it against the honest keys and report the verdict."""
    case = build_case(name, h, tmp)
    path = tmp / f"{name}.jsonl"
    path.write_bytes(case.ledger_bytes())
    rep = verify_run(path, case.segments, trusted_keys=h.trusted)
    row: dict[str, Any] = {"case": name, "rejected": not rep.ok, "checks": sorted(rep.checks_failed()),
                           "failures": [str(f) for f in rep.failures][:6], "notes": rep.notes, "note": case.note}
    if name == "do-made-up-trainer":
        row["rejected_without_trusted_keys"] = not verify_run(path, case.segments).ok
    if cli:
        row["cli_exit"] = _verify_exit(h, case, tmp / f"run-{name}")
    return row


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
        t0 = time.perf_counter()
        h = _Honest(Path(views))
        before = hashlib.sha256(h.bytes).hexdigest()
        honest = verify_run(h.ledger, h.segments, trusted_keys=h.trusted)
        with tempfile.TemporaryDirectory(prefix="clicooper-forgery-") as td:
            rows = [_case_row(name, h, Path(td), cli=self.config.cli)
                    for name in (*self.config.cases, "benign-torn-after-closing")]
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


def run_forgery(run_dir: str | Path, out: str | Path | None = None, **config: Any) -> dict[str, Any]:
    """Run the forgery attack on ``run_dir`` (never modified); write the JSON to ``out`` when given."""
    obj = ForgeryAttack(**config).run(Path(run_dir)).to_json()
    if out is not None:
        Path(out).write_text(json.dumps(obj, indent=1) + "\n", "utf-8")
    return obj


__all__ = ["ALL_CASES", "ForgeryAttack", "ForgeryConfig", "build_case", "run_forgery"]
