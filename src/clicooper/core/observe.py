"""Observation recorders for attack evaluation (what each trainer received), taps on the transport.

The recording is the *evaluator's* instrument, not part of the protocol: it joins each message a trainer
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

- :class:`ObservationRecorder` — one process holds every party (in-process run): the tap joins the ids
  at once and keeps the recorded subset only;
- :class:`ReceivedRecorder` — a trainer node records what *it* received, on its own machine, in the same
  files but with ``positions`` ``[N, 3]`` = (step, micro-batch, row) instead of ``sample_ids`` (a trainer
  does not know which samples it saw);
- :func:`import_observations` — the DO joins such recordings with its sample ids (the epoch order and the
  micro-batch cut are its own), keeps the recorded subset and writes them into its run directory
  (``clicooper observations import RUN --from DIR``), where ``clicooper report`` reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from clicooper import rundir
from clicooper.config import RunConfig, make_config
from clicooper.data import epoch_order, load_dataset
from clicooper.data.stream import micro_chunks
from clicooper.errors import RunDirError
from clicooper.protocol.messages import Activations, Gradients, Labels, Message
from clicooper.protocol.wire_codec import decode_message

#: what a trainer node's recording holds instead of ``sample_ids`` (metadata ``rows`` of its files)
POSITIONS = "positions"
_TENSORS = ("activations", "gradients", "labels")


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


def _stored_rows(out: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {n: stored(v, dtype) if n in ("activations", "gradients") else v for n, v in out.items()}


def write_index(run_dir: Path, config: RunConfig, parties: list[str], recorded_ids: torch.Tensor) -> None:
    """``RUN/observations/index.json``: the recording parties, topology, subset and epochs."""
    rundir.write_json(
        Path(run_dir) / rundir.OBSERVATIONS / "index.json",
        {"parties": parties, "topology": config.topology,
         "subset": "all" if config.observe == "all" else f"fixed-{len(recorded_ids)}",
         "dtype": config.observe_dtype,
         "epochs": list(range(1, config.epochs + 1)), "format": "docs/INTERNAL_API.md#run-directory-run"},
    )


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
                out = _stored_rows(out, self.dtype)
            d = self.out_dir / t
            rundir.save_tensors(d / f"epoch_{epoch}.safetensors", out, {"party": t, "epoch": str(epoch)})
            rundir.save_tensors(
                d / f"segment_epoch_{epoch}.safetensors", segments[t].state_dict(), {"party": t, "epoch": str(epoch)}
            )
            self._rows[t] = {}
            self._order[t] = []


class ReceivedRecorder:
    """A trainer node's tap: every train-mode tensor it received, by position (see module docstring)."""

    def __init__(self, out_dir: Path, party: str) -> None:
        self.out_dir, self.party = Path(out_dir), party
        self._rows: dict[tuple[int, int, int], dict[str, torch.Tensor]] = {}
        self._order: list[tuple[int, int, int]] = []

    def __call__(self, msg: Message) -> None:
        """Record ``msg`` if it is a train-mode activation, gradient or label message for this party."""
        h = msg.header
        if h.receiver != self.party or not isinstance(msg, (Activations, Gradients, Labels)):
            return
        if isinstance(msg, Activations) and msg.mode != "train":
            return
        key = (h.epoch, h.step, h.micro)
        tensor = decode_message(msg).tensor.detach().to("cpu").clone()  # as the trainer's code sees it
        slot = self._rows.setdefault(key, {})
        if isinstance(msg, Activations):
            self._order.append(key)
            n = len(tensor)
            slot[POSITIONS] = torch.stack([torch.full((n,), h.step), torch.full((n,), h.micro), torch.arange(n)], 1)
        slot[{Activations: "activations", Gradients: "gradients", Labels: "labels"}[type(msg)]] = tensor

    def flush(self, epoch: int, segment: torch.nn.Module) -> None:
        """Write ``<party>/epoch_<epoch>.safetensors`` (rows of that epoch) and the segment's weights."""
        keys = [k for k in self._order if k[0] == epoch - 1 and POSITIONS in self._rows.get(k, {})]
        out: dict[str, torch.Tensor] = {}
        for n in (POSITIONS, *_TENSORS):
            parts = [self._rows[k][n] for k in keys if n in self._rows[k]]
            if parts:
                out[n] = torch.cat(parts)
        d = self.out_dir / self.party
        meta = {"party": self.party, "epoch": str(epoch), "rows": POSITIONS}
        rundir.save_tensors(d / f"epoch_{epoch}.safetensors", out, meta)
        rundir.save_tensors(d / f"segment_epoch_{epoch}.safetensors", segment.state_dict(),
                            {"party": self.party, "epoch": str(epoch)})
        self._order = [k for k in self._order if k[0] != epoch - 1]
        self._rows = {k: v for k, v in self._rows.items() if k[0] != epoch - 1}


def _party_dirs(source: Path) -> list[Path]:
    """The ``T<i>`` folders of a trainer's recording: ``source`` is a trainer's run directory, its
    ``observations`` folder, or one ``T<i>`` folder."""
    source = Path(source)
    for cand in (source / rundir.OBSERVATIONS, source):
        dirs = sorted(p for p in cand.iterdir() if p.is_dir() and p.name[:1] == "T" and p.name[1:].isdigit()) \
            if cand.is_dir() else []
        if dirs:
            return dirs
    if source.is_dir() and source.name[:1] == "T" and any(source.glob("epoch_*.safetensors")):
        return [source]
    raise RunDirError(f"{source} holds no trainer recording (observations/T<i>/epoch_<e>.safetensors); pass a "
                      "trainer's run directory or its observations folder")


def _joined(tensors: dict[str, torch.Tensor], meta: dict[str, str], where: Path, config: RunConfig,
            train_ids: torch.Tensor, mask: torch.Tensor) -> tuple[int, dict[str, torch.Tensor]]:
    """(epoch, the in-process format's tensors) of one trainer file: positions → sample ids, the subset kept."""
    try:
        epoch = int(meta.get("epoch", ""))
    except ValueError:
        epoch = 0
    if meta.get("rows") != POSITIONS or not 1 <= epoch <= config.epochs:
        raise RunDirError(f"{where} is not a trainer node's recording of an epoch of this run (metadata {meta})")
    pos = tensors.get(POSITIONS)
    if pos is None or pos.dtype != torch.int64 or pos.dim() != 2 or pos.shape[1] != 3 or \
            any(n in tensors and len(tensors[n]) != len(pos) for n in _TENSORS) or \
            set(tensors) - {POSITIONS, *_TENSORS}:
        raise RunDirError(f"{where}: positions must be int64 [N, 3] with one row per recorded tensor row")
    bs = config.batch_size
    assert bs is not None  # config.json holds the resolved config
    order = epoch_order(train_ids, seed=config.seed, epoch=epoch - 1)
    cache: dict[tuple[int, int], torch.Tensor] = {}
    ids = torch.empty(len(pos), dtype=torch.int64)
    for i, (step, micro, row) in enumerate(pos.tolist()):
        chunk = cache.get((step, micro))
        if chunk is None:
            chunks = micro_chunks(order[step * bs: (step + 1) * bs], config.micro_batches) if step >= 0 else []
            if not 0 <= micro < len(chunks):
                raise RunDirError(f"{where}: row {i} names step {step}, micro-batch {micro}, not one of epoch {epoch}")
            chunk = cache[(step, micro)] = chunks[micro]
        if not 0 <= row < len(chunk):
            raise RunDirError(f"{where}: row {i} names row {row} of a micro-batch of {len(chunk)}")
        ids[i] = chunk[row]
    sel = mask[ids]
    out = {"sample_ids": ids[sel]} | {n: tensors[n][sel] for n in _TENSORS if n in tensors}
    return epoch, out


def import_observations(run_dir: Path, sources: list[Path]) -> dict[str, list[int]]:
    """Join trainer nodes' recordings (``sources``, see :func:`_party_dirs`) with the DO's sample ids and write
    them into ``RUN/observations`` in the in-process format; returns the epochs imported per party.

    Everything read is checked (the files come from the trainers): a malformed one is refused with a
    :class:`RunDirError` and nothing of it is written."""
    run_dir = Path(run_dir)
    if not (run_dir / rundir.CONFIG).is_file():
        raise RunDirError(f"{run_dir} is not a run directory (no config.json): pass the DO's run directory")
    config = make_config(**rundir.read_json(run_dir / rundir.CONFIG))
    ds = load_dataset(config.dataset, options=config.data)
    train_ids = ds.train_ids(config.train_range)
    rec_ids = train_ids if config.observe == "all" else subset_ids(train_ids, config.observe_count)
    mask = torch.zeros(len(ds.x_train), dtype=torch.bool)
    mask[rec_ids] = True
    parties = [f"T{i + 1}" for i in range(config.trainers)]
    done: dict[str, list[int]] = {}
    staged: list[tuple[Path, dict[str, torch.Tensor], dict[str, str]]] = []
    for source in sources:
        for d in _party_dirs(source):
            if d.name not in parties:
                raise RunDirError(f"{d}: {d.name} is not a trainer of this run ({', '.join(parties)})")
            for f in sorted(d.glob("epoch_*.safetensors")):
                tensors, meta = rundir.load_tensors(f)
                if meta.get("party") != d.name:
                    raise RunDirError(f"{f} was recorded by {meta.get('party')!r}, not {d.name}")
                epoch, out = _joined(tensors, meta, f, config, train_ids, mask)
                dest = run_dir / rundir.OBSERVATIONS / d.name
                out = _stored_rows(out, STORE_DTYPES[config.observe_dtype])
                staged.append((dest / f"epoch_{epoch}.safetensors", out, {"party": d.name, "epoch": str(epoch)}))
                seg = d / f"segment_epoch_{epoch}.safetensors"
                if seg.is_file():
                    st, smeta = rundir.load_tensors(seg)
                    staged.append((dest / seg.name, st, smeta))
                done.setdefault(d.name, []).append(epoch)
    if not done:
        raise RunDirError(f"no recorded epochs in {', '.join(map(str, sources))}")
    for path, tensors, meta in staged:  # every file checked: now write
        rundir.save_tensors(path, tensors, meta)
    index = run_dir / rundir.OBSERVATIONS / "index.json"
    had = rundir.read_json(index).get("parties", []) if index.is_file() else []
    write_index(run_dir, config, sorted(set(had) | set(done)), rec_ids)
    return {p: sorted(set(e)) for p, e in sorted(done.items())}
