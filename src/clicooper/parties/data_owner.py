"""The data owner (DO): holds the data, labels, head (and tail in U-shape) and every privacy secret.

Per step (docs/design/protocol.md#one-training-step): ``a0 = head(x)``, ``ã0 = protect(a0)`` → T1 … → DO (U-shape: tail, loss on
``encode(y)``, gradient → T_K) … gradient from T1 → backward the head → step. Sample ids stay here.
Its defences are a sequence of :class:`~clicooper.privacy.defenses.base.Defense` objects, each with a few
hooks (labels, release, the head's own loss terms and gradient, the returned gradient); the DO calls them in
order and knows none of them by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from clicooper.errors import WireError
from clicooper.parties.base import PartyBase
from clicooper.parties.inbound import LossReports, check_query_answer
from clicooper.privacy.defenses.base import Defense
from clicooper.protocol.messages import (
    Activations,
    Control,
    Gradients,
    Header,
    Labels,
    Message,
    validate_tensor,
)

if TYPE_CHECKING:
    from clicooper.parties.guard import Guard


Augment = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]  # (x, sample ids, epoch) → x


@dataclass
class StepState:
    """Book-keeping of the step in flight (private to the DO)."""

    epoch: int
    step: int
    ids: list[torch.Tensor]
    y: list[torch.Tensor]
    targets: list[torch.Tensor]
    releases: dict[int, torch.Tensor] = field(default_factory=dict)
    inputs: dict[int, torch.Tensor] = field(default_factory=dict)  # kept only for a defence that needs_inputs
    decor: dict[int, torch.Tensor] = field(default_factory=dict)  # the head's own loss terms (defences' head_term)
    batch_size: int = 0
    grads_back: int = 0
    leaves: dict[str, torch.Tensor] | None = None  # overlap_steps: the head weights this step's forward used
    tail_done: int = 0  # overlap_steps: micro-batches the tail has stepped on


@dataclass
class EpochStats:
    """Loss and accuracy accumulated over an epoch (train accuracy on true labels where known)."""

    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0


class DataOwner(PartyBase):
    """The DO party. ``start_step`` starts a step; ``handle`` processes replies; ``step_done`` tells."""

    def __init__(
        self,
        *,
        head: nn.Module,
        tail: nn.Module | None,
        optimizer: torch.optim.Optimizer,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        trainers: list[str],
        micro_batches: int = 1,
        defenses: Sequence[Defense] = (),
        expected_return_shape: tuple[int, ...] | None = None,
        hash_transcripts: bool = False,
        device: torch.device | str = "cpu",
        guard: Guard | None = None,
        augment: Augment | None = None,
        overlap: bool = False,
    ):
        module = nn.ModuleDict({"head": head} | ({"tail": tail} if tail is not None else {}))
        super().__init__("DO", module, optimizer, hash_transcripts=hash_transcripts)
        self.head, self.tail = head, tail
        self.x_train, self.y_train = x_train, y_train
        self.trainers = trainers
        self.first, self.last = trainers[0], trainers[-1]
        self.micro_batches = micro_batches
        self.defenses = list(defenses)  # applied in this order (RunConfig.defenses sorts them)
        self._keep_inputs = any(d.needs_inputs for d in self.defenses)
        self.expected_return_shape = expected_return_shape
        self.guard = guard  # live detection of malicious trainers (parties/guard), None when off
        self.augment = augment  # training augmentation before the head (clicooper.data.augment), None: off
        self.device = torch.device(device)
        # Steps in flight, oldest first: one, or two with ``overlap`` (RunConfig.overlap_steps): the DO then
        # starts step s + 1 while step s's gradients travel back. Its head (only) trains one step stale: step s's
        # forward uses the head weights after step s − 2's update (the round's first weights for s < 2), kept in
        # ``_head_weights``; their gradient is applied to the current weights (a delayed gradient). The tail
        # steps as soon as its own micro-batches are done, before the next step's reach it; the trainers defer
        # a step's activations until their own previous step is done. So the result does not depend on timing:
        # in-process, over gRPC and resumed runs agree.
        self._inflight: dict[tuple[int, int], StepState] = {}
        self.overlap = overlap
        self._head_weights: dict[int, dict[str, torch.Tensor]] = {}
        self.stats = EpochStats()
        self.infer_results: dict[tuple[int, int], torch.Tensor] = {}
        self._queries: dict[tuple[int, int], int] = {}  # (step, micro) of an open query → its rows
        # open tail: one loss report per micro-batch from the tail holder, checked (parties/inbound.py)
        self.loss_reports = LossReports(self.last if tail is None else None)

    # ------------------------------------------------------------------------------------------------
    def _targets(self, y: torch.Tensor, ids: torch.Tensor, epoch: int) -> torch.Tensor:
        for d in self.defenses:
            y = d.on_labels(y, sample_ids=ids, epoch=epoch)
        return y

    def _release(self, a: torch.Tensor, ids: torch.Tensor, epoch: int, stream: str) -> torch.Tensor:
        for d in self.defenses:
            a = d.on_release(a, sample_ids=ids, epoch=epoch, stream=stream)
        return a

    def decode_probs(self, probs: torch.Tensor) -> torch.Tensor:
        """Output probabilities back to the true classes (the defences' inverses, last first)."""
        for d in reversed(self.defenses):
            probs = d.decode_probs(probs)
        return probs

    def defense_state(self) -> dict[str, torch.Tensor]:
        """Every defence's state for a resumed run, keyed ``<kind>/<name>``."""
        return {f"{d.kind}/{k}": v for d in self.defenses for k, v in d.state_dict().items()}

    def load_defense_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`defense_state` (each defence gets its own keys; a defence with state but none
        saved, e.g. a checkpoint written before it kept any, starts afresh)."""
        kinds = {d.kind for d in self.defenses}
        stray = sorted({k.partition("/")[0] for k in state} - kinds)
        if stray:
            raise ValueError(f"state of defences {', '.join(stray)} that this run does not have")
        for d in self.defenses:
            mine = {k.partition("/")[2]: v for k, v in state.items() if k.partition("/")[0] == d.kind}
            if mine:
                d.load_state_dict(mine)

    def defense_reports(self, epochs: int) -> list[dict]:
        """Each defence's report after ``epochs`` epochs (ε with what it covers, or empirical)."""
        return [d.report(epochs) for d in self.defenses]

    def start_step(self, epoch: int, step: int, ids: torch.Tensor) -> list[Message]:
        """Forward the head on batch ``ids`` (M micro-batches) and return the messages to send."""
        return list(self.stream_step(epoch, step, ids))

    def stream_step(self, epoch: int, step: int, ids: torch.Tensor) -> Iterator[Message]:
        """:meth:`start_step` one micro-batch at a time: each message is yielded as soon as its head output is
        computed, so a transport sends micro-batch j while the head computes j + 1 (the same messages, values
        and order as :meth:`start_step`). The step is in flight from the first message on; consume it whole."""
        if not self.ready or (self._inflight and step == 0):
            raise RuntimeError("DO: previous step still in flight")
        if len(ids) == 0:
            raise ValueError("DO: a step needs at least one sample")
        self.epoch = epoch
        chunks = list(torch.tensor_split(ids, self.micro_batches))
        chunks = [c for c in chunks if len(c)]
        m = len(chunks)
        st = StepState(epoch, step, chunks, [], [], batch_size=len(ids))
        if self.guard is not None:
            self.guard.begin_step(epoch, step)
        leaves = None
        if self.overlap:
            if step == 0:  # a round starts drained: steps 0 and 1 use its first weights
                self._head_weights = {-1: self._head_snapshot()}
            base = self._head_weights.get(step - 2 if step >= 2 else -1)
            if base is None:
                raise RuntimeError(f"DO: head weights after step {step - 2} are not kept (overlap_steps)")
            leaves = st.leaves = {n: w.detach().requires_grad_(True) for n, w in base.items()}
            buffers = dict(self.head.named_buffers())  # live: BatchNorm statistics update in step order
        self._inflight[(epoch, step)] = st
        self.samples_processed += len(ids)
        # these leave the DO outside ``handle``: encoded (after the privacy mechanisms below) and hashed here
        if self.tail is None:  # open tail: announce the batch size (public) before the labels
            self.loss_reports.expect(epoch, step, [len(c) for c in chunks])
            yield from self._outgoing([Control(Header("DO", self.last, epoch, step, 0, m), "batch",
                                               {"size": str(len(ids))})])
        for j, cid in enumerate(chunks):
            x = self.x_train[cid].to(self.device)
            if self.augment is not None:  # training batches only; public draws per (epoch, sample id)
                x = self.augment(x, cid, epoch)
            y = self.y_train[cid]
            st.y.append(y)
            y_used = y if self.guard is None else self.guard.labels(epoch, step, j, y)  # fake labels (SplitGuard)
            tgt = self._targets(y_used, cid, epoch).to(self.device)
            st.targets.append(tgt)
            a0 = self.head(x) if leaves is None else functional_call(self.head, leaves | buffers, (x,))  # (b, …)
            rel = self._release(a0, cid, epoch, "act")
            terms = [t for d in self.defenses if (t := d.head_term(x=x, head_out=a0, release=rel)) is not None]
            if terms:  # the head's own terms, weighted by the micro-batch's share of the step
                st.decor[j] = sum(terms) * (len(cid) / len(ids))
            st.releases[j] = rel
            if self._keep_inputs:
                st.inputs[j] = x
            out: list[Message] = []
            if self.tail is None:
                out.append(Labels(Header("DO", self.last, epoch, step, j, m), tgt.detach().cpu()))
            out.append(Activations(Header("DO", self.first, epoch, step, j, m), rel.detach()))
            yield from self._outgoing(out)

    @property
    def state(self) -> StepState | None:
        """The newest step in flight (``None``: none)."""
        return next(reversed(self._inflight.values())) if self._inflight else None

    @property
    def step_done(self) -> bool:
        """True when no step is in flight."""
        return not self._inflight

    @property
    def ready(self) -> bool:
        """True when the next step may start: none in flight, or with ``overlap`` one."""
        return len(self._inflight) < (2 if self.overlap else 1)

    def _step_only(self, params: list[nn.Parameter], grads: list[torch.Tensor | None] | None = None, *,
                   count: bool = True) -> None:
        """Step ``params`` alone (``overlap``: the head and the tail step at different times): every other
        parameter's gradient is held aside, so the optimizer (which skips parameters without one) leaves it.
        ``count``: a step of the DO's (the head's; the tail's is part of the same step)."""
        ids = {id(p) for p in params}
        others = [p for g in self.optimizer.param_groups for p in g["params"] if id(p) not in ids]
        held = [p.grad for p in others]
        for p in others:
            p.grad = None
        if grads is not None:
            for p, g in zip(params, grads, strict=True):
                p.grad = g
        self._step()
        if not count:
            self.steps_taken -= 1
        for p, g in zip(others, held, strict=True):
            p.grad = g

    def _head_snapshot(self) -> dict[str, torch.Tensor]:
        """A copy of the head's current weights (overlap: what a later step's forward uses)."""
        return {n: p.detach().clone() for n, p in self.head.named_parameters()}

    def _handle(self, msg: Message) -> list[Message]:
        h = msg.header
        st = self._inflight.get((h.epoch, h.step))
        if isinstance(msg, Activations) and msg.mode == "infer":
            check_query_answer(msg, sender=self.last, rows=self._queries.get((h.step, h.micro)),
                               per_sample=self.expected_return_shape if self.tail is not None else None)
            del self._queries[(h.step, h.micro)]
            self.infer_results[(h.step, h.micro)] = msg.tensor
            return []
        if isinstance(msg, Control) and msg.kind == "loss":
            loss_sum, correct, count = self.loss_reports.accept(msg)
            self.stats.loss_sum += loss_sum
            self.stats.correct += correct
            self.stats.count += count
            return []
        if st is None or not (0 <= h.micro < len(st.ids)):
            raise WireError(f"DO: {type(msg).__name__} for step {(h.epoch, h.step, h.micro)} not in flight")
        if isinstance(msg, Activations):
            if self.tail is None or h.sender != self.last:
                raise WireError(f"DO: unexpected activations from {h.sender}")
            return self._tail_step(msg, st)
        if isinstance(msg, Gradients):
            if h.sender != self.first:
                raise WireError(f"DO: unexpected gradients from {h.sender}")
            rel = st.releases.pop(h.micro, None)
            if rel is None:
                raise WireError(f"DO: duplicate gradient for micro-batch {h.micro}")
            validate_tensor(msg.tensor, expected_shape=tuple(rel.shape), what="DO: gradient from T1")
            if self.guard is not None:
                self.guard.on_gradient(st.epoch, st.step, h.micro, msg.tensor)
            grad, x_in = msg.tensor.to(self.device), st.inputs.pop(h.micro, None)
            # a defence may take the head's gradient over (DP-SGD: per-sample clipped, noised); else the plain one
            if not any([d.on_head_gradient(x=x_in, release=rel, grad=grad, batch_size=st.batch_size)
                        for d in self.defenses]):
                decor = st.decor.pop(h.micro, None)
                if decor is not None:  # T1's gradient and the head's own terms (defences' head_term), one graph
                    torch.autograd.backward([rel, decor], [grad, None])
                elif rel.requires_grad:  # not with a frozen head (secret random head): nothing to train
                    rel.backward(grad)
            st.grads_back += 1
            if st.grads_back == len(st.ids):
                if st.leaves is not None:  # overlap: the delayed head gradient onto the current head weights
                    params = dict(self.head.named_parameters())
                    self._step_only(list(params.values()), [st.leaves[n].grad for n in params])
                    self._head_weights[st.step] = self._head_snapshot()
                    self._head_weights.pop(st.step - 2, None)
                else:
                    for d in self.defenses:
                        d.before_head_step(epoch=st.epoch, step=st.step, batch_size=st.batch_size)
                    if self.guard is None or self.guard.before_step(st.epoch, st.step):
                        self._step()
                    else:  # a fake batch: its gradient is measured, never applied
                        self.optimizer.zero_grad(set_to_none=True)
                del self._inflight[(st.epoch, st.step)]
            return []
        raise WireError(f"DO: unexpected {type(msg).__name__} from {h.sender}")

    def _tail_step(self, msg: Activations, st: StepState) -> list[Message]:
        h = msg.header
        assert self.tail is not None
        exp = None if self.expected_return_shape is None else (msg.tensor.shape[0], *self.expected_return_shape)
        validate_tensor(msg.tensor, expected_shape=exp, what=f"DO: activations from {h.sender}")
        a = msg.tensor.to(self.device).detach().requires_grad_(True)
        logits = self.tail(a)  # (b, C·m)
        tgt = st.targets[h.micro]
        if len(tgt) != len(a):
            raise WireError(f"DO: {len(a)} activations returned for a micro-batch of {len(tgt)}")
        loss_sum = F.cross_entropy(logits, tgt, reduction="sum")
        (loss_sum / st.batch_size).backward()  # micro losses sum to the batch mean (docs/design/protocol.md#micro-batch-pipelining)
        with torch.no_grad():
            probs = self.decode_probs(logits.softmax(1))
            self.stats.correct += int((probs.argmax(1).cpu() == st.y[h.micro]).sum())
        self.stats.loss_sum += float(loss_sum.detach())
        self.stats.count += len(a)
        g = a.grad.detach()
        if self.overlap:  # the tail steps once its micro-batches are done (the next step's come after)
            st.tail_done += 1
            if st.tail_done == len(st.ids):
                self._step_only(list(self.tail.parameters()), count=False)
        for d in self.defenses:
            g = d.on_gradient(g, sample_ids=st.ids[h.micro], epoch=st.epoch)
        return [Gradients(Header("DO", self.last, h.epoch, h.step, h.micro, h.n_micro), g)]

    def take_stats(self) -> EpochStats:
        """Return and reset the epoch's accumulated statistics."""
        s, self.stats = self.stats, EpochStats()
        return s

    @torch.no_grad()
    def start_query(self, x: torch.Tensor, *, epoch: int, step: int, query_ids: torch.Tensor) -> list[Message]:
        """A query through the chain (``mode="infer"``): the head's output, protected as a served query
        (stream ``query``, one fresh noise per counter in ``query_ids``); the answer lands in
        ``infer_results[(step, 0)]``."""
        a0 = self.head(x.to(self.device))
        a0 = self._release(a0, query_ids, epoch, "query")
        msg = Activations(Header("DO", self.first, epoch, step, 0, 1), a0.detach(), mode="infer")
        self._queries[(step, 0)] = len(a0)
        return self._outgoing([msg])  # encoded in the run's wire_dtype like every release, and hashed

    @torch.no_grad()
    def answer_probs(self, answer: torch.Tensor) -> torch.Tensor:
        """Probabilities over the true classes from a query's answer (the tail's input in U-shape)."""
        logits = self.tail(answer.to(self.device)) if self.tail is not None else answer.to(self.device)
        probs = logits.float().softmax(1)
        return self.decode_probs(probs)
