"""A secret random head: the DO's head drawn from a key and never trained ("a learned head against a secret
random one", issue 14).

Every weight (a parameter of two or more dimensions) is Kaiming-normal, std √(2 / fan-in), from the keyed
Gaussian stream of :mod:`clicooper.privacy.activation` under the DO's head key; every bias and every 1-d
parameter is 0. The head is then frozen, so what it computes is a fixed secret function of the input: the
trainers (and an attacker among them) never learn its weights from the protocol, and no gradient reaches
it. The key is ``PRF(noise_secret, "clicooper/head-init")``: derived from a secret from the OS CSPRNG, never
from the public seed, and domain-separated from the noise draws.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from clicooper.privacy._keyed import check_key, prf
from clicooper.privacy.activation import keyed_standard_normal

HEAD_KEY_TAG = "clicooper/head-init"


def head_key(noise_secret: bytes) -> bytes:
    """The 32-byte key the secret random head is drawn from."""
    return prf(check_key(noise_secret, "noise secret"), HEAD_KEY_TAG)


def draw_secret_head(head: nn.Module, key: bytes) -> None:
    """Overwrite ``head``'s parameters with their keyed draw (see the module doc) and freeze them (in place).

    The draw depends only on the key and the parameters' order and shapes, so a resumed run, a networked DO
    and an in-process one draw the same head."""
    key = check_key(key, "head key")
    with torch.no_grad():
        for i, (_, p) in enumerate(head.named_parameters()):
            if p.dim() >= 2:
                z = keyed_standard_normal(key, (p.numel(),), sample_ids=[i], round=0, stream="head-init")
                p.copy_(z.reshape(p.shape).to(p.dtype) * math.sqrt(2.0 / p[0].numel()))
            else:
                p.zero_()
            p.requires_grad_(False)
