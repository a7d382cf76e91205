"""DP-SGD on the data owner's head (docs/design/mechanisms.md#accounting: the full guarantee needs the head trained with DP-SGD).

The DO's head is trained on raw data, so the per-release ε of the activations holds only with the head
fixed. With ``dp.head_dpsgd`` the head's update is DP-SGD (Abadi et al. 2016) instead:

1. per-sample gradients of the head's parameters, computed with ``torch.func`` (``functional_call`` +
   ``vjp`` under ``vmap``) from each sample's input and the gradient T1 returned for its release (the
   release is clipped per sample, so the map from a sample to its release is per-sample too);
2. each per-sample gradient — of that sample's own loss: T1's gradient is of the batch-mean loss, so it is
   scaled by the batch size first — is clipped to L2 norm ``C`` over all head parameters jointly;
3. their sum (over every micro-batch of the step) gets Gaussian noise of std ``noise_multiplier · C``,
   drawn from the DO's secret (stream ``"dpsgd"``, item = step, round = epoch; never the public seed), and
   is divided by the batch size. That is the head's ``.grad`` for the DO's optimizer step; the tail's
   gradient is untouched (it never leaves the DO).

This is Opacus's recipe, written with ``torch.func`` because the head's output gradient arrives over the
network rather than from a local loss. Accounting (``accountant.epsilon_with_dpsgd_head``): the DO's
batches are a shuffled partition of the training rows, not Poisson samples, so each sample is in exactly
one DP-SGD step per epoch; we account **without** subsampling amplification (``sample_rate = 1``, one
Gaussian per epoch per sample), composed with the epoch's activation release, under replace-one: a valid,
conservative bound for shuffled batches (Poisson accounting would not be, see Chua et al. 2024).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, vjp, vmap

from clicooper.errors import PrivacyError
from clicooper.privacy.activation import keyed_standard_normal

STREAM_DPSGD = "dpsgd"


def _positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise PrivacyError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class HeadDPSGD:
    """Per-sample clipped, keyed-noise gradients for the DO's ``head`` (see module docstring)."""

    def __init__(self, head: nn.Module, *, noise_multiplier: float, max_grad_norm: float, secret: bytes,
                 release: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.head = head
        self.noise_multiplier = _positive(noise_multiplier, "dp.head_dpsgd.noise_multiplier")
        self.max_grad_norm = _positive(max_grad_norm, "dp.head_dpsgd.max_grad_norm")
        self._secret = secret
        #: the per-sample map from the head's output to what is released, before the (constant) noise
        self.release = release if release is not None else (lambda a: a)
        self._names = [n for n, p in head.named_parameters() if p.requires_grad]
        self._sum: dict[str, torch.Tensor] | None = None

    def __repr__(self) -> str:  # never print the secret
        return f"HeadDPSGD(noise_multiplier={self.noise_multiplier}, max_grad_norm={self.max_grad_norm})"

    def per_sample_grads(self, x: torch.Tensor, grad_out: torch.Tensor, *, batch_size: int) -> dict[str, torch.Tensor]:
        """Gradients of each sample's own loss w.r.t. the head's parameters, ``{name: (b, *shape)}``.

        ``grad_out`` is ∂(batch-mean loss)/∂release for the rows of ``x``; multiplying by ``batch_size``
        turns it into each sample's own loss gradient.
        """
        if x.shape[0] != grad_out.shape[0]:
            raise PrivacyError(f"{x.shape[0]} inputs but {grad_out.shape[0]} output gradients")
        params = {n: p.detach() for n, p in self.head.named_parameters() if n in self._names}
        buffers = {n: b.detach() for n, b in self.head.named_buffers()}

        def one(p: dict[str, torch.Tensor], x_i: torch.Tensor, g_i: torch.Tensor) -> dict[str, torch.Tensor]:
            def out(q: dict[str, torch.Tensor]) -> torch.Tensor:
                return self.release(functional_call(self.head, (q, buffers), (x_i.unsqueeze(0),)))

            _, pull = vjp(out, p)
            return pull(g_i.unsqueeze(0))[0]

        return vmap(one, in_dims=(None, 0, 0))(params, x, grad_out * float(batch_size))

    def accumulate(self, x: torch.Tensor, grad_out: torch.Tensor, *, batch_size: int) -> None:
        """Add the clipped per-sample gradients of one micro-batch to the step's sum."""
        grads = self.per_sample_grads(x, grad_out, batch_size=batch_size)
        b = x.shape[0]
        sq = torch.zeros(b, dtype=torch.float64, device=x.device)
        for g in grads.values():
            sq += g.reshape(b, -1).double().pow(2).sum(1)
        factor = torch.clamp(self.max_grad_norm / sq.sqrt().clamp_min(1e-12), max=1.0)
        if self._sum is None:
            self._sum = {n: torch.zeros_like(g[0]) for n, g in grads.items()}
        for n, g in grads.items():
            self._sum[n] += (g * factor.to(g.dtype).reshape(-1, *([1] * (g.dim() - 1)))).sum(0)

    def finalize(self, *, epoch: int, step: int, batch_size: int) -> None:
        """Noise the step's sum, divide by ``batch_size`` and set it as the head's ``.grad``."""
        if self._sum is None:
            raise PrivacyError("DP-SGD: no per-sample gradient was accumulated for this step")
        named = dict(self.head.named_parameters())
        total = sum(t.numel() for t in self._sum.values())
        z = keyed_standard_normal(self._secret, (total,), sample_ids=[step], round=epoch, stream=STREAM_DPSGD)[0]
        off = 0
        std = self.noise_multiplier * self.max_grad_norm
        for n in self._names:
            s = self._sum[n]
            k = s.numel()
            noisy = s + std * z[off : off + k].reshape(s.shape).to(s.device, s.dtype)
            off += k
            named[n].grad = noisy / float(batch_size)
        self._sum = None

