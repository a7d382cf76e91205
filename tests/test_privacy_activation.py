"""Clip + keyed Gaussian noise (docs/design/mechanisms.md#activation-protection): secrecy, determinism, statistics, clipping, validation."""

from __future__ import annotations

import hashlib
import hmac
import math
import struct

import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import given, settings
from hypothesis import strategies as st

from clicooper.errors import PrivacyError
from clicooper.privacy.activation import ActivationProtector, clip_per_sample, keyed_standard_normal

SECRET = bytes(range(32))
OTHER = bytes(range(1, 33))
SHAPE = (4, 7, 7)  # small stand-in for fmnist-cnn's (32, 14, 14) cut


def _zero_batch(b: int = 8) -> torch.Tensor:
    return torch.zeros(b, *SHAPE)


def test_same_secret_id_round_stream_gives_identical_noise() -> None:
    p = ActivationProtector(sigma=1.0, clip_norm=1.0, secret=SECRET)
    ids = torch.tensor([5, 17, 3])

    first = p.protect(_zero_batch(3), sample_ids=ids, round=2)
    again = ActivationProtector(sigma=1.0, clip_norm=1.0, secret=SECRET).protect(
        _zero_batch(3), sample_ids=ids, round=2
    )

    assert torch.equal(first, again)


def test_noise_is_per_sample_independent_of_batching() -> None:
    p = ActivationProtector(sigma=1.0, clip_norm=1.0, secret=SECRET)

    whole = p.protect(_zero_batch(4), sample_ids=[0, 1, 2, 3], round=0)
    reordered = p.protect(_zero_batch(2), sample_ids=[3, 1], round=0)

    assert torch.equal(reordered[0], whole[3]) and torch.equal(reordered[1], whole[1])


def test_noise_changes_with_round_stream_and_id() -> None:
    p = ActivationProtector(sigma=1.0, clip_norm=1.0, secret=SECRET)
    base = p.noise(SHAPE, sample_ids=[7], round=0, stream="act")

    variants = [
        p.noise(SHAPE, sample_ids=[7], round=1, stream="act"),
        p.noise(SHAPE, sample_ids=[7], round=0, stream="grad"),
        p.noise(SHAPE, sample_ids=[7], round=0, stream="query"),
        p.noise(SHAPE, sample_ids=[8], round=0, stream="act"),
    ]

    for v in variants:
        assert abs(torch.corrcoef(torch.stack([base.flatten(), v.flatten()]))[0, 1]) < 0.15


def test_public_seed_and_other_secrets_cannot_reproduce_the_noise() -> None:
    # Someone holding the config and the public seed: every torch generator they can build misses.
    ids = list(range(4))
    secret_noise = keyed_standard_normal(SECRET, SHAPE, sample_ids=ids, round=0, stream="act")
    guesses = [keyed_standard_normal(OTHER, SHAPE, sample_ids=ids, round=0, stream="act")]
    for seed in (0, 1, 42, 1234):
        torch.manual_seed(seed)
        guesses.append(torch.randn(len(ids), *SHAPE))
        g = torch.Generator().manual_seed(seed)
        guesses.append(torch.randn(len(ids), *SHAPE, generator=g))

    for guess in guesses:
        residual = secret_noise - guess
        assert residual.std() > 1.2  # independent: std √2; a match would leave ≈ 0
        assert not torch.allclose(secret_noise, guess)


def test_torch_global_seed_does_not_change_the_noise() -> None:
    torch.manual_seed(0)
    a = keyed_standard_normal(SECRET, SHAPE, sample_ids=[1], round=0, stream="act")
    torch.manual_seed(999)
    b = keyed_standard_normal(SECRET, SHAPE, sample_ids=[1], round=0, stream="act")

    assert torch.equal(a, b)


def test_noise_std_is_sigma_times_clip_norm() -> None:
    sigma, clip = 1.5, 2.0
    p = ActivationProtector(sigma=sigma, clip_norm=clip, secret=SECRET)

    n = p.noise((32, 14, 14), sample_ids=range(64), round=0)  # 401,408 draws

    assert abs(n.mean().item()) < 0.01 * sigma * clip
    assert n.std().item() == pytest.approx(sigma * clip, rel=0.01)
    z = (n / (sigma * clip)).flatten()
    # Gaussian shape: tail mass beyond 2σ and the fourth moment.
    assert (z.abs() > 2).float().mean().item() == pytest.approx(0.0455, abs=0.002)
    assert (z**4).mean().item() == pytest.approx(3.0, rel=0.03)


def _reference_noise(secret: bytes, d: int, sample_id: int, round_: int, stream: str) -> list[float]:
    """The documented derivation, written out scalar by scalar from the spec in activation.py."""

    def lp(*fields: bytes) -> bytes:
        return b"".join(len(f).to_bytes(8, "big") + f for f in fields)

    msg = lp(b"clicooper/noise", stream.encode(), str(round_).encode(), str(sample_id).encode())
    key = hmac.new(secret, msg, hashlib.sha256).digest()
    p = (d + 1) // 2
    ks = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor().update(bytes(12 * p))
    ws = struct.unpack(f"<{p}Q", ks[: 8 * p])
    vs = struct.unpack(f"<{p}I", ks[8 * p :])
    rho = [math.sqrt(-2 * math.log(((w >> 11) + 0.5) * 2.0**-53)) for w in ws]
    theta = [v * 2 * math.pi / 2**32 for v in vs]
    z = [r * math.cos(t) for r, t in zip(rho, theta, strict=True)] + [
        r * math.sin(t) for r, t in zip(rho, theta, strict=True)
    ]
    return z[:d]


def test_noise_matches_the_documented_derivation() -> None:
    z = keyed_standard_normal(SECRET, (7,), sample_ids=[3, 10**12], round=5, stream="grad")

    for row, sample_id in zip(z, [3, 10**12], strict=True):
        expected = torch.tensor(_reference_noise(SECRET, 7, sample_id, 5, "grad"))
        assert torch.allclose(row, expected, atol=1e-6)


def test_noise_known_answer() -> None:
    # Pins the format so a crash-replay on an upgraded install still matches. Float tolerance: libm's
    # log/cos/sin may differ in the last ulp between platforms.
    z = keyed_standard_normal(bytes(32), (6,), sample_ids=[0, 1], round=0, stream="act")

    expected = torch.tensor(
        [
            [1.5950669, -1.1396709, -0.6365435, 0.8380732, 0.8566054, 0.5852816],
            [0.1372359, 1.5603670, -1.1318343, 0.4895536, 0.8519512, 1.5828537],
        ]
    )
    assert torch.allclose(z, expected, atol=1e-5)


def test_clip_bounds_every_row_norm_and_keeps_small_rows() -> None:
    torch.manual_seed(0)
    a = torch.randn(16, *SHAPE) * torch.logspace(-2, 2, 16).reshape(16, 1, 1, 1)

    c = clip_per_sample(a, 1.0)

    norms_in = a.flatten(1).norm(dim=1)
    norms_out = c.flatten(1).norm(dim=1)
    assert (norms_out <= 1.0 + 1e-5).all()
    small = norms_in <= 1.0
    assert torch.allclose(c[small], a[small])
    assert torch.allclose(norms_out[~small], torch.ones(int((~small).sum())), atol=1e-5)
    # direction preserved
    cos = torch.nn.functional.cosine_similarity(a.flatten(1), c.flatten(1), dim=1)
    assert torch.allclose(cos, torch.ones(16), atol=1e-5)


def test_sigma_zero_clips_only_and_zero_rows_are_safe() -> None:
    p = ActivationProtector(sigma=0.0, clip_norm=0.5, secret=SECRET)
    a = torch.zeros(2, *SHAPE)
    a[1] = 3.0

    out = p.protect(a, sample_ids=[0, 1], round=0)

    assert torch.equal(out[0], a[0])
    assert out[1].norm().item() == pytest.approx(0.5, rel=1e-5)


def test_protect_is_differentiable_and_keeps_dtype_and_device() -> None:
    p = ActivationProtector(sigma=0.3, clip_norm=1.0, secret=SECRET)
    a = (torch.rand(3, *SHAPE, dtype=torch.float64) * 0.01).requires_grad_()

    out = p.protect(a, sample_ids=[0, 1, 2], round=0)
    out.backward(torch.ones_like(out))

    assert out.dtype == torch.float64 and out.device == a.device
    assert a.grad is not None and torch.allclose(a.grad, torch.ones_like(a))  # rows under S: identity


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sigma": -0.1, "clip_norm": 1.0, "secret": SECRET},
        {"sigma": math.nan, "clip_norm": 1.0, "secret": SECRET},
        {"sigma": 1.0, "clip_norm": 0.0, "secret": SECRET},
        {"sigma": 1.0, "clip_norm": -1.0, "secret": SECRET},
        {"sigma": 1.0, "clip_norm": 1.0, "secret": b"short"},
        {"sigma": 1.0, "clip_norm": 1.0, "secret": "x" * 32},
    ],
)
def test_invalid_parameters_raise_privacy_error(kwargs: dict) -> None:
    with pytest.raises(PrivacyError):
        ActivationProtector(**kwargs)


def test_parameters_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        ActivationProtector(1.0, 1.0, SECRET)  # type: ignore[misc]


def test_protect_validates_ids_and_round() -> None:
    p = ActivationProtector(sigma=1.0, clip_norm=1.0, secret=SECRET)
    a = _zero_batch(2)

    with pytest.raises(PrivacyError, match="one id per row"):
        p.protect(a, sample_ids=[0], round=0)
    with pytest.raises(PrivacyError, match="non-negative"):
        p.protect(a, sample_ids=[0, -1], round=0)
    with pytest.raises(PrivacyError, match="round"):
        p.protect(a, sample_ids=[0, 1], round=-1)
    with pytest.raises(PrivacyError, match="integer"):
        p.protect(a, sample_ids=torch.tensor([0.0, 1.0]), round=0)


def test_repr_hides_the_secret() -> None:
    assert SECRET.hex() not in repr(ActivationProtector(sigma=1.0, clip_norm=1.0, secret=SECRET))


@settings(max_examples=25, deadline=None)
@given(
    ids=st.lists(st.integers(0, 2**40), min_size=1, max_size=5, unique=True),
    round_=st.integers(0, 10_000),
    d=st.integers(1, 9),
)
def test_noise_is_a_function_of_id_round_and_shape_prefix(ids: list[int], round_: int, d: int) -> None:
    full = keyed_standard_normal(SECRET, (d,), sample_ids=ids, round=round_, stream="act")
    single = keyed_standard_normal(SECRET, (d,), sample_ids=ids[:1], round=round_, stream="act")

    assert torch.equal(full[0], single[0])
    assert torch.isfinite(full).all()


def _whole_array_noise(secret: bytes, d: int, ids: list[int], round_: int, stream: str) -> torch.Tensor:
    """The plain vectorised formula over the whole batch at once (fresh arrays, no chunks, no reuse)."""
    import numpy as np

    from clicooper.privacy._keyed import chacha20_keystreams, prf

    p, b = (d + 1) // 2, len(ids)
    keys = [prf(secret, "clicooper/noise", stream, round_, i) for i in ids]
    raw = np.frombuffer(bytes(chacha20_keystreams(keys, 12 * p)), dtype=np.uint8).reshape(b, 12 * p)
    w, v = raw[:, : 8 * p].view("<u8"), raw[:, 8 * p :].view("<u4")
    u = ((w >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    rho = np.sqrt(-2.0 * np.log(u)).astype(np.float32)
    theta = v.astype(np.float32) * np.float32(2.0 * math.pi / 2.0**32)
    z = np.concatenate([rho * np.cos(theta), rho * np.sin(theta)], axis=1)
    return torch.from_numpy(np.ascontiguousarray(z[:, :d]))


@pytest.mark.parametrize(("shape", "b"), [((32, 14, 14), 45), ((7,), 300), ((1,), 3), ((3, 5, 5), 129)])
def test_chunked_noise_is_bit_identical_to_the_whole_array_formula(shape: tuple[int, ...], b: int) -> None:
    # keyed_standard_normal works a few rows at a time in reused buffers; the values must not change
    ids = [3 * i + 11 for i in range(b)]
    z = keyed_standard_normal(SECRET, shape, sample_ids=ids, round=4, stream="act")

    assert torch.equal(z.reshape(b, -1), _whole_array_noise(SECRET, math.prod(shape), ids, 4, "act"))
    again = keyed_standard_normal(SECRET, shape, sample_ids=ids[::-1], round=4, stream="act")
    assert torch.equal(again, z.flip(0))  # scratch reuse leaves nothing behind between calls


def test_protect_is_exactly_clip_plus_noise_with_the_same_gradient() -> None:
    p = ActivationProtector(sigma=0.8, clip_norm=0.9, secret=SECRET)
    a = torch.randn(6, *SHAPE, requires_grad=True)
    b = a.detach().clone().requires_grad_()
    g = torch.randn(6, *SHAPE)

    out = p.protect(a, sample_ids=list(range(6)), round=2)
    ref = clip_per_sample(b, 0.9) + p.noise(SHAPE, sample_ids=list(range(6)), round=2)
    out.backward(g)
    ref.backward(g)

    assert torch.equal(out, ref) and torch.equal(a.grad, b.grad)


def test_prf_many_equals_one_prf_per_item() -> None:
    from clicooper.privacy._keyed import prf, prf_many

    ids = [0, 7, 10**12, 3]
    assert prf_many(SECRET, "clicooper/noise", "act", 9, last=ids) == [
        prf(SECRET, "clicooper/noise", "act", 9, i) for i in ids
    ]
    assert prf_many(SECRET, "clicooper/noise", "act", 9, last=[]) == []
