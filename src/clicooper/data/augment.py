"""Optional training augmentation the DO applies to its batch before its head: random crop with zero
padding and horizontal flip, written in torch (no torchvision).

The draws are a pure function of the public ``(seed, epoch, sample id)`` (a splitmix64 hash), so a resumed
run, a DO node over gRPC and an in-process run augment every sample identically. This randomness is public
on purpose: it is not a secret and protects nothing; the privacy mechanisms act on the head's output.
Only training batches are augmented, never test or evaluation inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from clicooper.config.run import DataOptions

_MASK = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (z + np.uint64(0x9E3779B97F4A7C15)) & _MASK
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
        return z ^ (z >> np.uint64(31))


def draws(ids: torch.Tensor, *, seed: int, epoch: int) -> np.ndarray:
    """One public 64-bit draw per sample id, a pure function of ``(seed, epoch, id)``."""
    base = _splitmix64(np.array([seed & 0xFFFF_FFFF_FFFF_FFFF], dtype=np.uint64))
    base = _splitmix64(base ^ np.uint64(epoch & 0xFFFF_FFFF_FFFF_FFFF))
    return _splitmix64(base ^ ids.detach().cpu().numpy().astype(np.int64).view(np.uint64))


@dataclass(frozen=True)
class Augmenter:
    """Random crop (zero padding ``crop_padding`` on each side, then a window of the original size) and
    horizontal flip (probability ½ when ``flip``), per sample, from :func:`draws`."""

    seed: int
    crop_padding: int = 0
    flip: bool = False

    def __call__(self, x: torch.Tensor, ids: torch.Tensor, epoch: int) -> torch.Tensor:
        """``x`` (B, C, H, W) of samples ``ids`` augmented for ``epoch``; same shape, dtype and device."""
        if x.dim() != 4 or (self.crop_padding == 0 and not self.flip):
            return x
        d = draws(ids, seed=self.seed, epoch=epoch)
        out = self._crop(x, d) if self.crop_padding > 0 else x
        if self.flip:
            mask = torch.from_numpy(((d >> np.uint64(63)) & np.uint64(1)).astype(np.bool_)).to(x.device)
            out = torch.where(mask[:, None, None, None], out.flip(-1), out)
        return out

    def _crop(self, x: torch.Tensor, d: np.ndarray) -> torch.Tensor:
        """Per-sample window of the zero-padded batch, offsets in ``[0, 2·crop_padding]`` from ``d``."""
        p, (b, _, h, w) = self.crop_padding, x.shape
        span = np.uint64(2 * p + 1)
        dy = torch.from_numpy((d % span).astype(np.int64)).to(x.device)
        dx = torch.from_numpy(((d >> np.uint64(16)) % span).astype(np.int64)).to(x.device)
        padded = F.pad(x, (p, p, p, p))
        rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H)
        cols = dx[:, None] + torch.arange(w, device=x.device)  # (B, W)
        bi = torch.arange(b, device=x.device)[:, None, None]
        win = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
        return win.permute(0, 3, 1, 2).contiguous()


def augmenter_for(options: DataOptions, *, seed: int) -> Augmenter | None:
    """The run's :class:`Augmenter` (``data.crop_padding``, ``data.flip``; public ``seed``), or ``None`` when off."""
    if options.crop_padding == 0 and not options.flip:
        return None
    return Augmenter(seed, options.crop_padding, options.flip)
