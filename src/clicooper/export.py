"""Export a run's delivered model as one plain PyTorch ``nn.Sequential`` state dict (safetensors).

Keys are those of the full ``nn.Sequential`` (``"0.weight"``, …; BatchNorm's running statistics
included), so the file loads into the ``nn.Sequential`` the run trained — for ``clicooper.train(config,
model=seq)`` into ``seq`` itself; a model file's run records its layers in the metadata (``model_spec``, JSON).
Under label obfuscation the export
appends ``Softmax`` and a fixed 0/1 ``Linear(C·m → C)`` that sums each class's sub-classes, so the exported
model outputs probabilities over the true classes (the DO holds the key; this is its own copy). Under
activation protection the trainers learned on the DO's head output clipped to norm S per sample; the
metadata's ``cut_clip`` (after which layer, S) says where a forward pass must clip
(:func:`clicooper.privacy.activation.clip_per_sample`), as ``clicooper evaluate`` and ``predict`` do.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from clicooper import rundir
from clicooper.errors import RunDirError
from clicooper.runs import load_run


def export_run(run_dir: str | Path, out_file: str | Path) -> str:
    """Write ``out_file``; return a one-line description. Refuses to overwrite an existing file."""
    out_file = Path(out_file)
    if out_file.exists():
        raise RunDirError(f"{out_file} exists; choose another --out or delete it first")
    run = load_run(run_dir)
    sd = {k: v.clone() for k, v in run.full_model().state_dict().items()}
    n_layers = len(run.full_model())
    meta = {"model": run.config.model, "input_shape": json.dumps(run.plan.input_shape),
            "num_classes": str(run.plan_num_classes), "outputs": "logits"}
    if run.config.model_spec is not None:
        meta["model_spec"] = json.dumps(run.config.model_spec, separators=(",", ":"))
    clip, cut_layer = run.config.cut_clip_norm, run.plan.head.layers[-1]
    if clip is not None:  # the trainers learned on clip(head(x)): a user's forward must clip there too
        meta["cut_clip"] = json.dumps({"after_layer": cut_layer, "norm": clip})
    dec = run._label_decoder()
    if dec is not None:
        c, co = run.plan_num_classes, int(run.plan.extra["num_outputs"])
        eye = torch.eye(co)
        w = dec.decode_probs(eye).T.contiguous()  # (C, C·m): row c sums the sub-classes of class c
        assert w.shape == (c, co)
        sd[f"{n_layers + 1}.weight"] = w
        meta["outputs"] = f"probabilities (layers {n_layers}: Softmax(dim=1), {n_layers + 1}: Linear({co},{c},bias=False))"
    rundir.save_tensors(out_file, sd, meta)
    note = "" if clip is None else (f"; clip each sample's output of layer {cut_layer} to norm {clip:g} "
                                    "(clicooper.privacy.activation.clip_per_sample), as in training")
    return f"{len(sd)} tensors, outputs {meta['outputs']}{note}"
