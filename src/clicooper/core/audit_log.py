"""What a trainer keeps so that its stages can be audited (Proof-of-Learning, Jia et al., S&P 2021, §4.1).

With ``config.audit.enabled`` each trainer writes, for every round it trains,
``RUN/audit/<party>/round_<r>/``:

- ``step_<s>.safetensors`` — every tensor message it received and sent during step ``s`` (and the queries
  that followed it), in the order its transcript hashed them: tensors ``"<i>"`` (and ``"<i>.scale"``),
  metadata ``"messages"`` = JSON list of ``[i, peer, "sent"|"recv", kind, sender, receiver, epoch, step,
  micro, n_micro, mode]``;
- ``ckpt_<s>.safetensors`` — its segment's weights and optimizer state *before* step ``s``, every
  ``audit.interval`` steps (PoL's checkpointing interval k), and after the last step (before the round-end
  watermark steps): tensors ``w.<name>`` and ``o.<name>``, metadata the optimizer's scalars;
- ``index.json`` — the steps, the checkpoints and the bytes written.

The commitments ``[[s, weights, optimizer], …]`` of those checkpoints go into the trainer's signed stage
entry (``metrics["audit"]``); the first ``weights`` must equal the entry's ``start``. Messages need no
commitment of their own: the entry's transcript digests (which ``verify`` checks against each neighbour's)
already fix them. ``audit.retain_rounds`` keeps only the last rounds (0: all). Nothing is kept by the DO.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from clicooper import rundir
from clicooper.config.security import AuditConfig
from clicooper.protocol.messages import Activations, Message
from clicooper.provenance.canonical import canonical_json, lp, sha256_hex
from clicooper.provenance.commitments import module_commitment, segment_commitment

AUDIT_DIR = "audit"


def round_dir(run_dir: Path, party: str, r: int) -> Path:
    """``RUN/audit/<party>/round_<r>``."""
    return Path(run_dir) / AUDIT_DIR / party / f"round_{r}"


def optimizer_commitment(opt: torch.optim.Optimizer) -> str:
    """SHA-256 of the optimizer state: its tensors' canonical safetensors commitment and its scalars."""
    tensors, meta = rundir.optimizer_tensors(opt)
    inner = segment_commitment(tensors) if tensors else "0" * 64
    return sha256_hex(lp("clicooper/audit/optimizer", inner, canonical_json(meta)))


def message_row(i: int, peer: str, direction: str, msg: Message) -> list[Any]:
    """The metadata row of one logged message (module docstring)."""
    h = msg.header
    mode = msg.mode if isinstance(msg, Activations) else ""
    return [i, peer, direction, type(msg).__name__, h.sender, h.receiver, h.epoch, h.step, h.micro, h.n_micro, mode]


class AuditLog:
    """One trainer's message and checkpoint log (module docstring). Attach with ``party.message_taps``."""

    def __init__(self, party: Any, run_dir: Path, config: AuditConfig) -> None:
        self.party, self.run_dir, self.config = party, Path(run_dir), config
        self.round: int | None = None
        self.checkpoints: list[list[Any]] = []
        self._rows: list[list[Any]] = []
        self._tensors: dict[str, torch.Tensor] = {}
        self._step: int | None = None
        self._count = 0
        self.bytes = 0
        party.message_taps.append(self.tap)

    def begin_round(self, r: int) -> None:
        """Round ``r`` starts (after the provenance engine's ``begin_round``): checkpoint 0."""
        d = round_dir(self.run_dir, self.party.name, r)
        if d.exists():  # a round redone after a crash: its log starts again
            shutil.rmtree(d)
        d.mkdir(parents=True)
        self.round, self.checkpoints, self._step, self._count, self.bytes = r, [], None, 0, 0
        self._rows, self._tensors = [], {}
        self._checkpoint(0)

    def tap(self, peer: str, direction: str, msg: Message) -> None:
        """A message the party hashed into its transcript (``PartyBase.message_taps``)."""
        if self.round is None:
            return
        h = msg.header
        if direction == "recv" and isinstance(msg, Activations) and msg.mode == "train" and h.micro == 0 \
                and h.step != self._step:
            self._flush()
            self._step = h.step
            if h.step > 0 and h.step % self.config.interval == 0:
                self._checkpoint(h.step)
        i = self._count
        self._count += 1
        self._rows.append(message_row(i, peer, direction, msg))
        self._tensors[str(i)] = msg.tensor.detach().cpu().contiguous()
        scale = getattr(msg, "scale", None)
        if scale is not None:
            self._tensors[f"{i}.scale"] = scale.detach().cpu().contiguous()

    def _flush(self) -> None:
        if not self._rows:
            return
        f = round_dir(self.run_dir, self.party.name, self.round) / f"step_{self._step}.safetensors"
        rundir.save_tensors(f, self._tensors, {"messages": json.dumps(self._rows)})
        self.bytes += f.stat().st_size
        self._rows, self._tensors = [], {}

    def _checkpoint(self, step: int) -> None:
        p = self.party
        tensors, meta = rundir.optimizer_tensors(p.optimizer)
        out = {f"w.{k}": v for k, v in p.module.state_dict().items()} | {f"o.{k}": v for k, v in tensors.items()}
        f = round_dir(self.run_dir, p.name, self.round) / f"ckpt_{step}.safetensors"
        rundir.save_tensors(f, {k: v.detach().cpu().contiguous().clone() for k, v in out.items()}, meta)
        self.bytes += f.stat().st_size
        self.checkpoints.append([step, module_commitment(p.module), optimizer_commitment(p.optimizer)])

    def end_round(self) -> dict[str, Any]:
        """The round's training steps are done (before the watermark steps): the last checkpoint, the index,
        retention; returns the commitments for the stage entry's ``metrics["audit"]``."""
        assert self.round is not None
        self._flush()
        steps = 0 if self._step is None else self._step + 1
        if not self.checkpoints or self.checkpoints[-1][0] != steps:
            self._checkpoint(steps)
        d = round_dir(self.run_dir, self.party.name, self.round)
        rundir.write_json(d / "index.json", {"round": self.round, "party": self.party.name, "steps": steps,
                                             "interval": self.config.interval, "checkpoints": self.checkpoints,
                                             "messages": self._count, "bytes": self.bytes})
        self._retain()
        out = {"interval": self.config.interval, "steps": steps, "checkpoints": self.checkpoints}
        self.round = None
        return out

    def _retain(self) -> None:
        keep = self.config.retain_rounds
        if keep <= 0 or self.round is None:
            return
        for d in (self.run_dir / AUDIT_DIR / self.party.name).glob("round_*"):
            if int(d.name.split("_")[1]) <= self.round - keep:
                shutil.rmtree(d)
