"""Clip + keyed Gaussian noise on what the data owner releases (docs/design/mechanisms.md#activation-protection).

Per sample ``a`` (all non-batch dims flattened): ``a ← a · min(1, S / ‖a‖₂)``, then ``ã = a + N(0, σ²S²I)``
— the Gaussian mechanism (Dwork & Roth 2014, §3.5.3; Abadi et al. 2016 for the clip-then-noise recipe).

**The noise is the DO's secret.** The noise of item ``i`` (a training sample id, or a served query's
counter) in round ``r`` on stream ``s`` (``"act"``, ``"grad"``, ``"query"``) is a pure function of
``(noise_secret, s, r, i)``:

1. ``k = HMAC-SHA256(noise_secret, lp("clicooper/noise", s, r, i))`` (32 bytes, see :mod:`._keyed`);
2. ``P = ⌈D/2⌉`` for ``D`` elements per item; keystream ``ChaCha20(k, nonce 0)`` of ``12·P`` bytes: ``P``
   little-endian u64 words ``w`` then ``P`` little-endian u32 words ``v``;
3. Box–Muller: ``ρ = sqrt(−2 ln((⌊w/2¹¹⌋ + ½)·2⁻⁵³))`` (float64), ``θ = 2π·v/2³²`` (float32);
   ``z = [ρ cos θ, ρ sin θ][:D]`` (float32), reshaped to the item's shape.

So a repeated release after a crash is identical to the first (it costs no extra privacy), the noise does
not depend on how items are batched or micro-batched, and nobody without the secret can regenerate it —
in particular not from the run's public ``--seed``. ``torch.Generator`` per item was rejected: CPU
``manual_seed`` keeps only 32 bits of the seed, so 2³² candidate seeds could be brute-forced against the
non-negative post-ReLU activations. A 53-bit radius keeps the Gaussian's tails to ≈ 8.6 σ (a 24-bit
uniform would cut them at 5.9 σ, adding ≈ 10⁻⁶ to δ per release).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from clicooper.errors import PrivacyError
from clicooper.privacy._keyed import chacha20_keystreams, check_key, prf_many

if TYPE_CHECKING:
    from clicooper.privacy.prefetch import NoisePrefetcher

NOISE_TAG = "clicooper/noise"
STREAM_ACT = "act"
STREAM_GRAD = "grad"
STREAM_QUERY = "query"
_TWO_PI_OVER_2_32 = np.float32(2.0 * math.pi / 2.0**32)


def _ids_list(sample_ids: torch.Tensor | Sequence[int], batch: int) -> list[int]:
    if isinstance(sample_ids, torch.Tensor):
        if sample_ids.dim() != 1 or sample_ids.dtype.is_floating_point or sample_ids.dtype == torch.bool:
            raise PrivacyError("sample_ids must be a 1-D integer tensor (one id per row of the batch)")
        ids = [int(v) for v in sample_ids.tolist()]
    else:
        ids = [int(v) for v in sample_ids]
    if len(ids) != batch:
        raise PrivacyError(f"got {len(ids)} sample_ids for a batch of {batch} rows; pass one id per row")
    if ids and min(ids) < 0:
        raise PrivacyError("sample_ids must be non-negative (dataset indices or query counters)")
    return ids


def _check_round(round: int) -> int:
    if isinstance(round, bool) or not isinstance(round, int | np.integer) or round < 0:
        raise PrivacyError(f"round must be a non-negative int (0-based epoch), got {round!r}")
    return int(round)


def _check_stream(stream: str) -> str:
    if not isinstance(stream, str) or not stream:
        raise PrivacyError("stream must be a non-empty string such as 'act', 'grad' or 'query'")
    return stream


class _Workspace(threading.local):
    """Per-thread scratch buffers for :func:`keyed_standard_normal` (reused: no page faults per call).

    Fresh multi-megabyte temporaries cost more than the arithmetic (the kernel zero-fills every new page),
    so the intermediates of a chunk of rows live here; only the returned array is new. About
    :data:`_CHUNK_BYTES` per thread (or one item's 32·⌈D/2⌉ bytes, if larger), kept for the thread's life.
    """

    def __init__(self) -> None:
        self.buf = np.empty(0, dtype=np.uint8)

    def take(self, nbytes: int) -> np.ndarray:
        if self.buf.nbytes < nbytes:
            self.buf = np.empty(nbytes, dtype=np.uint8)
        return self.buf[:nbytes]


_WS = _Workspace()
_CHUNK_BYTES = 2 << 20  # rows per chunk: about this many bytes of scratch (fewer, longer GIL-free calls)
# scratch bytes per Box-Muller pair: keystream, float64 radius, rho, theta, cos/sin
_WS_BYTES_PER_PAIR = 12 + 8 + 4 + 4 + 4


def _gaussian_rows(keys: Sequence[bytes], p: int, z: np.ndarray) -> None:
    """Write the Box–Muller output of ``keys`` (one row each) into ``z[:, :p]`` (cos) and ``z[:, p:]`` (sin).

    Every operation is elementwise and the same ufunc on the same dtypes as the plain formula in the module
    docstring, only into reused buffers and a few rows at a time, so the values are bit-identical to
    computing whole arrays at once (a test compares with that straightforward version).
    """
    b = len(keys)
    scratch = _WS.take(min(b, max(1, _CHUNK_BYTES // (_WS_BYTES_PER_PAIR * p))) * _WS_BYTES_PER_PAIR * p)
    rows = len(scratch) // (_WS_BYTES_PER_PAIR * p)
    for start in range(0, b, rows):
        n = min(rows, b - start)
        pairs = n * p
        raw = scratch[: 12 * pairs].reshape(n, 12 * p)
        u = scratch[12 * pairs : 20 * pairs].view(np.float64).reshape(n, p)
        rho = scratch[20 * pairs : 24 * pairs].view(np.float32).reshape(n, p)
        theta = scratch[24 * pairs : 28 * pairs].view(np.float32).reshape(n, p)
        trig = scratch[28 * pairs : 32 * pairs].view(np.float32).reshape(n, p)
        chacha20_keystreams(keys[start : start + n], 12 * p, out=raw)
        w = raw[:, : 8 * p].view("<u8")  # (n, P) radius words (rows are contiguous: no copy)
        v = raw[:, 8 * p :].view("<u4")  # (n, P) angle words
        np.right_shift(w, np.uint64(11), out=w)
        np.copyto(u, w, casting="unsafe")  # exact: < 2**53
        u += 0.5
        u *= 2.0**-53  # in (0, 1): log never sees 0
        np.log(u, out=u)
        u *= -2.0
        np.sqrt(u, out=u)
        np.copyto(rho, u, casting="same_kind")  # float64 -> float32, as astype
        np.copyto(theta, v, casting="unsafe")  # u32 -> float32, as astype
        theta *= _TWO_PI_OVER_2_32
        np.cos(theta, out=trig)
        np.multiply(rho, trig, out=z[start : start + n, :p])
        np.sin(theta, out=trig)
        np.multiply(rho, trig, out=z[start : start + n, p:])


def keyed_standard_normal(
    secret: bytes,
    item_shape: Sequence[int],
    *,
    sample_ids: torch.Tensor | Sequence[int],
    round: int,
    stream: str,
) -> torch.Tensor:
    """Unit Gaussian noise, shape ``(B, *item_shape)`` float32 on the CPU, keyed as in the module doc.

    Thread-safe (scratch buffers are per thread); the returned tensor is new and owned by the caller.
    """
    secret = check_key(secret, "noise secret")
    round = _check_round(round)
    stream = _check_stream(stream)
    d = math.prod(int(s) for s in item_shape)
    ids = _ids_list(sample_ids, len(sample_ids))
    b = len(ids)
    if b == 0 or d == 0:
        return torch.zeros((b, *item_shape), dtype=torch.float32)
    p = (d + 1) // 2
    keys = prf_many(secret, NOISE_TAG, stream, round, last=ids)  # [prf(secret, NOISE_TAG, stream, round, i)]
    z = np.empty((b, 2 * p), dtype=np.float32)  # (B, 2P): cos half, then sin half
    _gaussian_rows(keys, p, z)
    return torch.from_numpy(z[:, :d].copy() if 2 * p != d else z).reshape(b, *item_shape)


def clip_per_sample(a: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """``a · min(1, S/‖a‖₂)`` per row (norm over all non-batch dims); differentiable, not in place."""
    norms = a.reshape(a.shape[0], -1).norm(p=2, dim=1)  # (B,)
    factor = torch.clamp(clip_norm / norms.clamp_min(1e-12), max=1.0)
    return a * factor.reshape(-1, *([1] * (a.dim() - 1))).to(a.dtype)


class ActivationProtector:
    """Clip-and-noise for one released tensor kind (activations, returned gradients, query activations).

    ``sigma`` is the noise multiplier relative to the clip norm (noise std = ``sigma · clip_norm``). For
    accounting, a release has sensitivity ``2S`` (one sample's content replaced), so its noise multiplier
    is :attr:`accounting_noise_multiplier` ``= sigma / 2`` (see :mod:`clicooper.privacy.accountant`).
    """

    def __init__(
        self, *, sigma: float, clip_norm: float, secret: bytes, prefetcher: NoisePrefetcher | None = None
    ) -> None:
        if not isinstance(sigma, int | float) or not math.isfinite(sigma) or sigma < 0:
            raise PrivacyError(f"sigma must be a finite number >= 0 (0 = clip only), got {sigma!r}")
        if not isinstance(clip_norm, int | float) or not math.isfinite(clip_norm) or clip_norm <= 0:
            raise PrivacyError(f"clip_norm must be a finite number > 0, got {clip_norm!r}")
        self.sigma = float(sigma)
        self.clip_norm = float(clip_norm)
        self._secret = check_key(secret, "noise secret")
        #: optional :class:`~clicooper.privacy.prefetch.NoisePrefetcher`: draws the predicted next batch's
        #: noise on a background thread (same values; a miss is computed inline)
        self.prefetcher = prefetcher

    def __repr__(self) -> str:  # never print the secret
        return f"ActivationProtector(sigma={self.sigma}, clip_norm={self.clip_norm}, secret=<hidden>)"

    @property
    def noise_std(self) -> float:
        """Standard deviation of the added noise, ``sigma · clip_norm``."""
        return self.sigma * self.clip_norm

    @property
    def accounting_noise_multiplier(self) -> float:
        """``z = sigma / 2``: the noise multiplier to account under ADD_OR_REMOVE_ONE (docs/design/mechanisms.md#accounting)."""
        return self.sigma / 2.0

    def noise(
        self,
        item_shape: Sequence[int],
        *,
        sample_ids: torch.Tensor | Sequence[int],
        round: int,
        stream: str = STREAM_ACT,
    ) -> torch.Tensor:
        """The noise ``N(0, σ²S²I)`` that :meth:`protect` adds, shape ``(B, *item_shape)``, float32 CPU.

        With a :attr:`prefetcher`, it is taken from there when it was computed ahead (the same values),
        and the batch predicted next is started in the background.
        """
        shape = tuple(int(s) for s in item_shape)
        pf = self.prefetcher
        if pf is None or pf.closed:
            return self._compute_noise(shape, sample_ids, round, stream)
        ids = _ids_list(sample_ids, len(sample_ids))
        round = _check_round(round)
        stream = _check_stream(stream)
        z = pf.take(self, stream, round, shape, ids)
        pf.ahead(self, self._compute_noise, stream, round, shape, ids)
        return z if z is not None else self._compute_noise(shape, ids, round, stream)

    def _compute_noise(
        self, item_shape: tuple[int, ...], ids: torch.Tensor | Sequence[int], round: int, stream: str
    ) -> torch.Tensor:
        z = keyed_standard_normal(self._secret, item_shape, sample_ids=ids, round=round, stream=stream)
        return z.mul_(self.noise_std)  # z is new: scale in place (same kernel and values as z * std)

    def protect(
        self,
        a: torch.Tensor,
        *,
        sample_ids: torch.Tensor | Sequence[int],
        round: int,
        stream: str = STREAM_ACT,
    ) -> torch.Tensor:
        """Clip each row of ``a`` (shape ``(B, …)``) to norm ``S`` and add the keyed noise.

        ``sample_ids`` are the rows' dataset indices (for ``stream="query"``: the query counters from
        :meth:`clicooper.privacy.accountant.QueryBudget.charge`), ``round`` the 0-based epoch (0 for
        queries). The result stays in ``a``'s autograd graph (the noise is a constant), so the DO sends
        ``ã.detach()`` and later calls ``ã.backward(g)``; it has ``a``'s dtype and device.
        """
        if not isinstance(a, torch.Tensor) or a.dim() < 1:
            raise PrivacyError("protect() needs a tensor with a leading batch dimension")
        ids = _ids_list(sample_ids, a.shape[0])
        round = _check_round(round)
        stream = _check_stream(stream)
        clipped = clip_per_sample(a, self.clip_norm)
        if self.sigma == 0.0:
            return clipped
        n = self.noise(tuple(a.shape[1:]), sample_ids=ids, round=round, stream=stream)
        n = n.to(device=a.device, dtype=a.dtype)
        if n._is_view() or n.requires_grad:  # a slice of a prefetched batch: leave it alone
            return clipped + n
        # n is ours alone: add into it (n + c == c + n exactly; the sum stays in a's graph) rather than
        # into a fresh tensor, whose first touch of every page costs more than the addition
        return n.add_(clipped)
