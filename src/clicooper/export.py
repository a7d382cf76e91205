"""Export a run's delivered model as one plain PyTorch ``nn.Sequential`` state dict (safetensors).

The file is the state dict of the *exported* ``nn.Sequential``: the model the run trained, plus what its
local inference path (``clicooper evaluate`` / ``predict``) does around it, so that a plain forward pass of
the exported module gives what ``predict`` gives:

* under activation protection (``--defense dp`` / ``clicooper``) the trainers learned on the DO's head
  output clipped to norm S per sample: a parameter-free :class:`ClipPerSample` (S) sits right after the
  head's last layer, so the layers after it move one index up in the keys;
* under label obfuscation (``--defense labels`` / ``clicooper``) the model outputs ``C·m`` secret
  sub-classes: the export appends ``Softmax(dim=1)`` and a fixed 0/1 ``Linear(C·m, C, bias=False)`` that
  sums each class's sub-classes (the DO holds the key; this is its own copy), so the module outputs
  probabilities over the true classes. Without obfuscation it outputs logits.

Without either defense the keys are exactly the trained ``nn.Sequential``'s (``"0.weight"``, …; BatchNorm's
running statistics included): the file loads into that module itself. :func:`exported_sequential` builds
the exported module from the trained one; the file's metadata says the same in words (``sequential``)
and as data (``cut_clip``, ``outputs``, ``model_spec``). docs/python-api.md "Loading an exported model in plain
PyTorch" writes it out without clicooper.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from clicooper import rundir
from clicooper.errors import RunDirError
from clicooper.privacy.activation import clip_per_sample
from clicooper.runs import load_run


class ClipPerSample(nn.Module):
    """``x · min(1, norm/‖x‖₂)`` per sample (the norm over all non-batch dimensions): the DO's clip at the
    cut, without the noise. No parameters. Plain PyTorch, five lines (docs/python-api.md writes them out)."""

    def __init__(self, norm: float) -> None:
        super().__init__()
        self.norm = float(norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return clip_per_sample(x, self.norm)

    def extra_repr(self) -> str:
        return f"norm={self.norm:g}"


def exported_sequential(model: nn.Sequential, *, clip_after: int | None = None, clip_norm: float | None = None,
                        decode: tuple[int, int] | None = None) -> nn.Sequential:
    """The exported module around the trained ``model`` (its layers shared, not copied): a
    :class:`ClipPerSample` (``clip_norm``) after layer ``clip_after``, and for ``decode = (C·m, C)``
    ``Softmax(dim=1)`` + ``Linear(C·m, C, bias=False)`` at the end (its weight still to be loaded)."""
    layers = list(model)
    if clip_norm is not None:
        if clip_after is None or not 0 <= clip_after < len(layers):
            raise ValueError(f"clip_after must be a layer index of the model, got {clip_after!r}")
        layers.insert(clip_after + 1, ClipPerSample(clip_norm))
    if decode is not None:
        layers += [nn.Softmax(dim=1), nn.Linear(decode[0], decode[1], bias=False)]
    return nn.Sequential(*layers)


def _describe(n_model: int, clip_after: int | None, clip_norm: float | None, decode: tuple[int, int] | None) -> str:
    """The exported ``nn.Sequential`` in words, with its indices."""
    if clip_norm is None:
        parts = [f"0–{n_model - 1}: the trained model's layers 0–{n_model - 1}"]
        nxt = n_model
    else:
        assert clip_after is not None
        parts = [f"0–{clip_after}: the trained model's layers 0–{clip_after}",
                 f"{clip_after + 1}: ClipPerSample(norm={clip_norm:g})"]
        if clip_after + 1 < n_model:
            parts.append(f"{clip_after + 2}–{n_model}: the trained model's layers {clip_after + 1}–{n_model - 1}")
        nxt = n_model + 1
    if decode is not None:
        parts += [f"{nxt}: Softmax(dim=1)", f"{nxt + 1}: Linear({decode[0]}, {decode[1]}, bias=False)"]
    return "; ".join(parts)


def export_run(run_dir: str | Path, out_file: str | Path) -> str:
    """Write ``out_file``; return a one-line description. Refuses to overwrite an existing file."""
    out_file = Path(out_file)
    if out_file.exists():
        raise RunDirError(f"{out_file} exists; choose another --out or delete it first")
    run = load_run(run_dir)
    model = run.full_model()
    clip, cut_layer = run.config.cut_clip_norm, run.plan.head.layers[-1]
    dec = run._label_decoder()
    c, co = run.plan_num_classes, int(run.plan.extra.get("num_outputs", run.plan_num_classes))
    decode = (co, c) if dec is not None else None
    exported = exported_sequential(model, clip_after=cut_layer, clip_norm=clip, decode=decode)
    if dec is not None:
        w = dec.decode_probs(torch.eye(co)).T.contiguous()  # (C, C·m): row c sums the sub-classes of class c
        assert w.shape == (c, co)
        with torch.no_grad():
            exported[-1].weight.copy_(w)
    sd = {k: v.detach().to("cpu").clone() for k, v in exported.state_dict().items()}
    words = _describe(len(model), cut_layer, clip, decode)
    meta = {"model": run.config.model, "input_shape": json.dumps(run.plan.input_shape),
            "num_classes": str(c), "sequential": words,
            "outputs": "logits" if dec is None else f"probabilities over the {c} classes"}
    if run.config.model_spec is not None:
        meta["model_spec"] = json.dumps(run.config.model_spec, separators=(",", ":"))
    if clip is not None:  # the model's own index, and the exported module's
        meta["cut_clip"] = json.dumps({"after_layer": cut_layer, "norm": clip, "module_index": cut_layer + 1})
    rundir.save_tensors(out_file, sd, meta)
    return f"{len(sd)} tensors; nn.Sequential of {words}; outputs {meta['outputs']}"
