"""Small networks and training loops shared by the attacks (torch.nn only, CPU friendly)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Decoder(nn.Module):
    """Maps a cut-layer tensor back to an input image: the inversion network of He et al. 2019 ("Model
    inversion attacks against collaborative inference", ACSAC) in a small conv / upsampling form.

    Works for image-shaped inputs (C, h, w) and flat ones (D,), which are first projected to a
    (width, H/4, W/4) map.
    """

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], width: int = 64,
                 dropout: float = 0.0) -> None:
        super().__init__()
        c_out, h, w = out_shape
        self.out_shape = out_shape
        if len(in_shape) == 3:
            self.stem: nn.Module = nn.Sequential(nn.Conv2d(in_shape[0], width, 3, padding=1), nn.ReLU())
        else:
            hs, ws = max(1, math.ceil(h / 4)), max(1, math.ceil(w / 4))
            self.stem = nn.Sequential(nn.Flatten(), nn.Linear(int(math.prod(in_shape)), width * hs * ws),
                                      nn.ReLU(), nn.Unflatten(1, (width, hs, ws)))
        self.body = nn.Sequential(
            nn.Dropout2d(dropout),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),  # (B, width, h, w): most work at low resolution
            nn.Upsample(size=(h, w), mode="bilinear", align_corners=False),
            nn.Conv2d(width, width // 2, 3, padding=1), nn.ReLU(),  # (B, width/2, H, W)
            nn.Conv2d(width // 2, c_out, 3, padding=1),  # (B, C, H, W)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(self.stem(z)))


def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Apply ``fn`` without gradients in batches."""
    with torch.no_grad():
        return torch.cat([fn(x[i : i + batch]) for i in range(0, x.shape[0], batch)])


def random_shift(x: torch.Tensor, max_shift: int = 2, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero fill): cheap augmentation for few labels."""
    if x.dim() != 4 or max_shift == 0:
        return x
    n, _, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p))
    dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    idx_h = (dy[:, None] + torch.arange(h)[None]).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * p)
    rows = padded.gather(2, idx_h)
    idx_w = (dx[:, None] + torch.arange(w)[None]).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    return rows.gather(3, idx_w)


def fit(model: nn.Module, loss_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor], n: int, *,
        steps: int, batch: int = 128, lr: float = 1e-3, weight_decay: float = 0.0, seed: int = 0,
        params: list[nn.Parameter] | None = None,
        val: Callable[[nn.Module], float] | None = None, val_every: int = 0,
        checkpoints: Sequence[int] = (), on_checkpoint: Callable[[int, nn.Module], None] | None = None,
        ) -> nn.Module:
    """Minimise ``loss_fn(model, batch_indices)`` with Adam for ``steps`` minibatches of ``n`` samples.

    With ``val`` (lower is better), the best state seen every ``val_every`` steps is restored at the end
    (early stopping on data the attacker holds).

    ``on_checkpoint(step, model)`` is called after each step count in ``checkpoints`` (below ``steps``)
    with the model as a run of that many steps would return it (eval mode; with ``val``, the best state
    seen so far): the attack's figure at a fraction of its budget, read along one run
    (:func:`clicooper.attacks.base.budget_points`). Training then resumes from the current state.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params if params is not None else [p for p in model.parameters() if p.requires_grad],
                           lr=lr, weight_decay=weight_decay)
    best, best_state = math.inf, None
    perm, pos = torch.randperm(n, generator=gen), 0
    marks = {int(c) for c in checkpoints if 0 < int(c) < steps}
    model.train()
    for step in range(steps):
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + min(batch, n)]
        pos += batch
        opt.zero_grad()
        loss = loss_fn(model, idx)
        loss.backward()
        opt.step()
        if val is not None and val_every and ((step + 1) % val_every == 0 or step + 1 == steps):
            model.eval()
            v = val(model)
            model.train()
            if v < best:
                best, best_state = v, copy.deepcopy(model.state_dict())
        if on_checkpoint is not None and step + 1 in marks:
            _checkpoint(model, step + 1, best_state, on_checkpoint)
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval()


def _checkpoint(model: nn.Module, step: int, best_state: dict[str, torch.Tensor] | None,
                on_checkpoint: Callable[[int, nn.Module], None]) -> None:
    """Hand ``on_checkpoint`` the model a ``step``-step run would return, then restore the training state."""
    current = copy.deepcopy(model.state_dict()) if best_state is not None else None
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    with torch.random.fork_rng(devices=[]):  # evaluating must not change the run's own randomness
        on_checkpoint(step, model)
    if current is not None:
        model.load_state_dict(current)
    model.train()


def reinit(module: nn.Module, seed: int) -> nn.Module:
    """Re-draw every parameter of ``module`` (fresh weights of the same architecture)."""
    torch.manual_seed(seed)
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()  # type: ignore[operator]
    return module
