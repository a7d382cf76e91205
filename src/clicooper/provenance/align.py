"""Undo hidden-unit permutation and positive rescaling before watermark extraction (docs/design/mechanisms.md#alignment).

A network computes the same function after (a) permuting the hidden units of a layer (rows of W_l and
b_l, columns of W_{l+1}) and (b) scaling a hidden unit by c > 0 (row of W_l and b_l times c, column of
W_{l+1} divided by c) when the activation between the layers is positively homogeneous (ReLU, LeakyReLU,
MaxPool, identity). An outsider can do both to a stolen model at no cost in accuracy, and both scramble
the watermark's projection. :func:`align_chain` maps the suspect's units back onto the committed
(reference) weights:

for each layer l but the last, with its input side already aligned, compare the reference's and the
suspect's unit vectors (row of W_l with b_l, normalised to unit length so the comparison ignores the
scale), match units with the Hungarian algorithm on cosine similarity
(``scipy.optimize.linear_sum_assignment``), scale each matched suspect unit by
‖ref row‖ / ‖suspect row‖, and carry the inverse permutation and scale into layer l+1's input columns.

What it covers: a chain of ``Linear`` and ``Conv2d`` layers (weights 2-D or 4-D, optional bias) with
elementwise positively-homogeneous activations and pooling between them, and a ``Flatten`` between a
conv and a linear layer (each channel maps to a block of consecutive input columns). Units at the chain's
two ends (the model's input and output) are not permuted. Across segment boundaries: pass the segments
of consecutive positions in order, they are aligned as one chain.

What it does not cover (``ConfigError``): BatchNorm / LayerNorm or any parameter that is not a weight or a
bias of such a layer, residual connections, attention, changed layer widths (units removed), negative
or non-ReLU-invariant rescaling, units merged or split. Fine-tuned or pruned copies align approximately;
the pooled binomial test then tolerates the remaining bit errors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from clicooper.errors import ConfigError

StateDict = Mapping[str, torch.Tensor]


def _natural_key(name: str) -> list[object]:
    return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"\.", name)]


def layers_of(state: StateDict) -> list[tuple[str, str | None]]:
    """``[(weight key, bias key or None), …]`` in natural module order (``nn.Sequential`` indices).

    Raises :class:`ConfigError` for any tensor that is not the weight or bias of a 2-D/4-D layer.
    """
    prefixes: dict[str, dict[str, str]] = {}
    for key in state:
        prefix, _, leaf = key.rpartition(".")
        if leaf not in ("weight", "bias"):
            raise ConfigError(f"alignment supports Linear/Conv2d weights and biases only, found {key!r}; "
                              "prove with align=False")
        prefixes.setdefault(prefix, {})[leaf] = key
    out = []
    for prefix in sorted(prefixes, key=_natural_key):
        d = prefixes[prefix]
        if "weight" not in d or state[d["weight"]].dim() not in (2, 4):
            raise ConfigError(f"layer {prefix!r} is not a Linear or Conv2d layer (weight missing or of "
                              "another shape, e.g. a norm layer); prove with align=False")
        out.append((d["weight"], d.get("bias")))
    return out


def _rows(w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """(units, fan_in [+1]) matrix of a layer's output units."""
    r = w.reshape(w.shape[0], -1)
    return torch.cat([r, b.reshape(-1, 1)], dim=1) if b is not None else r


def _apply_input(w: torch.Tensor, perm: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Reorder and rescale the input side of ``w`` for the previous layer's unit ``perm`` / ``scale``.

    Column j of the result = original column ``perm[j]`` divided by ``scale[j]`` (a Flatten block counts
    as one unit).
    """
    units = perm.numel()
    fan_in = w.shape[1]
    if w.dim() == 4 or fan_in == units:
        w = w.index_select(1, perm)
        shape = [1, units] + [1] * (w.dim() - 2)
        return w / scale.reshape(shape)
    if fan_in % units:
        raise ConfigError(f"a layer with {fan_in} inputs cannot follow one with {units} units")
    block = fan_in // units  # Flatten after a conv: channel c owns columns c*block … (c+1)*block-1
    w3 = w.reshape(w.shape[0], units, block).index_select(1, perm) / scale.reshape(1, units, 1)
    return w3.reshape(w.shape[0], fan_in)


@dataclass
class Alignment:
    """Aligned copies of the suspect segments, and how well each hidden layer's units matched."""

    segments: list[dict[str, torch.Tensor]]
    layer_similarity: list[float]  # mean cosine of matched unit vectors, one per aligned layer
    null_similarity: list[float]  # the same for random unit vectors of that layer's shape (chance level)

    def accepted(self, margin: float = 0.5) -> bool:
        """True when every layer's similarity is at least ``margin`` of the way from chance to 1:
        ``s ≥ null + margin · (1 − null)``. A copy of the committed weights passes; unrelated models
        stay near chance (tests: ≈ chance for every layer, far below the gate)."""
        return all(s >= n + margin * (1.0 - n) for s, n in zip(self.layer_similarity, self.null_similarity, strict=True))


def align_chain(reference: Sequence[StateDict], suspect: Sequence[StateDict]) -> Alignment:
    """Align ``suspect`` (segments of consecutive positions) to ``reference``; returns copies.

    Both lists hold state dicts with the same keys and shapes, segment by segment. See the module
    docstring for what is covered; raises :class:`ConfigError` otherwise. ``layer_similarity`` tells a
    genuine (possibly fine-tuned or pruned) copy, whose units match with cosine near 1, from an unrelated
    model, which Hungarian matching can only pull to a weak similarity (≈ 0.2–0.3 in our tests) — but that
    weak pull is enough to bias the watermark bits, so callers must not trust bits extracted from a weak
    alignment (see :func:`clicooper.provenance.reveal.prove`).
    """
    if len(reference) != len(suspect):
        raise ConfigError("reference and suspect must have the same number of segments")
    chain: list[tuple[int, str, str | None]] = []
    for s, (ref, sus) in enumerate(zip(reference, suspect, strict=True)):
        if set(ref) != set(sus):
            raise ConfigError(f"segment {s}: suspect parameters {sorted(sus)} differ from the reference's "
                              f"{sorted(ref)}")
        for k in ref:
            if ref[k].shape != sus[k].shape:
                raise ConfigError(f"segment {s}: {k} has shape {tuple(sus[k].shape)}, reference "
                                  f"{tuple(ref[k].shape)} (units removed cannot be aligned)")
        chain += [(s, w, b) for w, b in layers_of(ref)]
    out = [{k: v.detach().to(torch.float64).clone() for k, v in sus.items()} for sus in suspect]
    perm: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    similarity: list[float] = []
    null: list[float] = []
    # calibration only (chance level of Hungarian matching), not key-derived: a fixed generator is fine
    gen = torch.Generator().manual_seed(0)
    for i, (s, wk, bk) in enumerate(chain):
        w = out[s][wk]
        if perm is not None and scale is not None:
            w = _apply_input(w, perm, scale)
        out[s][wk] = w
        if i == len(chain) - 1:
            break  # the chain's output units stay where they are
        b = out[s][bk] if bk else None
        ref_w = reference[s][wk].detach().to(torch.float64)
        ref_b = reference[s][bk].detach().to(torch.float64) if bk else None
        ref_rows, sus_rows = _rows(ref_w, ref_b), _rows(w, b)
        ref_n = ref_rows.norm(dim=1).clamp_min(1e-12)
        sus_n = sus_rows.norm(dim=1).clamp_min(1e-12)
        cos = (ref_rows / ref_n[:, None]) @ (sus_rows / sus_n[:, None]).T  # (units_ref, units_sus)
        _, col = linear_sum_assignment(-cos.numpy())
        perm = torch.from_numpy(np.asarray(col, dtype=np.int64))
        similarity.append(float(cos[torch.arange(perm.numel()), perm].mean()))
        null.append(_matched_similarity(ref_rows / ref_n[:, None], gen))
        # unit j of the aligned model = suspect unit perm[j], scaled by ‖ref_j‖ / ‖sus_perm[j]‖
        scale = ref_n / sus_n[perm]
        shape = [-1] + [1] * (w.dim() - 1)
        out[s][wk] = w.index_select(0, perm) * scale.reshape(shape)
        if bk and b is not None:
            out[s][bk] = b.index_select(0, perm) * scale
    segments = [{k: v.to(suspect[s][k].dtype) for k, v in seg.items()} for s, seg in enumerate(out)]
    return Alignment(segments, similarity, null)


def _matched_similarity(ref_unit_rows: torch.Tensor, gen: torch.Generator) -> float:
    """Mean matched cosine of ``ref_unit_rows`` against random (isotropic) rows of the same shape."""
    rnd = torch.randn(ref_unit_rows.shape, generator=gen, dtype=torch.float64)
    rnd = rnd / rnd.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = ref_unit_rows @ rnd.T
    row, col = linear_sum_assignment(-cos.numpy())
    return float(cos[torch.from_numpy(row), torch.from_numpy(col)].mean())
