"""The ledger-format test vectors (tests/vectors/, docs/ledger-format.md §13).

- the vectors are what ``make_vectors.py`` builds from the spec's fixed labels, byte for byte;
- ``verify`` gives every run exactly the verdict the spec predicts (each failure, its order, which are
  consequential, the exit status), and ``--json`` prints a verdict on every exit path;
- clicooper's own functions give every known answer of the spec.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load as st_load
from torch import nn
from typer.testing import CliRunner

from clicooper.cli import app
from clicooper.encoding import lp
from clicooper.provenance.canonical import KeyedStream, canonical_json, hkdf_sha256, sha256_hex
from clicooper.provenance.capacity import ownership_threshold
from clicooper.provenance.commitments import (
    architecture_hash,
    canonical_segment_bytes,
    config_hash,
    dataset_commitment,
    segment_commitment,
)
from clicooper.provenance.delivered import trusted_keys, verify_delivered, verify_exit_code
from clicooper.provenance.entries import Genesis, StageEntry, entry_from_json, entry_hash
from clicooper.provenance.identity import Identity, party_id
from clicooper.provenance.marks import (
    Mark,
    MarkParams,
    StageKey,
    commitment_from_signature,
    key_from_signature,
    wm_message,
)
from clicooper.provenance.schema import SCHEMA_NAMES, check_entry, schema_text
from clicooper.provenance.transcript import TranscriptHasher, new_transcript_hash

VECTORS = Path(__file__).parent / "vectors"
EXPECTED: dict[str, Any] = json.loads((VECTORS / "expected.json").read_text("utf-8"))
KAT: dict[str, Any] = json.loads((VECTORS / "known-answers.json").read_text("utf-8"))
runner = CliRunner()


def _make_vectors() -> Any:
    sys.path.insert(0, str(VECTORS))
    try:
        spec = importlib.util.spec_from_file_location("make_vectors", VECTORS / "make_vectors.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(VECTORS))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix != ".py" and p.name != "README.md" and "__pycache__" not in p.parts}


def test_vectors_are_regenerated_byte_for_byte(tmp_path: Path) -> None:
    _make_vectors().main(tmp_path)
    want, got = _tree(VECTORS), _tree(tmp_path)
    assert sorted(got) == sorted(want)
    assert [k for k in want if want[k] != got[k]] == []


def _verdict(name: str) -> tuple[Any, int]:
    run = VECTORS / "cases" / name
    reveals = sorted((run / "reveals").glob("*.reveal.json")) if (run / "reveals").is_dir() else []
    report, _ = verify_delivered(run, None, reveals)
    return report, verify_exit_code(report)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_verify_gives_the_predicted_verdict(name: str) -> None:
    want = EXPECTED[name]
    report, code = _verdict(name)
    assert [[f.check, f.index, f.consequential] for f in report.failures] == want["failures"]
    assert (report.ok, code) == (want["ok"], want["exit_code"])
    if want["failures"]:
        assert report.cause is not None and [report.cause.check, report.cause.index] == want["failures"][0][:2]


def _cli_json(*args: str) -> tuple[int, dict[str, Any]]:
    res = runner.invoke(app, ["verify", *args, "--json"])
    return res.exit_code, json.loads(res.stdout.strip().splitlines()[-1])


def test_cli_prints_a_json_verdict_on_every_exit_path(tmp_path: Path) -> None:
    code, obj = _cli_json(str(VECTORS / "cases" / "honest-u2"))
    assert (code, obj["ok"], obj["cause"]) == (0, True, None)
    code, obj = _cli_json(str(VECTORS / "cases" / "segment-missing"))  # was: exit 2 and no JSON
    assert (code, obj["ok"], obj["cause"]["check"]) == (1, False, "segment-missing")
    code, obj = _cli_json(str(VECTORS / "cases" / "unreadable-line"))
    assert obj["cause"]["check"] == "parse" and all(f["consequential"] for f in obj["failures"][1:])
    code, obj = _cli_json(str(tmp_path))  # no ledger at all: verify cannot run
    assert (code, obj["ok"], obj["cause"]["check"], obj["exit_code"]) == (2, False, "error", 2)


def test_schemas_are_valid_and_accept_every_honest_line() -> None:
    for name in SCHEMA_NAMES:
        assert json.loads(schema_text(name))["$schema"].endswith("2020-12/schema")
    for name in ("honest-u2", "honest-o3", "honest-u1-position-keyed"):
        for line in (VECTORS / "cases" / name / "ledger.jsonl").read_bytes().splitlines():
            check_entry(json.loads(line))


# ---------------------------------------------------------------------------------- known answers

def _parts(parts: list[Any]) -> list[Any]:
    return [bytes.fromhex(p["hex"]) if isinstance(p, dict) else p for p in parts]


def _tensor(d: dict[str, Any]) -> torch.Tensor:
    dt = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64, "U8": torch.uint8}[d["dtype"]]
    return torch.tensor(d["values"], dtype=dt).reshape(d["shape"])


def test_known_answers_of_the_primitives() -> None:
    for name in ("lp/int-int", "lp/int-int-swapped", "lp/part-types"):
        assert lp(*_parts(KAT[name]["parts"])).hex() == KAT[name]["out"]
    assert KAT["lp/int-int"]["out"] != KAT["lp/int-int-swapped"]["out"]
    assert canonical_json(KAT["jcs"]["value"]).decode("utf-8") == KAT["jcs"]["out_utf8"]
    assert sha256_hex(KAT["sha256"]["in_utf8"].encode()) == KAT["sha256"]["out"]
    for name in ("hkdf-sha256/rfc5869-case3", "hkdf-sha256/wm-key"):
        k = KAT[name]
        assert hkdf_sha256(bytes.fromhex(k["ikm"]), info=k["info_utf8"], length=k["length"]).hex() == k["out"]
    x = KAT["xof/bytes"]
    assert KeyedStream(bytes.fromhex(x["key"]), x["domain"]).read(64).hex() == x["out"]
    for name in ("xof/uniform", "xof/uniform-rejection"):
        x = KAT[name]
        got = KeyedStream(bytes.fromhex(x["key"]), x["domain"]).uniform_ints(x["count"], x["bound"])
        assert got.tolist() == x["out"]
    assert KAT["xof/uniform-rejection"]["rejected_words"] > 0  # the rejection branch is exercised
    for name, fn in (("xof/bits", "bits"), ("xof/signs", "signs")):
        x = KAT[name]
        assert getattr(KeyedStream(bytes.fromhex(x["key"]), x["domain"]), fn)(x["count"]).tolist() == x["out"]
    for n, t in KAT["tau"]["out"].items():
        assert ownership_threshold(int(n))[0] == t


def test_known_answers_of_identities_and_files(tmp_path: Path) -> None:
    k = KAT["ed25519/party"]
    ident = Identity.from_bytes(bytes.fromhex(k["seed"]))
    assert (ident.public_key.hex(), ident.party_id, party_id(ident.public_key)) == (k["public_key"],
                                                                                 k["party_id"], k["party_id"])
    assert ident.sign(k["message_utf8"].encode()).hex() == k["signature"]
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "T1.pub").write_text(KAT["trusted-key-file"]["file_utf8"], "ascii")
    assert trusted_keys(tmp_path)[0] == {"T1": bytes.fromhex(KAT["trusted-key-file"]["public_key"])}
    seg = KAT["segment/canonical"]
    tensors = {n: _tensor(d) for n, d in seg["tensors"].items()}
    assert canonical_segment_bytes(tensors).hex() == seg["bytes"]
    assert segment_commitment(tensors) == seg["commitment"]
    from_file = st_load(bytes.fromhex(KAT["segment/with-metadata"]["file"]))
    assert segment_commitment(from_file) == KAT["segment/with-metadata"]["commitment"] == seg["commitment"]


def test_known_answers_of_the_genesis_hashes() -> None:
    assert config_hash(KAT["config-hash"]["config"]) == KAT["config-hash"]["out"]
    d = KAT["dataset-commitment"]
    tensors = {n: _tensor(t) for n, t in d["tensors"].items()}
    assert {n: str(t.dtype) for n, t in tensors.items()} == {n: t["torch_dtype"] for n, t in d["tensors"].items()}
    got = dataset_commitment(bytes.fromhex(d["secret"]), tensors, torch.tensor(d["ids"], dtype=torch.int64))
    assert got == d["out"]
    model = nn.Sequential(nn.Linear(3, 6), nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 2))
    assert {"repr": repr(model), "state": [[k, list(v.shape), str(v.dtype)] for k, v in model.state_dict().items()]} \
        == KAT["architecture-hash"]["description"]
    assert architecture_hash(model) == KAT["architecture-hash"]["out"]
    msgs = [bytes.fromhex(m) for m in KAT["transcript/position-form"]["messages"]]
    h = TranscriptHasher()
    for m in msgs:
        h.sent(2, m)
    assert h.digests()["2:sent"] == KAT["transcript/position-form"]["out"]
    named = new_transcript_hash()
    for m in msgs:
        named.update(m)
    assert named.hexdigest() == KAT["transcript/name-form"]["out"]


def test_known_answers_of_the_ledger_and_the_watermark_keys() -> None:
    g = Genesis.from_json(json.loads(KAT["ledger/run-id"]["genesis_body_jcs_utf8"]) | {"signatures": []})
    assert g.run_id == KAT["ledger/run-id"]["out"]
    s = entry_from_json(KAT["ledger/signing-bytes"]["entry"])
    assert isinstance(s, StageEntry) and s.signing_bytes().hex() == KAT["ledger/signing-bytes"]["out"]
    assert entry_hash(s) == KAT["ledger/entry-hash"]["out"]
    m = KAT["wm/message"]
    assert wm_message(m["run_id"], m["round"], m["position"], m["anchor"]).hex() == m["out"]
    t1 = Identity.from_bytes(bytes.fromhex(KAT["ed25519/party"]["seed"]))
    sig = t1.sign(bytes.fromhex(m["out"]))
    assert sig.hex() == KAT["wm/signature"]["out"]
    assert key_from_signature(sig).hex() == KAT["wm/key"]["out"]
    assert commitment_from_signature(sig) == KAT["wm/commitment"]["out"] == KAT["wm/commitment"]["entry_key_commitment"]
    w = KAT["wm/mark"]
    params = MarkParams(w["n_bits"], w["subset_size"], 0.1, (("w", w["num_weights"]),))
    mark = Mark.derive(StageKey(m["round"], m["position"], sig), params)
    assert mark.bits.int().tolist() == w["bits"]
    assert mark.indices.tolist() == w["indices"] and mark.signs.int().tolist() == w["signs"]
