"""Secret label obfuscation (docs/design/mechanisms.md#label-obfuscation).

Labels live in an obfuscated space of ``C·m`` classes (``m`` = expansion, default 2):

* ``π``: keyed permutation of ``{0 … C·m−1}``. Stream: ``SHAKE-256(HKDF-SHA256(ikm=k_L, salt=None,
  info=b"label-perm", L=32))``. Fisher–Yates (Durstenfeld): ``perm = [0 … n−1]``; for ``i = n−1 … 1``: draw
  ``j`` uniform in ``[0, i]`` from 4-byte big-endian words with rejection (``w < 2³² − 2³² mod (i+1)``,
  ``j = w mod (i+1)``), swap ``perm[i], perm[j]``. ``π(v) = perm[v]``.
* ``encode(y, id, r) = π(y·m + j)`` with ``j = u64(HMAC-SHA256(k_L, lp("clicooper/label-sub", id, r))[:8])
  mod m`` — the sub-class of a sample changes every round.
* ``decode(p)[c] = Σ_j p[π(c·m + j)]``.

What it hides (honestly): class *names* from a party without labelled data. It does **not** hide which
samples share a class — sub-classes of a sample linked across rounds can be merged, and one labelled sample
per class names every group. See ``docs/privacy.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clicooper.errors import PrivacyError
from clicooper.privacy._keyed import KeyedStream, check_key, prf_u64

PERM_INFO = b"label-perm"
SUBCLASS_TAG = "clicooper/label-sub"
_MAX_OUTPUTS = 1 << 24


def keyed_permutation(key: bytes, n: int, *, info: bytes = PERM_INFO) -> list[int]:
    """The keyed permutation ``perm`` of ``range(n)`` described in the module doc (any device, any OS)."""
    key = check_key(key, "label key")
    stream = KeyedStream(key, info)
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = stream.uniform_below(i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


class LabelCodec:
    """Encode true labels into the secret obfuscated space and decode predictions back (docs/design/mechanisms.md#label-obfuscation)."""

    def __init__(self, *, key: bytes, num_classes: int, expansion: int = 2) -> None:
        self._key = check_key(key, "label key")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise PrivacyError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if isinstance(expansion, bool) or not isinstance(expansion, int) or expansion < 1:
            raise PrivacyError(f"expansion must be an int >= 1 (1 = permutation only), got {expansion!r}")
        if num_classes * expansion > _MAX_OUTPUTS:
            raise PrivacyError(f"num_classes·expansion must be <= {_MAX_OUTPUTS}; lower the expansion")
        self.num_classes = num_classes
        self.expansion = expansion
        self.permutation: tuple[int, ...] = tuple(keyed_permutation(self._key, self.num_outputs))
        # _index[c, j] = π(c·m + j): the obfuscated outputs that belong to true class c.
        self._index = torch.tensor(self.permutation, dtype=torch.long).reshape(num_classes, expansion)
        inverse = [0] * self.num_outputs
        for v, pv in enumerate(self.permutation):
            inverse[pv] = v
        self._true_of_output = torch.tensor(inverse, dtype=torch.long) // expansion  # (C·m,)

    def __repr__(self) -> str:  # never print the key or the permutation
        return f"LabelCodec(num_classes={self.num_classes}, expansion={self.expansion}, key=<hidden>)"

    @property
    def num_outputs(self) -> int:
        """``C·m``: the width of the model's last layer."""
        return self.num_classes * self.expansion

    def subclass(self, sample_id: int, round: int) -> int:
        """``j = PRF(k_L, id, round) mod m``."""
        if self.expansion == 1:
            return 0
        return prf_u64(self._key, SUBCLASS_TAG, int(sample_id), int(round)) % self.expansion

    def encode(
        self, y: torch.Tensor, *, sample_ids: torch.Tensor | Sequence[int], round: int
    ) -> torch.Tensor:
        """Obfuscated labels ``π(y·m + j)`` (int64, same shape and device as ``y``)."""
        if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.dtype.is_floating_point:
            raise PrivacyError("y must be a 1-D integer tensor of true class indices")
        if isinstance(round, bool) or not isinstance(round, int) or round < 0:
            raise PrivacyError(f"round must be a non-negative int (0-based epoch), got {round!r}")
        ids = sample_ids.tolist() if isinstance(sample_ids, torch.Tensor) else list(sample_ids)
        if len(ids) != y.shape[0]:
            raise PrivacyError(f"got {len(ids)} sample_ids for {y.shape[0]} labels; pass one id per label")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise PrivacyError(
                f"labels must lie in [0, {self.num_classes}); got {int(y.min())}..{int(y.max())}"
            )
        j = torch.tensor([self.subclass(int(i), round) for i in ids], dtype=torch.long)
        flat = y.detach().cpu().long() * self.expansion + j
        return self._flat_perm()[flat].to(y.device)

    def _flat_perm(self) -> torch.Tensor:
        return self._index.reshape(-1)

    def decode_probs(self, p: torch.Tensor) -> torch.Tensor:
        """Probabilities over the ``C·m`` obfuscated outputs ``(…, C·m)`` → over the true classes ``(…, C)``."""
        if not isinstance(p, torch.Tensor) or p.dim() < 1 or p.shape[-1] != self.num_outputs:
            raise PrivacyError(
                f"decode_probs needs a tensor whose last dim is num_outputs={self.num_outputs}; "
                "is the label key the one this model was trained with?"
            )
        return p[..., self._index.to(p.device)].sum(dim=-1)  # (…, C, m) → (…, C)

    def decode_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``decode_probs(softmax(logits))``: true-class probabilities from raw model outputs."""
        if not isinstance(logits, torch.Tensor) or logits.dim() < 1:
            raise PrivacyError("decode_logits needs a tensor of logits with classes in the last dim")
        return self.decode_probs(torch.softmax(logits, dim=-1))

    def decode_labels(self, obfuscated: torch.Tensor) -> torch.Tensor:
        """True class of each obfuscated label (the inverse of :meth:`encode`, for checks and reports)."""
        return self._true_of_output.to(obfuscated.device)[obfuscated.long()]
