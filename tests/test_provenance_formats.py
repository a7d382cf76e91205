"""Known-answer tests pinning every provenance byte format (docs/design/ledger.md#formats)."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clicooper.errors import DataError, KeyFileError, LedgerError
from clicooper.provenance.canonical import KeyedStream, canonical_json, hkdf_sha256, lp, sha256_hex
from clicooper.provenance.commitments import (
    canonical_segment_bytes,
    dataset_commitment,
    segment_commitment,
)
from clicooper.provenance.entries import (
    Genesis,
    PartyRecord,
    StageEntry,
    entry_bytes,
    entry_from_json,
    entry_hash,
    sign_multi,
)
from clicooper.provenance.identity import Identity, load_identity, party_id, verify
from clicooper.provenance.watermark import (
    commitment_from_signature,
    derive_stage_key,
    key_from_signature,
    wm_message,
)

torch.set_num_threads(1)

# RFC 8032 §7.1, TEST 1
RFC8032_SK = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PK = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
RFC8032_SIG = ("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46b"
               "d25bf5f0595bbe24655141438e7a100b")


# ------------------------------------------------------------------------------------------- canonical
def test_lp_golden_and_unambiguous() -> None:
    assert lp(1, 12).hex() == "00000000000000013100000000000000023132"
    assert lp("ab", b"\x00", -3).hex() == "0000000000000002616200000000000000010000000000000000022d33"
    assert lp(1, 12) != lp(11, 2)


def test_lp_rejects_bool_and_other_types() -> None:
    with pytest.raises(TypeError):
        lp(True)
    with pytest.raises(TypeError):
        lp(1.5)  # type: ignore[arg-type]


@given(st.lists(st.binary(max_size=20), max_size=5), st.lists(st.binary(max_size=20), max_size=5))
def test_lp_is_injective(a: list[bytes], b: list[bytes]) -> None:
    assert (lp(*a) == lp(*b)) == (a == b)


def test_canonical_json_rfc8785() -> None:
    assert canonical_json({"b": 1.5, "a": [1, "x", None, True], "c": 1e-7}) == (
        b'{"a":[1,"x",null,true],"b":1.5,"c":1e-7}')
    for bad in ({"x": float("nan")}, {"x": 2**60}, {1: 2}):
        with pytest.raises(LedgerError):
            canonical_json(bad)


def test_hkdf_rfc5869_case1() -> None:
    okm = hkdf_sha256(b"\x0b" * 22, salt=bytes(range(13)), info=bytes(range(0xF0, 0xFA)), length=42)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b88718"
                         "5865")


def test_keyed_stream_golden_and_definition() -> None:
    s = KeyedStream(b"k" * 32, "test")
    first = s.read(16)
    assert first.hex() == "fc4c84536a51c8672c4e33ba13976a4e"
    assert first == hashlib.shake_256(lp("clicooper/xof", "test", b"k" * 32)).digest(16)
    assert KeyedStream(b"k" * 32, "test").uniform_ints(8, 1000).tolist() == [343, 238, 100, 7, 221, 481,
                                                                            116, 863]
    assert KeyedStream(b"k" * 32, "test").bits(16).tolist() == [1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 1, 1,
                                                                0, 0]
    assert KeyedStream(b"k" * 32, "other").read(16) != first


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=1, max_size=32), st.integers(1, 2**40), st.integers(0, 300))
def test_keyed_stream_ints_in_range_and_reproducible(key: bytes, bound: int, count: int) -> None:
    a = KeyedStream(key, "d").uniform_ints(count, bound)
    b = KeyedStream(key, "d").uniform_ints(count, bound)
    assert a.tolist() == b.tolist()
    assert len(a) == count and (count == 0 or (a.min() >= 0 and a.max() < bound))


def test_keyed_stream_reads_are_prefix_stable() -> None:
    s = KeyedStream(b"x", "d")
    parts = s.read(10) + s.read(100) + s.read(5000)
    assert parts == KeyedStream(b"x", "d").read(5110)


# ------------------------------------------------------------------------------------------- identity
def test_ed25519_rfc8032_vector_and_party_id() -> None:
    idt = Identity.from_bytes(RFC8032_SK)
    assert idt.public_key.hex() == RFC8032_PK
    assert idt.sign(b"").hex() == RFC8032_SIG
    assert idt.party_id == hashlib.sha256(bytes.fromhex(RFC8032_PK)).hexdigest()[:32]
    assert party_id(idt.public_key) == "21fe31dfa154a261626bf854046fd227"
    assert verify(idt.public_key, bytes.fromhex(RFC8032_SIG), b"") is None


def test_verify_raises_ledger_error() -> None:
    idt = Identity.from_bytes(RFC8032_SK)
    sig = bytearray(idt.sign(b"data"))
    sig[0] ^= 1
    with pytest.raises(LedgerError, match="invalid Ed25519 signature"):
        verify(idt.public_key, bytes(sig), b"data")
    with pytest.raises(LedgerError, match="invalid"):
        verify(idt.public_key, idt.sign(b"data"), b"datA")
    with pytest.raises(LedgerError, match="64 bytes"):
        verify(idt.public_key, b"short", b"data")


def test_key_file_roundtrip_mode_and_errors(tmp_path) -> None:
    idt = Identity.generate()
    plain = idt.save(tmp_path / "plain.pem")
    enc = idt.save(tmp_path / "enc.pem", passphrase="correct horse")
    for p in (plain, enc):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert b"ENCRYPTED" in enc.read_bytes() and b"ENCRYPTED" not in plain.read_bytes()
    assert load_identity(plain).public_key == idt.public_key
    assert load_identity(enc, "correct horse").public_key == idt.public_key
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_identity(enc, "wrong")
    with pytest.raises(KeyFileError, match="encrypted; give its passphrase"):
        load_identity(enc)
    with pytest.raises(KeyFileError, match="not encrypted"):
        load_identity(plain, "x")
    with pytest.raises(KeyFileError, match="not found"):
        load_identity(tmp_path / "missing.pem")
    (tmp_path / "garbage.pem").write_bytes(b"\x00\xffnot a key")
    with pytest.raises(KeyFileError, match="not a PEM"):
        load_identity(tmp_path / "garbage.pem")
    with pytest.raises(KeyFileError, match="already exists"):
        idt.save(plain)


# ------------------------------------------------------------------------------------------ commitments
def test_segment_commitment_golden_and_canonical() -> None:
    sd = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([1, 2])}
    assert segment_commitment(sd) == "aba8c1653d246e04053fcc4f1ecfa485df585d46abe2784393f0deb6980420c0"
    raw = canonical_segment_bytes(sd)
    header_len = int.from_bytes(raw[:8], "little")
    assert raw[8:8 + header_len].rstrip(b" ") == (
        b'{"b":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},'
        b'"w":{"dtype":"F32","shape":[2,3],"data_offsets":[16,40]}}')
    assert b"__metadata__" not in raw
    # insertion order, non-contiguity and sharing do not matter; values and dtypes do
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3).T.contiguous().T  # same values, not contiguous
    assert not t.is_contiguous()
    shared = torch.tensor([1, 2, 0])[:2]  # a view sharing storage
    assert segment_commitment({"b": shared, "w": t}) == segment_commitment(sd)
    assert segment_commitment({**sd, "b": torch.tensor([1, 3])}) != segment_commitment(sd)
    assert segment_commitment({**sd, "b": torch.tensor([1, 2], dtype=torch.int32)}) != segment_commitment(sd)


def test_dataset_commitment_is_salted_hmac() -> None:
    data = {"x": torch.zeros(2, 2), "y": torch.tensor([0, 1])}
    c = dataset_commitment(b"s" * 32, data)
    assert c == "d00ae612e04b9fc66294b6ed93f55b16a5663d297178b396d2763662df9ea17b"
    assert dataset_commitment(b"t" * 32, data) != c  # another secret, unrelated value
    assert dataset_commitment(b"s" * 32, data, ids=torch.tensor([1, 0])) != c
    assert dataset_commitment(b"s" * 32, {**data, "y": torch.tensor([1, 1])}) != c
    expected = hmac.new(b"s" * 32, b"", hashlib.sha256)
    expected.update(lp("clicooper/dataset"))
    for name, t in (("x", data["x"]), ("y", data["y"])):
        expected.update(lp(name) + lp(str(t.dtype)) + lp(",".join(map(str, t.shape))) + lp(t.numpy().tobytes()))
    ids = torch.arange(2)
    expected.update(lp("ids") + lp(str(ids.dtype)) + lp("2") + lp(ids.numpy().tobytes()))
    assert expected.hexdigest() == c
    with pytest.raises(DataError, match="at least 32"):
        dataset_commitment(b"short", data)


# -------------------------------------------------------------------------------------- watermark keys
def test_watermark_key_and_commitment_golden_and_separated() -> None:
    idt = Identity.from_bytes(RFC8032_SK)
    run_id, anchor = "ab" * 32, "cd" * 32
    msg = wm_message(run_id, 1, 2, anchor)
    assert msg == lp("clicooper-wm", bytes.fromhex(run_id), b"1", b"2", bytes.fromhex(anchor))
    sk = derive_stage_key(idt, run_id, 1, 2, anchor)
    assert sk.signature == idt.sign(msg)  # Ed25519 is deterministic: recomputable any time
    assert sk.key.hex() == "26d3aed308d0a90ebc5b1582852f6518c1da171ec6d64acc46498f91946100e4"
    assert sk.commitment == "83b8544e76f5adae7a9251268eb5b8e7899614405777412c5b9def5f4cd1da6e"
    # domain separation: the public commitment is neither the key nor a plain hash of what it is made of
    assert sk.commitment != sk.key.hex()
    assert sk.commitment != sha256_hex(sk.signature) and sk.commitment != sha256_hex(sk.key)
    assert key_from_signature(sk.signature) != bytes.fromhex(commitment_from_signature(sk.signature))
    # (1, 12) vs (11, 2) and another anchor give other keys
    assert derive_stage_key(idt, run_id, 1, 12, anchor).key != derive_stage_key(idt, run_id, 11, 2, anchor).key
    assert derive_stage_key(idt, run_id, 1, 2, "ce" * 32).key != sk.key


# ----------------------------------------------------------------------------------------- entries
def _golden_genesis() -> tuple[Identity, Genesis]:
    idt = Identity.from_bytes(RFC8032_SK)
    g = Genesis(config_hash="11" * 32, dataset_commitment="22" * 32, architecture_hash="33" * 32,
                planned_rounds=2, parties=(PartyRecord("DO", idt.public_key, (0, 1)),), nonce="44" * 16)
    return idt, g.with_signatures([sign_multi(idt, g)])


def test_genesis_and_stage_golden_bytes() -> None:
    idt, g = _golden_genesis()
    assert g.run_id == "51efb5212830a2db6e57b01349b70fd1a001dea47f83226c15af8f2778148bb8"
    assert g.run_id == sha256_hex(canonical_json(g.body()))
    assert entry_bytes(g).startswith(b'{"architecture_hash":"3333')
    assert entry_hash(g) == "92daef85ee8152e8901666dd7a9c7fdcd845d0c4d521f8f0e771ab05a721ca20"
    e = StageEntry(run_id=g.run_id, round=0, position=0, party_id=idt.party_id, prev=entry_hash(g),
                   start="55" * 32, end="66" * 32, transcripts={"1:sent": "77" * 32},
                   metrics={"samples": 10, "loss": 0.5}).signed(idt)
    assert entry_bytes(e) == (
        b'{"end":"' + b"66" * 32 + b'","key_commitment":null,"metrics":{"loss":0.5,"samples":10},'
        b'"party_id":"21fe31dfa154a261626bf854046fd227","position":0,"prev":"92daef85ee8152e8901666dd7a9c7fdc'
        b'd845d0c4d521f8f0e771ab05a721ca20","round":0,"run_id":"51efb5212830a2db6e57b01349b70fd1a001dea47f832'
        b'26c15af8f2778148bb8","signature":"5e63b410bd35cdb2b0019040fe037eddc0ca6c170bb9beb40ae2d131f56b2cb66c'
        b'c136b9e501eda9498a5c16bf4d7c9390c33b476d7fcb994c85a80b00b5390b","start":"' + b"55" * 32 +
        b'","transcripts":{"1:sent":"' + b"77" * 32 + b'"},"type":"stage","watermark":null}')
    assert entry_hash(e) == "45ed034d2fc89a52468f75882d2ff2381f1761f3ba7d04bdc93f3ef3a623a70f"
    # signed bytes are domain separated and exclude the signature
    assert e.signing_bytes() == lp("clicooper/ledger/stage", canonical_json(e.body()))
    verify(idt.public_key, e.signature, e.signing_bytes())
    assert entry_from_json(e.to_json()) == e and entry_from_json(g.to_json()) == g


def test_genesis_rejects_bad_structure() -> None:
    idt = Identity.generate()
    base = dict(config_hash="11" * 32, dataset_commitment="22" * 32, architecture_hash="33" * 32,
                planned_rounds=1, nonce="44" * 16)
    with pytest.raises(LedgerError, match="positions"):
        Genesis(**base, parties=(PartyRecord("DO", idt.public_key, (0, 2)),))
    with pytest.raises(LedgerError, match="unique"):
        Genesis(**base, parties=(PartyRecord("DO", idt.public_key, (0,)), PartyRecord("T1", idt.public_key, (1,))))
    _, g = _golden_genesis()
    obj = g.to_json()
    obj["parties"][0]["party_id"] = "00" * 16
    with pytest.raises(LedgerError, match="party_id does not match"):
        entry_from_json(obj)
