"""A trainer client: holds one middle segment (or, in the open tail, the segment with the tail layers)."""

from __future__ import annotations

from collections import deque

import torch
import torch.nn.functional as F
from torch import nn

from clicooper.errors import WireError
from clicooper.parties.base import PartyBase
from clicooper.parties.inbound import batch_announcement, check_label_range, received_labels
from clicooper.protocol.messages import (
    Activations,
    Control,
    Gradients,
    Header,
    Labels,
    Message,
    validate_tensor,
)

_Key = tuple[int, int, int]  # (epoch, step, micro)


class Trainer(PartyBase):
    """Trainer ``T_i``: forward what it receives from ``left``, send to ``right``; backward the reverse.

    In the open tail (``holds_tail``) it also receives labels from the DO, computes the loss, reports it
    (a ``Control(kind="loss")`` to the DO) and starts the backward pass. It steps its own optimizer once
    all ``n_micro`` micro-batches of a step have come back (GPipe-style accumulation, docs/design/protocol.md#micro-batch-pipelining).
    """

    def __init__(
        self,
        name: str,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        left: str,
        right: str,
        holds_tail: bool = False,
        input_shape: tuple[int, ...] | None = None,
        hash_transcripts: bool = False,
        bf16: bool = False,
    ):
        super().__init__(name, module, optimizer, hash_transcripts=hash_transcripts)
        self.bf16 = bf16  # forward under bf16 autocast; what is sent stays float32 (and on the CPU)
        self.left, self.right, self.holds_tail = left, right, holds_tail
        self.input_shape = input_shape  # per-sample shape expected from ``left`` (None: not checked)
        self.max_batch: int | None = None  # the run's batch size: the largest the DO may announce (None: any)
        self._saved: dict[_Key, tuple[torch.Tensor, torch.Tensor]] = {}
        self._labels: dict[_Key, torch.Tensor] = {}
        self._pending_act: dict[_Key, Activations] = {}
        self._done_micro: dict[tuple[int, int], int] = {}
        self._step_batch: dict[tuple[int, int], int] = {}
        self._step_micro: dict[tuple[int, int], int] = {}  # n_micro of each open step, fixed by its first message
        self.device = next(module.parameters()).device
        # RunConfig.overlap_steps: the DO may send step s + 1 before step s is done; its activations wait here
        # until this trainer has stepped on s (so it trains exactly as without the overlap). Bounded: the DO
        # runs at most one step ahead, so more than that many waiting is a protocol error.
        self.defer_ahead = False
        self._deferred: deque[Activations] = deque()

    def _older_step_open(self, h: Header) -> bool:
        """Whether a step before ``h``'s has micro-batches forwarded but not yet all stepped on."""
        k = (h.epoch, h.step)
        return any(key[:2] < k for key in self._saved) or any(key < k for key in self._done_micro)

    def _bind_micro(self, h: Header, *, first: bool = True) -> None:
        """Fix a step's number of micro-batches by its first message; refuse a later one that disagrees (it would
        step the optimizer before the step's other micro-batches are back, under their saved graphs).
        ``first=False``: a message that cannot open a step (a gradient) only checks."""
        k = (h.epoch, h.step)
        n = self._step_micro.setdefault(k, h.n_micro) if first else self._step_micro.get(k, h.n_micro)
        if n != h.n_micro:
            raise WireError(f"{self.name}: {h.sender} says step {(h.epoch, h.step)} has {h.n_micro} micro-batches; "
                            f"it has {n}")

    def _check_step_order(self, h: Header) -> None:
        """A middle trainer forwards a step only once every older one is stepped on (``defer_ahead``: the next one
        waits in :attr:`_deferred`): a step's saved graph must not outlive an optimizer step of another."""
        k = (h.epoch, h.step)
        open_steps = {key[:2] for key in self._saved} | set(self._done_micro)
        newer = [o for o in open_steps if o > k]
        if newer or (not self.defer_ahead and any(o < k for o in open_steps)):
            raise WireError(f"{self.name}: activations of step {k} while step {min(open_steps - {k})} is open; "
                            "the DO starts a step once the previous one is done")

    def _release_deferred(self) -> list[Message]:
        """Forward the waiting activations whose previous step is now done, in arrival order."""
        out: list[Message] = []
        while self._deferred and not self._older_step_open(self._deferred[0].header):
            out += self._forward(self._deferred.popleft())
        return out

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """The segment's forward, under bf16 autocast when asked."""
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.module(x)

    def _wire(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor as it is sent: detached, bf16 autocast's half precision back to float32, on the CPU (a no-op
        for a float32 — or a float64 — CPU trainer)."""
        t = t.detach()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        return t if t.device.type == "cpu" else t.cpu()

    def _check_input(self, t: torch.Tensor, what: str) -> None:
        exp = None if self.input_shape is None else (t.shape[0], *self.input_shape)
        validate_tensor(t, expected_shape=exp, what=f"{self.name}: {what} from {self.left}")

    def _handle(self, msg: Message) -> list[Message]:
        h = msg.header
        if isinstance(msg, Activations):
            if h.sender != self.left:
                raise WireError(f"{self.name}: activations from {h.sender}, expected {self.left}")
            self._check_input(msg.tensor, "activations")
            if msg.mode == "infer":
                return self._infer(msg)
            if not self.holds_tail:
                self._check_step_order(h)
            self._bind_micro(h)
            if self.holds_tail:
                key = (h.epoch, h.step, h.micro)
                if key not in self._labels:
                    self._pending_act[key] = msg
                    return []
                return self._tail_step(msg, self._labels.pop(key))
            if self.defer_ahead and (self._deferred or self._older_step_open(h)):
                if len(self._deferred) >= max(1, h.n_micro):
                    raise WireError(f"{self.name}: activations of step {(h.epoch, h.step)} arrive more than one "
                                    f"step ahead of this trainer; the DO overlaps at most one step")
                self._deferred.append(msg)
                return []
            return self._forward(msg)
        if isinstance(msg, Labels):
            if not self.holds_tail:
                raise WireError(f"{self.name} does not hold the tail and must not receive labels")
            labels = received_labels(msg, receiver=self.name, batch=self._step_batch.get((h.epoch, h.step)))
            self._bind_micro(h)
            key = (h.epoch, h.step, h.micro)
            if key in self._pending_act:
                return self._tail_step(self._pending_act.pop(key), labels)
            self._labels[key] = labels
            return []
        if isinstance(msg, Gradients):
            if h.sender != self.right or self.holds_tail:
                raise WireError(f"{self.name}: unexpected gradients from {h.sender}")
            self._bind_micro(h, first=False)
            return self._backward(msg)
        if isinstance(msg, Control):
            if msg.kind == "batch":
                size = batch_announcement(msg, receiver=self.name, holds_tail=self.holds_tail, max_batch=self.max_batch)
                self._bind_micro(h)
                self._step_batch[(h.epoch, h.step)] = size
            return []
        raise WireError(f"{self.name}: unknown message type {type(msg).__name__}")

    @property
    def compute_dtype(self) -> torch.dtype:
        """bfloat16 under bf16 autocast (what the segment casts its input and its output's gradient to)."""
        return torch.bfloat16 if self.bf16 else self.full_dtype

    def _forward(self, msg: Activations) -> list[Message]:
        h = msg.header
        x = msg.tensor.to(self.device).detach().requires_grad_(True)
        y = self._run(x)  # (B, …) this segment's output
        self._saved[(h.epoch, h.step, h.micro)] = (x, y)
        self.samples_processed += x.shape[0]
        out_h = Header(self.name, self.right, h.epoch, h.step, h.micro, h.n_micro)
        return [Activations(out_h, self._wire(y))]

    def _backward(self, msg: Gradients) -> list[Message]:
        h = msg.header
        key = (h.epoch, h.step, h.micro)
        if key not in self._saved:
            raise WireError(f"{self.name}: gradient for unknown micro-batch {key} (stale or replayed)")
        x, y = self._saved.pop(key)
        validate_tensor(msg.tensor, expected_shape=tuple(y.shape), what=f"{self.name}: gradient")
        y.backward(msg.tensor.to(self.device, y.dtype))
        out: list[Message] = [
            Gradients(Header(self.name, self.left, h.epoch, h.step, h.micro, h.n_micro), self._wire(x.grad))]
        self._maybe_step(h)
        return out + self._release_deferred()

    def _tail_step(self, act: Activations, labels: torch.Tensor) -> list[Message]:
        h = act.header
        x = act.tensor.to(self.device).detach().requires_grad_(True)
        if labels.shape != (x.shape[0],):
            raise WireError(f"{self.name}: {labels.shape[0]} labels for {x.shape[0]} activations")
        logits = self._run(x).float()  # (B, C·m) in the (possibly obfuscated) label space
        check_label_range(labels, logits.shape[1], receiver=self.name)
        labels = labels.to(self.device)
        loss_sum = F.cross_entropy(logits, labels, reduction="sum")
        correct = int((logits.argmax(1) == labels).sum())
        self.samples_processed += x.shape[0]
        report = Control(
            Header(self.name, "DO", h.epoch, h.step, h.micro, h.n_micro), "loss",
            {"loss_sum": repr(float(loss_sum.detach())), "correct": str(correct), "count": str(x.shape[0])},
        )
        # The loss is a mean over the whole batch (docs/design/protocol.md#micro-batch-pipelining: micro-batch losses scaled to sum to it);
        # the DO announced the batch size (a public number) in a Control(kind="batch") before the labels.
        batch = self._step_batch.get((h.epoch, h.step))
        if batch is None:
            raise WireError(f"{self.name}: labels for step {(h.epoch, h.step)} before its batch size")
        (loss_sum / batch).backward()
        grad = Gradients(Header(self.name, self.left, h.epoch, h.step, h.micro, h.n_micro), self._wire(x.grad))
        self._maybe_step(h)
        return [report, grad]

    def _maybe_step(self, h: Header) -> None:
        k = (h.epoch, h.step)
        n = self._done_micro.get(k, 0) + 1
        if n >= h.n_micro:
            self._done_micro.pop(k, None)
            self._step_batch.pop(k, None)
            self._step_micro.pop(k, None)
            self._step()
        else:
            self._done_micro[k] = n

    def _infer(self, msg: Activations) -> list[Message]:
        h = msg.header
        with torch.no_grad():
            y = self._wire(self._run(msg.tensor.to(self.device)))
        receiver = "DO" if self.holds_tail else self.right
        return [Activations(Header(self.name, receiver, h.epoch, h.step, h.micro, h.n_micro), y, mode="infer")]
