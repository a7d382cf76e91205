"""Tampered copies of the honest K = 2 vector run, each with the failures the spec predicts (§11).

Entry indices of ``honest-u2``: 0 genesis; round 0: 1 (DO head), 2 (T1), 3 (T2), 4 (DO tail); round 1: 5 … 8;
9 closing. A tamper that edits an entry "and re-signs" has the signer(s) of that entry sign the new body (an
insider, or a forger with the key); "rechained" means every later entry's ``prev`` is fixed and re-signed by
its owner, and the closing recomputed and signed by every party, as a consistent forger would.

Each expected failure is ``[check, entry index or null, consequential]``, in report order.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import refimpl as R
from vector_runs import HONEST, Run, build_run, closing_of, model_file, model_path

Failures = list[list[Any]]


def _copy(run: Run) -> Run:
    return copy.deepcopy(run)


def rechain(run: Run, start: int) -> Run:
    """Fix ``prev`` from entry ``start`` on, re-sign each stage by its named party, recompute the closing."""
    new = run.entries[:start]
    for e in run.entries[start:]:
        if e["type"] == "stage":
            new.append(R.sign_stage({**e, "prev": R.entry_hash(new[-1])}, run.key_of(e["party_id"])))
        elif e["type"] == "closing":
            new.append(closing_of(Run(run.spec, run.keys, run.owners, new)))
        else:
            new.append(e)
    run.entries = new
    return run


def _edit(run: Run, i: int, **fields: Any) -> Run:
    """Entry ``i`` with ``fields`` changed, re-signed by its party, and the ledger rechained after it."""
    run = _copy(run)
    run.entries[i] = {**run.entries[i], **fields}
    return rechain(run, i)


def _line_swap(run: Run, i: int, line: bytes) -> bytes:
    lines = run.ledger_bytes().split(b"\n")
    lines[i] = line
    return b"\n".join(lines)


class RawLedger(Run):
    """A run whose ledger file is given as bytes (an unreadable or non-canonical line)."""

    raw: bytes = b""

    def ledger_bytes(self) -> bytes:
        return self.raw


def _raw(run: Run, data: bytes) -> Run:
    out = RawLedger(run.spec, run.keys, run.owners, copy.deepcopy(run.entries), dict(run.files), run.segments)
    out.raw = data
    return out


def _files(run: Run, changes: dict[str, bytes | None]) -> Run:
    """A copy with files replaced (``None``: deleted), by path relative to the run directory."""
    run = _copy(run)
    for rel, v in changes.items():
        if v is None:
            del run.files[rel]
        else:
            run.files[rel] = v
    return run


def _ledger_tampers(h: Run) -> dict[str, tuple[Run, Failures]]:
    e = h.entries
    other = build_run(replace(HONEST["honest-u2"], nonce_label="another run"))
    replayed = _copy(h)
    replayed.entries.insert(5, copy.deepcopy(e[2]))
    skipped = _copy(h)
    del skipped.entries[6]
    reordered = _copy(h)
    reordered.entries[2], reordered.entries[3] = reordered.entries[3], reordered.entries[2]
    cross = _copy(h)
    cross.entries[3] = other.entries[3]
    unsigned = _copy(h)
    unsigned.entries[6] = {**e[6], "metrics": {**e[6]["metrics"], "samples": 1_000_000}}
    forged = _copy(h)
    forged.entries[3] = {**e[3], "signature": e[3]["signature"][:-1] + ("0" if e[3]["signature"][-1] != "0" else "1")}
    after = _copy(h)
    after.entries.append(R.sign_stage({**e[5], "round": 2, "prev": R.entry_hash(e[9]), "start": e[5]["end"]},
                                      h.keys["DO"]))
    closing = _copy(h)
    closing.entries[9] = {**e[9], "signatures": [s for s in e[9]["signatures"] if s["party_id"] != h.keys["T2"].party_id]}
    return {
        "edit-without-signature": (unsigned, [["entry-signature", 6, False], ["prev-chain", 7, True]]),
        "forged-signature": (forged, [["entry-signature", 3, False], ["prev-chain", 4, True]]),
        "stolen-stage": (_edit(h, 2, party_id=h.keys["T2"].party_id),
                         [["position-owner", 2, False], ["entry-signature", 2, False]]),
        "reordered": (rechain(reordered, 2), [["order", 2, False], ["order", 3, True]]),
        "skipped": (rechain(skipped, 6), [["order", 6, False], ["segment-commitment", None, True]]),
        "replayed": (replayed, [["prev-chain", 5, False], ["duplicate-stage", 5, False], ["prev-chain", 6, True]]),
        "cross-run-entry": (cross, [["run-id", 3, False], ["prev-chain", 3, False], ["prev-chain", 4, True],
                                    ["start-commitment", 7, True]]),  # T2's marks, and so its end, differ there
        "start-mismatch": (_edit(h, 6, start="ee" * 32), [["start-commitment", 6, False]]),
        "closing-dropped": (_truncate(h, 9), [["closing-missing", None, False]]),
        "last-round-dropped": (_truncate(h, 5), [["closing-missing", None, False]]
                               + [["segment-commitment", None, True]] * 4),
        "entry-after-closing": (after, [["after-closing", 10, False], ["order", 10, False]]),
        "closing-signature-missing": (closing, [["closing-signature", 9, False]]),
    }


def _truncate(run: Run, n: int) -> Run:
    out = _copy(run)
    out.entries = out.entries[:n]
    return out


def _transcript_tampers(h: Run) -> dict[str, tuple[Run, Failures]]:
    e = h.entries
    t1 = {k: v for k, v in e[6]["transcripts"].items() if k != "T2:sent"}
    t2 = {k: v for k, v in e[7]["transcripts"].items() if k != "T1:recv"}
    dropped = _copy(h)
    dropped.entries[6] = {**e[6], "transcripts": t1}
    dropped.entries[7] = {**e[7], "transcripts": t2}
    emptied = _copy(h)
    for i, x in enumerate(emptied.entries):
        if x["type"] == "stage":
            emptied.entries[i] = {**x, "transcripts": {}}
    per_round = [["transcript", i, False] for i in (1, 2, 2, 3, 3, 4)]  # links 0→1, 1→0, 1→2, 2→1, 2→3, 3→2
    return {
        "transcripts-link-dropped": (rechain(dropped, 6), [["transcript", 6, False]]),
        "transcripts-emptied": (rechain(emptied, 1), per_round + [[c, i + 4, f] for c, i, f in per_round]),
        "transcript-mismatch": (_edit(h, 3, transcripts={**e[3]["transcripts"], "T1:recv": "ab" * 32}),
                                [["transcript", 2, False]]),
    }


def _genesis_tampers(h: Run) -> dict[str, tuple[Run, Failures]]:
    spec = HONEST["honest-u2"]
    fake = {"DO": h.keys["DO"], "T1": R.vector_key("made-up T1"), "T2": R.vector_key("made-up T2")}
    made_up = build_run(spec, keys=fake)
    made_up.files = {**made_up.files, **{k: v for k, v in h.files.items() if k.startswith("keys/")}}
    return {
        "unknown-version": (build_run(replace(spec, genesis_patch=(("version", 2),))), [["version", 0, False]]),
        "topology-mismatch": (build_run(replace(spec, genesis_patch=(("topology", "open-tail"),))),
                              [["topology", 0, False]]),
        "made-up-trainers": (made_up, [["trusted-key", 0, False], ["trusted-key", 0, False]]),
    }


def _line_tampers(h: Run) -> dict[str, tuple[Run, Failures]]:
    e = h.entries
    line2 = R.jcs(e[2])
    extra = _edit(h, 2, comment="a field the format does not have")
    return {
        "unreadable-line": (_raw(h, _line_swap(h, 3, b"\xff\xfe not a ledger line")),
                            [["parse", 3, False], ["prev-chain", 4, True], ["order", 4, True]]),
        "non-canonical-line": (_raw(h, _line_swap(h, 2, line2.replace(b",", b", ", 1))),
                               [["parse", 2, False], ["prev-chain", 3, True], ["order", 3, True]]),
        "extra-field": (extra, [["parse", 2, False], ["prev-chain", 3, True], ["order", 3, True]]),
    }


def _file_tampers(h: Run) -> dict[str, tuple[Run, Failures]]:
    edited = _copy(h)
    t = edited.segments[1]["0.weight"]
    t.values = [R.f32(t.values[0] + 0.25), *t.values[1:]]
    meta = {"party": "T9", "position": "7", "epoch": "99", "note": "metadata is not committed"}
    config = h.files["config.json"].replace(b'"lr": 0.001', b'"lr": 0.002')
    assert config != h.files["config.json"]
    reveal = h.files["reveals/T1.reveal.json"]
    at = reveal.index(b'"signature": "') + len(b'"signature": "')
    forged = reveal[:at] + (b"0" if reveal[at:at + 1] != b"0" else b"1") + reveal[at + 1:]
    return {
        "config-edited": (_files(h, {"config.json": config}), [["config-hash", 0, False]]),
        "segment-edited": (_files(h, {model_path(h, 1): model_file(edited, 1)}),
                           [["segment-commitment", None, False]]),
        "segments-swapped": (_files(h, {"model/seg_1.safetensors": h.files["model/seg_2.safetensors"],
                                        "model/seg_2.safetensors": h.files["model/seg_1.safetensors"]}),
                             [["segment-commitment", None, False]] * 2),
        "segment-missing": (_files(h, {"model/seg_2.safetensors": None}), [["segment-missing", None, False]]),
        "plan-missing": (_files(h, {"plan.json": None}), [["plan", None, False]]),
        "metadata-edited": (_files(h, {"model/head.safetensors": model_file(h, 0, meta)}), []),
        "reveal-forged": (_files(h, {"reveals/T1.reveal.json": forged}), [["reveal", None, False]]),
    }


TAMPERS: list[Callable[[Run], dict[str, tuple[Run, Failures]]]] = [
    _genesis_tampers, _line_tampers, _ledger_tampers, _transcript_tampers, _file_tampers]


def tampered_runs() -> Iterator[tuple[str, Run, Failures]]:
    """Every tampered variant of ``honest-u2``: (name, run, expected failures)."""
    h = build_run(HONEST["honest-u2"])
    for make in TAMPERS:
        for name, (run, failures) in sorted(make(h).items()):
            if name != "reveal-forged":  # the honest reveals no longer fit a changed ledger (consequential)
                run.files = {k: v for k, v in run.files.items() if not k.startswith("reveals/")}
            yield name, run, failures
