"""Label differential privacy by randomized response with a prior (open-tail topology, docs/design/mechanisms.md#label-dp).

RR-with-prior (Ghazi, Golowich, Kumar, Manurangsi, Zhang: "Deep Learning with Label Differential
Privacy", NeurIPS 2021, Alg. 2 *RRWithPrior*): given a prior ``p`` over the C classes for a sample, take the
``k`` most likely classes ``Y_k`` maximising ``p(Y_k) · e^ε / (e^ε + k − 1)``, then answer by ε-randomized
response inside ``Y_k``: the true label with probability ``e^ε/(e^ε+k−1)`` if it is in ``Y_k`` (each other
member ``1/(e^ε+k−1)``), else a uniform member of ``Y_k``. With no prior (uniform) ``k = C``: plain RR. It is
ε-label-DP for the sample's label as long as the prior does not depend on that label.

**One draw per sample.** The uniform variate of sample ``i`` is ``u64(HMAC-SHA256(key,
lp("clicooper/label-dp", i))[:8]) / 2⁶⁴``, independent of the epoch: every epoch sees the *same* noisy label.
Fresh draws per epoch would be undone by a majority vote over epochs (and would compose to E·ε); with one
reused draw the label is released once, so the whole run is ε-label-DP — no composition over epochs, and
no δ. (Calling again with a different prior is a new release: its ε adds.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from clicooper.errors import PrivacyError
from clicooper.privacy._keyed import check_key, prf_u64
from clicooper.privacy.accountant import COVERS_LABEL_DP, PrivacyReport

RR_TAG = "clicooper/label-dp"


class RandomizedResponse:
    """ε-label-DP noisy labels, drawn once per sample from a keyed generator (RR-with-prior)."""

    def __init__(self, *, epsilon: float, num_classes: int, key: bytes) -> None:
        if (
            isinstance(epsilon, bool)
            or not isinstance(epsilon, int | float)
            or not math.isfinite(epsilon)
            or epsilon <= 0
        ):
            raise PrivacyError(
                f"epsilon must be a finite number > 0 for randomized response, got {epsilon!r}"
            )
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise PrivacyError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.epsilon = float(epsilon)
        self.num_classes = num_classes
        self._key = check_key(key, "randomized-response key")

    def __repr__(self) -> str:
        return f"RandomizedResponse(epsilon={self.epsilon}, num_classes={self.num_classes}, key=<hidden>)"

    def _prior_matrix(self, prior: torch.Tensor | None, batch: int) -> torch.Tensor:
        c = self.num_classes
        if prior is None:
            return torch.full((batch, c), 1.0 / c, dtype=torch.float64)
        if not isinstance(prior, torch.Tensor) or prior.shape not in ((c,), (batch, c)):
            raise PrivacyError(f"prior must be a tensor of shape ({c},) or ({batch}, {c})")
        p = prior.detach().cpu().to(torch.float64)
        if not torch.isfinite(p).all() or (p < 0).any():
            raise PrivacyError("prior must be finite and non-negative")
        p = p.expand(batch, c)
        s = p.sum(dim=1, keepdim=True)
        if (s <= 0).any():
            raise PrivacyError("every prior row must have positive mass")
        return p / s

    def probabilities(self, y: torch.Tensor, *, prior: torch.Tensor | None = None) -> torch.Tensor:
        """Output distribution of the noisy label, shape ``(B, C)`` float64 (rows sum to 1)."""
        if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.dtype.is_floating_point:
            raise PrivacyError("y must be a 1-D integer tensor of true class indices")
        b, c = y.shape[0], self.num_classes
        if b and (int(y.min()) < 0 or int(y.max()) >= c):
            raise PrivacyError(f"labels must lie in [0, {c})")
        p = self._prior_matrix(prior, b)
        e = math.exp(min(self.epsilon, 700.0))
        order = torch.sort(p, dim=1, descending=True, stable=True).indices  # ties: lower class first
        mass = torch.gather(p, 1, order).cumsum(dim=1)  # (B, C): p(Y_k) for k = 1..C
        ks = torch.arange(1, c + 1, dtype=torch.float64)
        k = torch.argmax(mass * (e / (e + ks - 1.0)), dim=1) + 1  # (B,) first maximiser
        in_top = torch.arange(c).unsqueeze(0) < k.unsqueeze(1)  # (B, C) in sorted order
        top = torch.zeros(b, c, dtype=torch.bool).scatter(1, order, in_top)  # (B, C) by class
        kf = k.to(torch.float64).unsqueeze(1)
        y_cpu = y.detach().cpu().long()
        y_in = top.gather(1, y_cpu.unsqueeze(1))  # (B, 1)
        probs = torch.where(top, 1.0 / (e + kf - 1.0), torch.zeros((), dtype=torch.float64))
        keep = (e / (e + kf - 1.0)).squeeze(1)
        rows = torch.arange(b)
        probs[rows, y_cpu] = torch.where(y_in.squeeze(1), keep, probs[rows, y_cpu])
        uniform = top.to(torch.float64) / kf
        return torch.where(y_in, probs, uniform)

    def noisy_labels(
        self,
        y: torch.Tensor,
        *,
        sample_ids: torch.Tensor | Sequence[int],
        prior: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Noisy labels (int64, ``y``'s shape and device); the same for a sample on every call."""
        probs = self.probabilities(y, prior=prior)
        ids = sample_ids.tolist() if isinstance(sample_ids, torch.Tensor) else list(sample_ids)
        if len(ids) != y.shape[0]:
            raise PrivacyError(f"got {len(ids)} sample_ids for {y.shape[0]} labels; pass one id per label")
        u = torch.tensor([prf_u64(self._key, RR_TAG, int(i)) / 2.0**64 for i in ids], dtype=torch.float64)
        cdf = probs.cumsum(dim=1)
        out = (cdf <= u.unsqueeze(1)).sum(dim=1)  # first class with u < cdf
        # Rounding may leave u above the last cdf value: fall back to the last class with mass.
        last = self.num_classes - 1 - torch.argmax((probs.flip(1) > 0).to(torch.int8), dim=1)
        out = torch.minimum(out, last)
        return out.to(y.device)

    def report(self) -> PrivacyReport:
        """The label-DP guarantee: pure ε (δ = 0), for the whole run because each draw is reused."""
        return PrivacyReport(
            covers=COVERS_LABEL_DP,
            epsilon=self.epsilon,
            delta=0.0,
            accountant="exact",
            unit="one sample's label changed",
            params={"num_classes": self.num_classes, "draws": "once per sample, reused every epoch"},
        )
