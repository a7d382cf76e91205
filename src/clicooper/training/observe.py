"""Observation recorder for attack evaluation (what each trainer received), a tap on the transport.

The recorder is the *evaluator's* instrument, not part of the protocol: it joins each message a trainer
received with the sample ids the DO holds privately, so attacks can be scored against ground truth.
Format (docs/INTERNAL_API.md): ``observations/T<i>/epoch_<e>.safetensors`` with ``sample_ids``,
``activations``, ``gradients`` and (open tail) ``labels``; rows in the order the activations were received,
gradients and labels aligned to the same rows. Activations and gradients are stored as ``observe_dtype``
(float32 by default; float16 or bfloat16 halve the files) and read back as float32.

Size: rows × (values per sample at the trainer's input + at its output) × bytes per value, per trainer and
epoch; the reference CNN's first cut alone is 6,272 values per sample, so 2,000 rows × 2 epochs with two
trainers are ≈ 200 MB in float32. General-purpose compression does not pay: the values are dense noisy
floats (zlib level 1 saved 8 % of a float16 file, at 3 s per 38 MB), so the ways to smaller files are fewer
rows (``observe_count``) and fewer bytes per value (``observe_dtype``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from clicooper import rundir
from clicooper.protocol.messages import Activations, Gradients, Labels, Message
from clicooper.protocol.wire_codec import decode_message


def subset_ids(train_ids: torch.Tensor, count: int) -> torch.Tensor:
    """A fixed subset of ``count`` ids spread evenly over the training ids (all if fewer)."""
    if count >= len(train_ids):
        return train_ids.clone()
    idx = torch.linspace(0, len(train_ids) - 1, count).round().long()
    return train_ids[idx]


#: ``observe_dtype`` → the torch dtype recorded activations and gradients are stored as.
STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def stored(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` as ``dtype`` for storage, unless that would turn a finite value into ±inf (float16 ends at
    65,504): then ``x`` unchanged, since the readers cast every stored dtype back to float32 alike."""
    if not x.is_floating_point() or x.dtype == dtype:
        return x
    y = x.to(dtype)
    return x if bool((torch.isinf(y) & torch.isfinite(x)).any()) else y


class ObservationRecorder:
    """Collects rows for recorded ids per trainer and epoch; ``flush`` writes one file per trainer."""

    def __init__(
        self,
        out_dir: Path,
        trainers: list[str],
        recorded_ids: torch.Tensor,
        ids_of: Callable[[int, int, int], torch.Tensor],
        num_train: int,
        dtype: str = "float32",
    ):
        if dtype not in STORE_DTYPES:
            raise ValueError(f"observe_dtype must be one of {', '.join(STORE_DTYPES)}, got {dtype!r}")
        self.dtype = STORE_DTYPES[dtype]
        self.out_dir = Path(out_dir)
        self.trainers = set(trainers)
        self.mask = torch.zeros(num_train, dtype=torch.bool)
        self.mask[recorded_ids] = True
        self.ids_of = ids_of
        self._rows: dict[str, dict[tuple[int, int, int], dict[str, torch.Tensor]]] = {t: {} for t in trainers}
        self._order: dict[str, list[tuple[int, int, int]]] = {t: [] for t in trainers}

    def __call__(self, msg: Message) -> None:
        """Transport tap: record train-mode tensors delivered to a trainer."""
        h = msg.header
        if h.receiver not in self.trainers or isinstance(msg, Activations) and msg.mode != "train":
            return
        if not isinstance(msg, (Activations, Gradients, Labels)):
            return
        key = (h.epoch, h.step, h.micro)
        ids = self.ids_of(h.epoch, h.step, h.micro)
        sel = self.mask[ids]
        if not bool(sel.any()):
            return
        slot = self._rows[h.receiver].setdefault(key, {})
        if isinstance(msg, Activations):
            self._order[h.receiver].append(key)
            slot["sample_ids"] = ids[sel]
        name = {Activations: "activations", Gradients: "gradients", Labels: "labels"}[type(msg)]
        tensor = decode_message(msg).tensor  # as the trainer's code sees it (float32 when compressed on the wire)
        slot[name] = tensor.detach().to("cpu")[sel].clone()

    def flush(self, epoch: int, segments: dict[str, torch.nn.Module]) -> None:
        """Write ``epoch_<epoch>.safetensors`` (and the trainer's segment weights) for every trainer."""
        for t in sorted(self.trainers):
            rows = self._rows[t]
            keys = [k for k in self._order[t] if "sample_ids" in rows.get(k, {})]
            out: dict[str, torch.Tensor] = {}
            if keys:
                names = [n for n in ("sample_ids", "activations", "gradients", "labels") if n in rows[keys[0]]]
                for n in names:
                    out[n] = torch.cat([rows[k][n] for k in keys if n in rows[k]])
                out = {n: stored(v, self.dtype) if n in ("activations", "gradients") else v for n, v in out.items()}
            d = self.out_dir / t
            rundir.save_tensors(d / f"epoch_{epoch}.safetensors", out, {"party": t, "epoch": str(epoch)})
            rundir.save_tensors(
                d / f"segment_epoch_{epoch}.safetensors", segments[t].state_dict(), {"party": t, "epoch": str(epoch)}
            )
            self._rows[t] = {}
            self._order[t] = []
