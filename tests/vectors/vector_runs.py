"""The vector runs: a run of the ledger format built from fixed labels with ``refimpl.py`` (no training, no
clicooper): segments drawn from SHAKE-256 streams, marks embedded by moving the weights until every bit reads
right, stand-in messages on every required link, every entry signed by its owner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import refimpl as R


@dataclass(frozen=True)
class RunSpec:
    """The shape of one vector run."""

    name: str
    trainers: int
    topology: str = "u-shape"
    rounds: int = 2
    keyed: str = "name"  # transcript keys: "name" (as the parties keep them) or "position"
    marks: tuple[int, ...] = ()  # watermarked positions (n = 8 bits, m = 4 weights per bit, 2 retained)
    buffer_at: int | None = None  # a position that also holds an int64 buffer (not a parameter)
    genesis_patch: tuple[tuple[str, Any], ...] = ()
    nonce_label: str = ""


@dataclass
class Run:
    """A built run: entries as JSON objects, the files of its directory, its keys."""

    spec: RunSpec
    keys: dict[str, R.Key]
    owners: dict[int, str]
    entries: list[dict[str, Any]]
    files: dict[str, bytes] = field(default_factory=dict)
    segments: dict[int, dict[str, R.Tensor]] = field(default_factory=dict)

    def key_of(self, pid: str) -> R.Key:
        return next(k for k in self.keys.values() if k.party_id == pid)

    def ledger_bytes(self) -> bytes:
        return b"".join(R.jcs(e) + b"\n" for e in self.entries)


# ----------------------------------------------------------------------------------------- segments

def _floats(label: str, count: int) -> list[float]:
    raw = R.Stream(R.sha256(R.lp("clicooper/test-vector/weights", label)), "clicooper/test-vector").read(4 * count)
    return [R.f32((int.from_bytes(raw[4 * i:4 * i + 4], "big") / 2**32 - 0.5) * 0.5) for i in range(count)]


def _shapes(spec: RunSpec, p: int) -> dict[str, list[int]]:
    n = len(_positions(spec))
    if p == 0:
        return {"0.weight": [6, 3], "0.bias": [6]}
    if spec.topology == "u-shape" and p == n - 1:
        return {"0.weight": [2, 6], "0.bias": [2]}
    return {"0.weight": [6, 6], "0.bias": [6]}


def _segment(spec: RunSpec, p: int, r: int) -> dict[str, R.Tensor]:
    """Position p's tensors at the end of round r (r = -1: initial), before any mark is embedded."""
    out = {}
    for name, shape in _shapes(spec, p).items():
        count = 1
        for s in shape:
            count *= s
        out[name] = R.Tensor("F32", shape, _floats(f"{spec.name}/{p}/{name}/{r}", count))
    if p == spec.buffer_at:
        out["1.num_batches_tracked"] = R.Tensor("I64", [], [7 * (r + 2)])
    return out


def _layout(seg: dict[str, R.Tensor]) -> list[list[Any]]:
    """§9.2: the parameters (float tensors here), sorted by name, with their sizes."""
    return [[n, len(seg[n].values)] for n in sorted(seg) if seg[n].dtype == "F32"]


def _embed(seg: dict[str, R.Tensor], marks: list[R.Mark]) -> None:
    """Move the weights until every bit of every mark reads right with a margin (a perceptron; no training)."""
    layout = _layout(seg)
    w = [v for n, _ in layout for v in seg[n].values]
    for _ in range(500):
        done = True
        for mk in marks:
            for i, y in enumerate(R.projections(mk, w)):
                want = 1 if mk.bits[i] else -1
                if want * y < 0.05:
                    done = False
                    for s, k in zip(mk.signs[i], mk.indices[i], strict=True):
                        w[k] += want * s * 0.02
        if done:
            break
    w = [R.f32(x) for x in w]
    assert all(min(y * (1 if b else -1) for y, b in zip(R.projections(mk, w), mk.bits, strict=True)) > 1e-3
               for mk in marks), "marks not embedded"
    at = 0
    for n, size in layout:
        seg[n].values = w[at:at + size]
        at += size


# ------------------------------------------------------------------------------------------ the run

def _positions(spec: RunSpec) -> list[int]:
    return list(range(spec.trainers + (2 if spec.topology == "u-shape" else 1)))


def _owners(spec: RunSpec) -> dict[int, str]:
    pos = _positions(spec)
    own = {p: f"T{p}" for p in pos[1:]}
    own[0] = "DO"
    if spec.topology == "u-shape":
        own[pos[-1]] = "DO"
    return own


def _links(spec: RunSpec) -> list[tuple[int, int]]:
    """§7.2: the required links."""
    n = len(_positions(spec))
    links = {x for p in range(n - 1) for x in ((p, p + 1), (p + 1, p))}
    if spec.topology == "open-tail" and n > 2:
        links.add((0, n - 1))
    return sorted(links)


def _transcripts(spec: RunSpec, r: int) -> dict[int, dict[str, str]]:
    """Each position's transcripts of round r: stand-in messages on every required link, both ends."""
    own = _owners(spec)
    out: dict[int, dict[str, str]] = {p: {} for p in _positions(spec)}
    msgs = {(a, b): [R.lp("vector-message", r, a, b, k) for k in range(3)] for a, b in _links(spec)}
    if spec.keyed == "position":
        for (a, b), m in msgs.items():
            d = R.transcript_by_position(m)
            out[a][f"{b}:sent"] = d
            out[b][f"{a}:recv"] = d
        return out
    by_party: dict[tuple[str, str], list[bytes]] = {}
    for (a, b), m in msgs.items():
        by_party.setdefault((own[a], own[b]), []).extend(m)
    party_maps: dict[str, dict[str, str]] = {}
    for (a, b), m in by_party.items():
        d = R.transcript_by_name(m)
        party_maps.setdefault(a, {})[f"{b}:sent"] = d
        party_maps.setdefault(b, {})[f"{a}:recv"] = d
    return {p: dict(party_maps.get(own[p], {})) for p in _positions(spec)}


CONFIG_NOTE = "vecteur d'essai ü"  # non-ASCII: RFC 8785 keeps it as UTF-8


def config_of(spec: RunSpec) -> dict[str, Any]:
    return {"model": "vector-mlp", "trainers": spec.trainers, "topology": spec.topology, "epochs": spec.rounds,
            "lr": 0.001, "seed": 0, "provenance": True, "note": CONFIG_NOTE, "capacities": None}


def architecture_of(spec: RunSpec) -> dict[str, Any]:
    """§8.3: {"repr", "state"} of the model (a PyTorch repr, written out here)."""
    layers, state, i = [], [], 0
    for p in _positions(spec):
        w = _shapes(spec, p)["0.weight"]
        layers.append(f"  ({i}): Linear(in_features={w[1]}, out_features={w[0]}, bias=True)")
        state += [[f"{i}.weight", w, "torch.float32"], [f"{i}.bias", [w[0]], "torch.float32"]]
        i += 1
    return {"repr": "Sequential(\n" + "\n".join(layers) + "\n)", "state": state}


DATASET_SECRET = R.sha256(R.lp("clicooper/test-vector/dataset-salt"))
DATASET = {"x": ("torch.float32", R.Tensor("F32", [4, 3], [k / 8 for k in range(12)])),
           "y": ("torch.int64", R.Tensor("I64", [4], [0, 1, 0, 1]))}
DATASET_IDS = R.Tensor("I64", [4], [0, 1, 2, 3])


def genesis_of(spec: RunSpec, keys: dict[str, R.Key]) -> dict[str, Any]:
    own = _owners(spec)
    names = ["DO", *(f"T{i}" for i in range(1, spec.trainers + 1))]
    body = {
        "type": "genesis", "version": 1,
        "config_hash": R.sha256(R.jcs(config_of(spec))).hex(),
        "dataset_commitment": R.dataset_commitment(DATASET_SECRET, DATASET, DATASET_IDS),
        "architecture_hash": R.sha256(R.jcs(architecture_of(spec))).hex(),
        "planned_rounds": spec.rounds, "topology": spec.topology,
        "nonce": R.sha256(R.lp("clicooper/test-vector/nonce", spec.nonce_label or spec.name))[:16].hex(),
        "parties": [{"name": n, "party_id": keys[n].party_id, "public_key": keys[n].pk.hex(),
                     "positions": [p for p, o in sorted(own.items()) if o == n], "tls_fingerprint": None}
                    for n in names],
    }
    body.update(dict(spec.genesis_patch))
    return R.multi_sign(body, [keys[n] for n in names])


def _watermark(seg: dict[str, R.Tensor], r: int) -> dict[str, Any]:
    return {"scheme": "clicooper-sparse-pm1/v1", "n_bits": 8, "subset_size": 4, "lambda": 0.1,
            "layout": _layout(seg), "retained_rounds": list(range(max(0, r - 1), r + 1)), "extra_steps": 0}


def build_run(spec: RunSpec, keys: dict[str, R.Key] | None = None) -> Run:
    """The honest run of ``spec`` (``keys``: the parties' keys, by default the fixed vector keys)."""
    own = _owners(spec)
    keys = keys or {n: R.vector_key(n) for n in sorted(set(own.values()))}
    g = genesis_of(spec, keys)
    rid = R.run_id(g)
    run = Run(spec, keys, own, [g])
    start = {p: _segment(spec, p, -1) for p in _positions(spec)}
    sigs: dict[tuple[int, int], bytes] = {}
    for r in range(spec.rounds):
        anchor = R.entry_hash(run.entries[-1])
        tx = _transcripts(spec, r)
        for p in _positions(spec):
            seg = _segment(spec, p, r)
            wm = kc = None
            if p in spec.marks:
                sigs[(r, p)] = R.wm_signature(keys[own[p]], rid, r, p, anchor)
                wm = _watermark(seg, r)
                kc = R.wm_commitment(sigs[(r, p)])
                nw = sum(n for _, n in wm["layout"])
                _embed(seg, [R.derive_mark(R.wm_key(sigs[(q, p)]), 8, 4, nw) for q in wm["retained_rounds"]])
            e = {"type": "stage", "run_id": rid, "round": r, "position": p, "party_id": keys[own[p]].party_id,
                 "prev": R.entry_hash(run.entries[-1]), "start": R.segment_commitment(start[p]),
                 "end": R.segment_commitment(seg), "transcripts": tx[p], "watermark": wm, "key_commitment": kc,
                 "metrics": {"samples": 100, "flops_fwd_bwd": 1000 * (p + 1), "steps": 3}}
            run.entries.append(R.sign_stage(e, keys[own[p]]))
            start[p] = seg
    run.entries.append(closing_of(run))
    run.segments = start
    _write_files(run, sigs)
    return run


def closing_of(run: Run) -> dict[str, Any]:
    """The closing of the entries as they stand, signed by every genesis party (§5.3)."""
    stages = [e for e in run.entries if e["type"] == "stage"]
    last = {e["position"]: e["end"] for e in stages}
    body = {"type": "closing", "run_id": R.run_id(run.entries[0]), "prev": R.entry_hash(run.entries[-1]),
            "rounds_completed": max((e["round"] for e in stages), default=-1) + 1,
            "final_commitments": {str(p): h for p, h in sorted(last.items())}}
    return R.multi_sign(body, [run.key_of(p["party_id"]) for p in run.entries[0]["parties"]])


MODEL_FILE = {"DO:head": "head", "DO:tail": "tail"}


def plan_party(run: Run, p: int) -> str:
    own = run.owners[p]
    return ("DO:head" if p == 0 else "DO:tail") if own == "DO" else own


def model_path(run: Run, p: int) -> str:
    party = plan_party(run, p)
    return f"model/{MODEL_FILE.get(party, 'seg_' + party[1:])}.safetensors"


def model_file(run: Run, p: int, metadata: dict[str, str] | None = None) -> bytes:
    meta = metadata or {"party": plan_party(run, p), "position": str(p), "epoch": str(run.spec.rounds)}
    return R.safetensors_bytes(run.segments[p], meta)


def as_json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _write_files(run: Run, sigs: dict[tuple[int, int], bytes]) -> None:
    f = run.files
    f["config.json"] = as_json(config_of(run.spec))
    f["plan.json"] = as_json({"model": "vector-mlp", "topology": run.spec.topology,
                            "parties": [{"party": plan_party(run, p), "position": p} for p in sorted(run.owners)]})
    for p in sorted(run.owners):
        f[model_path(run, p)] = model_file(run, p)
    for name, k in sorted(run.keys.items()):
        f[f"keys/{name}.pub"] = (k.pk.hex() + "\n").encode("ascii")
    rid = R.run_id(run.entries[0])
    for name in sorted({run.owners[p] for _, p in sigs}):
        stages = [{"round": r, "position": p, "signature": s.hex()} for (r, p), s in sorted(sigs.items())
                  if run.owners[p] == name]
        f[f"reveals/{name}.reveal.json"] = as_json({"format": "clicooper-reveal/1", "run_id": rid,
                                                  "party_id": run.keys[name].party_id, "stages": stages})


def write_run(run: Run, out: Path) -> None:
    out.mkdir(parents=True)
    (out / "ledger.jsonl").write_bytes(run.ledger_bytes())
    for rel, data in sorted(run.files.items()):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)


HONEST = {
    "honest-u2": RunSpec("honest-u2", 2, marks=(1, 2), buffer_at=2),
    "honest-o3": RunSpec("honest-o3", 3, topology="open-tail", rounds=1, marks=(2,)),
    "honest-u1-position-keyed": RunSpec("honest-u1-position-keyed", 1, rounds=1, keyed="position"),
}


