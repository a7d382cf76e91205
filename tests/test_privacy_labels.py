"""Secret label obfuscation (docs/design/mechanisms.md#label-obfuscation): known answers, properties, and what an attacker without k_L sees."""

from __future__ import annotations

import hashlib
import hmac

import pytest
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from clicooper.errors import PrivacyError
from clicooper.privacy.labels import LabelCodec, keyed_permutation

KEY = bytes(range(32))
keys = st.binary(min_size=32, max_size=32)


def test_permutation_known_answer() -> None:
    # Pins HKDF(k_L, info="label-perm") → SHAKE-256 → Fisher–Yates with rejection.
    codec = LabelCodec(key=KEY, num_classes=10, expansion=2)

    assert codec.permutation == (5, 10, 19, 15, 7, 11, 17, 0, 18, 9, 8, 6, 12, 3, 1, 16, 2, 13, 4, 14)
    assert keyed_permutation(bytes(32), 6) == [1, 2, 5, 0, 4, 3]


def _reference_permutation(key: bytes, n: int) -> list[int]:
    """The documented algorithm, written out independently."""
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"label-perm").derive(key)
    stream = hashlib.shake_256(seed).digest(4 * 8 * n + 64)
    pos = 0
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        bound = i + 1
        limit = 2**32 - 2**32 % bound
        while True:
            w = int.from_bytes(stream[pos : pos + 4], "big")
            pos += 4
            if w < limit:
                break
        j = w % bound
        perm[i], perm[j] = perm[j], perm[i]
    return perm


@settings(max_examples=30, deadline=None)
@given(key=keys, n=st.integers(1, 200))
def test_permutation_matches_reference_and_is_a_bijection(key: bytes, n: int) -> None:
    perm = keyed_permutation(key, n)

    assert perm == _reference_permutation(key, n)
    assert sorted(perm) == list(range(n))


def test_subclass_known_answer() -> None:
    codec = LabelCodec(key=KEY, num_classes=10, expansion=3)

    def lp(*fields: bytes) -> bytes:
        return b"".join(len(f).to_bytes(8, "big") + f for f in fields)

    for sample_id, round_ in [(0, 0), (7, 2), (59_999, 11)]:
        mac = hmac.new(
            KEY, lp(b"clicooper/label-sub", str(sample_id).encode(), str(round_).encode()), "sha256"
        )
        assert codec.subclass(sample_id, round_) == int.from_bytes(mac.digest()[:8], "big") % 3


@settings(max_examples=30, deadline=None)
@given(
    key=keys,
    num_classes=st.integers(2, 12),
    expansion=st.integers(1, 4),
    data=st.data(),
)
def test_decode_of_encode_recovers_the_true_class(key: bytes, num_classes: int, expansion: int, data) -> None:
    codec = LabelCodec(key=key, num_classes=num_classes, expansion=expansion)
    y = torch.tensor(data.draw(st.lists(st.integers(0, num_classes - 1), min_size=1, max_size=20)))
    ids = torch.arange(len(y)) * 13
    round_ = data.draw(st.integers(0, 100))

    enc = codec.encode(y, sample_ids=ids, round=round_)
    one_hot = torch.nn.functional.one_hot(enc, codec.num_outputs).double()

    assert torch.equal(codec.decode_probs(one_hot).argmax(dim=1), y)
    assert torch.equal(codec.decode_labels(enc), y)
    assert ((enc >= 0) & (enc < codec.num_outputs)).all()


def test_decode_probs_sums_subclasses_and_preserves_mass() -> None:
    codec = LabelCodec(key=KEY, num_classes=10, expansion=2)
    logits = torch.randn(5, 20, generator=torch.Generator().manual_seed(0))

    probs = codec.decode_logits(logits)

    p = torch.softmax(logits, dim=1)
    perm = codec.permutation
    assert probs.shape == (5, 10)
    assert torch.allclose(probs.sum(dim=1), torch.ones(5))
    for c in range(10):
        assert torch.allclose(probs[:, c], p[:, perm[2 * c]] + p[:, perm[2 * c + 1]])


def test_subclass_rotates_over_rounds() -> None:
    codec = LabelCodec(key=KEY, num_classes=10, expansion=2)
    y = torch.zeros(200, dtype=torch.long)
    ids = torch.arange(200)

    r0 = codec.encode(y, sample_ids=ids, round=0)
    r1 = codec.encode(y, sample_ids=ids, round=1)

    assert set(r0.tolist()) == {codec.permutation[0], codec.permutation[1]}
    assert 0.3 < (r0 != r1).float().mean().item() < 0.7  # each sample re-draws its sub-class


@settings(max_examples=20, deadline=None)
@given(key_a=keys, key_b=keys)
def test_different_keys_give_unrelated_permutations(key_a: bytes, key_b: bytes) -> None:
    if key_a == key_b:
        return
    a = keyed_permutation(key_a, 1000)
    b = keyed_permutation(key_b, 1000)

    agreement = sum(x == y for x, y in zip(a, b, strict=True))
    assert agreement < 10  # independent permutations agree in ≈ 1 place


def test_attacker_without_key_scores_at_chance() -> None:
    # An attacker reading obfuscated labels with a fixed mapping (identity: output o ↦ class o // m)
    # over many unknown keys scores ≈ 1/C.
    num_classes, expansion = 10, 2
    y = torch.arange(num_classes).repeat(20)
    ids = torch.arange(len(y))
    hits = 0.0
    n_keys = 300
    for k in range(n_keys):
        key = hashlib.sha256(k.to_bytes(4, "big")).digest()
        enc = LabelCodec(key=key, num_classes=num_classes, expansion=expansion).encode(
            y, sample_ids=ids, round=0
        )
        hits += (enc // expansion == y).float().mean().item()

    assert hits / n_keys == pytest.approx(1 / num_classes, abs=0.02)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"key": b"short", "num_classes": 10},
        {"key": KEY, "num_classes": 1},
        {"key": KEY, "num_classes": 10, "expansion": 0},
        {"key": KEY, "num_classes": 10, "expansion": True},
    ],
)
def test_invalid_codec_parameters(kwargs: dict) -> None:
    with pytest.raises(PrivacyError):
        LabelCodec(**kwargs)


def test_encode_and_decode_validate_inputs() -> None:
    codec = LabelCodec(key=KEY, num_classes=10)

    with pytest.raises(PrivacyError, match=r"\[0, 10\)"):
        codec.encode(torch.tensor([10]), sample_ids=[0], round=0)
    with pytest.raises(PrivacyError, match="one id per label"):
        codec.encode(torch.tensor([1, 2]), sample_ids=[0], round=0)
    with pytest.raises(PrivacyError, match="num_outputs=20"):
        codec.decode_probs(torch.ones(3, 10))


def test_repr_hides_key_and_permutation() -> None:
    text = repr(LabelCodec(key=KEY, num_classes=10))

    assert KEY.hex() not in text and "19" not in text
