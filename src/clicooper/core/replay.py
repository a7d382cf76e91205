"""Re-executing a trainer's logged steps (the verifier's side of Proof-of-Learning, Jia et al., S&P 2021,
§4.2 Algorithm 2 "verify": reproduce an update from the logged checkpoint and data, compare).

The messages of a round are read back from the trainer's audit log (:mod:`clicooper.core.audit_log`),
hashed again into its transcript digests, and fed, in their logged order, into an *honest*
:class:`~clicooper.parties.trainer.Trainer` holding the logged checkpoint: each message it would send must
equal the one that was sent, and its state after the interval the next checkpoint.

**Determinism, and what a different machine can still check.** The honest trainer's step is a pure
function of (weights, optimizer state, received tensors, watermark marks). On the machine that trained, a
replay reproduced every sent tensor and checkpoint to a relative error ≤ 2·10⁻⁸ (digits-mlp), often but not
always bit for bit: a tensor loaded from a file may take another SIMD path than the one computed in place.
On other hardware or another torch build, reductions (matmul, conv) are summed in another order and the
differences compound across an interval's Adam steps. So the auditor checks to a tolerance: the relative
L2 error ``‖a − b‖ / ‖b‖`` of every sent tensor and of the weights at the interval's end must stay below
``tol`` (default 1e-4: three orders above that round-off, three below the smallest deviation measured —
a backdoor on a few rows, 0.1 — docs/malicious.md). bf16 autocast trainers replay under bf16 and need a
looser tolerance (≈ 1e-2). The commitment checks (start = ledger, checkpoints = entry, transcripts =
entry) are exact everywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clicooper import rundir
from clicooper.protocol.messages import Activations, Gradients, Header, Labels, Message, update_hash
from clicooper.provenance.transcript import new_transcript_hash

_TYPES = {"Activations": Activations, "Gradients": Gradients, "Labels": Labels}


@dataclass(frozen=True)
class Logged:
    """One logged message: who (``peer``), which way, the message."""

    peer: str
    direction: str
    msg: Message


def read_step(path: Path) -> list[Logged]:
    """The messages of one ``step_<s>.safetensors`` file, in logged order."""
    tensors, meta = rundir.load_tensors(path)
    out = []
    for i, peer, direction, kind, sender, receiver, epoch, step, micro, n_micro, mode in json.loads(meta["messages"]):
        h = Header(sender, receiver, epoch, step, micro, n_micro)
        kw: dict[str, Any] = {"header": h, "tensor": tensors[str(i)]}
        if f"{i}.scale" in tensors:
            kw["scale"] = tensors[f"{i}.scale"]
        if kind == "Activations":
            kw["mode"] = mode
        out.append(Logged(peer, direction, _TYPES[kind](**kw)))
    return out


def step_files(log_dir: Path) -> list[tuple[int, Path]]:
    """``(step, file)`` of every logged step, in step order."""
    files = [(int(f.stem.split("_")[1]), f) for f in Path(log_dir).glob("step_*.safetensors")]
    return sorted(files)


def transcript_digests(log_dir: Path) -> tuple[dict[str, str], int]:
    """The transcript digests (``"<peer>:sent|recv"``) of the logged round, and its message bytes."""
    hashes: dict[str, Any] = {}
    nbytes = 0
    for _, f in step_files(log_dir):
        for m in read_step(f):
            h = hashes.setdefault(f"{m.peer}:{m.direction}", new_transcript_hash())
            update_hash(h, m.msg)
            nbytes += m.msg.tensor.numel() * m.msg.tensor.element_size()
    return {k: h.hexdigest() for k, h in sorted(hashes.items())}, nbytes


def as_float(msg: Message) -> torch.Tensor:
    """A message's tensor as float32 (an int8 tensor times its per-row scale)."""
    t = msg.tensor.float()
    scale = getattr(msg, "scale", None)
    return t * scale.float().view(-1, *([1] * (t.dim() - 1))) if scale is not None else t


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``‖a − b‖ / ‖b‖`` (∞ for different shapes)."""
    if a.shape != b.shape:
        return float("inf")
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _same_route(a: Message, b: Message) -> bool:
    ha, hb = a.header, b.header
    return (type(a) is type(b) and (ha.sender, ha.receiver, ha.epoch, ha.step, ha.micro, ha.n_micro)
            == (hb.sender, hb.receiver, hb.epoch, hb.step, hb.micro, hb.n_micro))


@dataclass
class StepReplay:
    """What replaying some logged steps found: messages compared, the worst relative error, mismatches."""

    messages: int = 0
    max_error: float = 0.0
    first_mismatch: dict[str, Any] | None = None

    def compare(self, step: int, replayed: Message, logged: Logged | None) -> None:
        """Compare one message the honest trainer sends with the one that was sent."""
        self.messages += 1
        if logged is None or logged.direction != "sent" or not _same_route(replayed, logged.msg):
            err = float("inf")
        else:
            err = rel_error(as_float(replayed), as_float(logged.msg))
        self.max_error = max(self.max_error, err)
        if err > 0 and self.first_mismatch is None:
            h = replayed.header
            self.first_mismatch = {"step": step, "kind": type(replayed).__name__, "to": h.receiver,
                                   "micro": h.micro, "relative_error": err}


def replay_steps(trainer: Any, files: list[tuple[int, Path]], result: StepReplay) -> None:
    """Feed the logged received messages of ``files`` into ``trainer``; compare what it sends."""
    for step, f in files:
        logged = read_step(f)
        i = 0
        while i < len(logged):
            m = logged[i]
            i += 1
            if m.direction != "recv":
                result.compare(step, m.msg, None)  # a message sent without a received one before it
                continue
            for out in trainer.handle(m.msg):
                result.compare(step, out, logged[i] if i < len(logged) else None)
                i += 1
