"""Adversarial training of the DO's head against a decoder it trains itself (ResSFL-style: Li et al., "ResSFL:
A Resistance Transfer Framework for Defending Model Inversion Attack in Split Federated Learning", CVPR 2022).

The DO keeps a decoder (an MLP: the release, flattened → ``hidden`` → ReLU → the input, sigmoid) and, at each
micro-batch, (1) steps it once (Adam) to reconstruct the input from what it released, then (2) adds
−λ · MSE(decoder(release), input) to its head's loss, so the head learns releases that this decoder inverts
badly. Both run at the DO only; nothing about them travels. The decoder's FLOPs are the DO's and
:meth:`InversionAdversary.flops_per_sample` counts them (the plan's ``do_flop_share`` does not).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


class InversionAdversary:
    """The DO's own decoder and the head term it gives (see the module doc)."""

    def __init__(self, cut_shape: Sequence[int], input_shape: Sequence[int], *, weight: float, hidden: int = 512,
                 lr: float = 1e-3, seed: int = 0, device: torch.device | str = "cpu") -> None:
        if not (weight > 0 and math.isfinite(weight)):
            raise ValueError(f"the adversarial decoder's weight λ must be a finite number > 0, got {weight}")
        self.weight = float(weight)
        self.d, self.out = math.prod(cut_shape), math.prod(input_shape)
        self.hidden = hidden
        with torch.random.fork_rng(devices=[]):  # its own init: the parties' weights stay those of the seed
            torch.manual_seed(seed)
            self.decoder = nn.Sequential(nn.Flatten(), nn.Linear(self.d, hidden), nn.ReLU(),
                                         nn.Linear(hidden, self.out), nn.Sigmoid()).to(device)
        self.optimizer = torch.optim.Adam(self.decoder.parameters(), lr=lr)

    def step(self, release: torch.Tensor, x: torch.Tensor) -> float:
        """One decoder step on (what was released, the input); returns its reconstruction MSE."""
        loss = F.mse_loss(self.decoder(release.detach()), x.detach().flatten(1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach().item()

    def head_term(self, release: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """−λ · MSE(decoder(release), x) through the release (the decoder's weights held fixed: a copy, so its
        later steps do not disturb this graph)."""
        frozen = {n: p.detach().clone() for n, p in self.decoder.named_parameters()}
        return -self.weight * F.mse_loss(functional_call(self.decoder, frozen, (release,)), x.detach().flatten(1))

    def flops_per_sample(self) -> int:
        """FLOPs per training sample (2 per multiply-add, the unit of the plan's FLOP counts): the decoder's
        forward + backward (≈ 3 × forward) for its step and again for the head term."""
        return 2 * 2 * 3 * (self.d * self.hidden + self.hidden * self.out)
