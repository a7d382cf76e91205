"""A lazy trainer: it returns stale outputs and stale gradients, and never updates its segment.

The free-riding prover of Proof-of-Learning (Jia et al., S&P 2021, §3 "threat model": an adversary that
claims the work of training without doing it). Once it deviates it replays, for every micro-batch, the last
output and the last input-gradient it computed for a micro-batch of the same size (computing honestly only
when it has none of that size yet), does no backward pass and no optimizer step, but still counts the steps
and samples it claims in its stage entries. Queries (``mode="infer"``) are answered with its frozen segment.
"""

from __future__ import annotations

import torch

from clicooper.attacks.active.base import ActiveTrainer
from clicooper.protocol.messages import Activations, Gradients, Header, Message


class LazyTrainer(ActiveTrainer):
    """Stale outputs and gradients, no update (see module docstring)."""

    behaviour = "lazy"

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - the Trainer's signature
        super().__init__(*args, **kwargs)
        self._stale_out: dict[int, torch.Tensor] = {}
        self._stale_grad: dict[int, torch.Tensor] = {}
        self._lazy_keys: set[tuple[int, int, int]] = set()

    def _forward(self, msg: Activations) -> list[Message]:
        h = msg.header
        n = msg.tensor.shape[0]
        if not self.deviates(h) or n not in self._stale_out:
            out = super()._forward(msg)
            self._stale_out[n] = out[0].tensor
            return out
        self._lazy_keys.add((h.epoch, h.step, h.micro))
        self.samples_processed += n  # claimed, not done
        return [Activations(Header(self.name, self.right, h.epoch, h.step, h.micro, h.n_micro), self._stale_out[n])]

    def _backward(self, msg: Gradients) -> list[Message]:
        h = msg.header
        key = (h.epoch, h.step, h.micro)
        n = msg.tensor.shape[0]
        if key not in self._lazy_keys and not (self.deviates(h) and n in self._stale_grad):
            if self.deviates(h):  # an honest pass to fill the cache, but no update
                x, y = self._saved.pop(key)
                y.backward(msg.tensor.to(self.device, y.dtype))
                self._stale_grad[n] = self._wire(x.grad)
                self.optimizer.zero_grad(set_to_none=True)
                self._claim(h)
                return [Gradients(Header(self.name, self.left, h.epoch, h.step, h.micro, h.n_micro), self._stale_grad[n])]
            out = super()._backward(msg)
            self._stale_grad[n] = out[0].tensor
            return out
        self._lazy_keys.discard(key)
        self._saved.pop(key, None)
        self._claim(h)
        stale = self._stale_grad.get(n)
        if stale is None:  # no gradient of this size yet: nothing at all
            stale = torch.zeros((n, *(self.input_shape or ())))
        return [Gradients(Header(self.name, self.left, h.epoch, h.step, h.micro, h.n_micro), stale)]

    def _claim(self, h: Header) -> None:
        """Count the step as if taken once its last micro-batch is back (no optimizer step)."""
        k = (h.epoch, h.step)
        n = self._done_micro.get(k, 0) + 1
        if n >= h.n_micro:
            self._done_micro.pop(k, None)
            self.steps_taken += 1
        else:
            self._done_micro[k] = n
