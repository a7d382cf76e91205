"""NoPeek: the DO's head trained to decorrelate what it releases from its inputs (Vepakomma et al., "NoPeek:
Information leakage reduction to share activations in distributed deep learning", ICDMW 2020).

The head's loss gains α · DCOR(x, z) per micro-batch: the (sample) distance correlation of Székely, Rizzo and
Bakirov (2007) between the flattened inputs x and the head's outputs z. Nothing about it travels: it is
computed and back-propagated at the DO only, beside the gradient T1 returns (``RunConfig.nopeek``).
"""

from __future__ import annotations

import torch


def _centred_distances(v: torch.Tensor) -> torch.Tensor:
    """Double-centred pairwise Euclidean distances of the rows of ``v`` (n, d) → (n, n).

    The distances are taken as sqrt(squared + ε) so that the diagonal (zero distance) has a finite gradient."""
    d = (v[:, None, :] - v[None, :, :]).pow(2).sum(-1).add(1e-12).sqrt()
    return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()


def distance_correlation(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Sample distance correlation in [0, 1] between ``x`` (n, …) and ``z`` (n, …), rows paired (n ≥ 2):
    0 for independent samples (in the limit), 1 where z is a similarity transform of x. Differentiable."""
    if x.shape[0] != z.shape[0] or x.shape[0] < 2:
        raise ValueError(f"distance_correlation needs the same n ≥ 2 rows in both, got {x.shape[0]} and {z.shape[0]}")
    a, b = _centred_distances(x.flatten(1).to(z.dtype)), _centred_distances(z.flatten(1))
    dcov_xz = (a * b).mean()
    denom = ((a * a).mean() * (b * b).mean()).sqrt()
    return (dcov_xz.clamp_min(0.0) / denom.clamp_min(1e-12)).sqrt()
