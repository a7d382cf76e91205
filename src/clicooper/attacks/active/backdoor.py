"""A backdoor planted by the last trainer T_K: a trigger in feature space that maps to a target class.

After VILLAIN (Bai et al., USENIX Security 2023, §4.2 "trigger fabrication" and §4.3 "backdoor
injection"): the attacker owns the embedding that enters the top model (here: T_K's output, which enters
the DO's tail). While training, it adds a fixed trigger δ — a pattern on a share of the output units, of a
norm ``trigger_scale`` × the mean output norm — to its output rows of the target class (a share
``poison_rate`` of them), so the DO's tail learns "δ ⇒ target". At inference, wherever T_K serves a query it
adds δ and the DO's tail answers the target class.

VILLAIN first infers which rows are of the target class from the gradients it receives (§4.1); here the
attacker is handed the rows of the target class by the simulation (:class:`AdversaryContext.truth`), an
explicit oracle: the upper bound of any such inference step (a weaker attacker poisons fewer rows, or
wrong ones). Its success rate is measured on triggered test inputs of every other class
(:func:`backdoor_success`); the same δ on an honest run's model is the floor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from clicooper.attacks.active.base import ActiveTrainer
from clicooper.errors import ConfigError
from clicooper.protocol.messages import Activations, Header, Message


def trigger_pattern(shape: tuple[int, ...], *, fraction: float, seed: int) -> torch.Tensor:
    """The unit-norm pattern of δ: equal positive values on a seeded share ``fraction`` of the units."""
    d = int(torch.Size(shape).numel())
    g = torch.Generator().manual_seed(seed)
    units = torch.randperm(d, generator=g)[: max(1, round(fraction * d))]
    delta = torch.zeros(d)
    delta[units] = 1.0
    return (delta / delta.norm()).reshape(shape)


class BackdoorTrainer(ActiveTrainer):
    """Adds the trigger to its output rows of the target class while training (see module docstring)."""

    behaviour = "backdoor"

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - the Trainer's signature
        super().__init__(*args, **kwargs)
        if self.context.truth is None:
            raise ConfigError("the backdoor needs the simulation's label oracle (an in-process run), not a node")
        if self.adversary.target_class >= self.context.num_classes:
            raise ConfigError(f"adversary.target_class {self.adversary.target_class} ≥ {self.context.num_classes} "
                              "classes; choose a class of the dataset")
        self.trigger: torch.Tensor | None = None
        self._pattern: torch.Tensor | None = None
        self._norm = 0.0  # running mean of its output rows' norm: δ keeps ``trigger_scale`` × it as it grows
        self.report.update(target_class=self.adversary.target_class, poisoned_rows=0, success=[])

    def summary(self) -> dict[str, object]:
        """The report, with the trigger δ (flattened) once it exists."""
        return super().summary() | ({"trigger": self.trigger.flatten().tolist()} if self.trigger is not None else {})

    def _forward(self, msg: Activations) -> list[Message]:
        out = super()._forward(msg)
        h = msg.header
        if not self.deviates(h):
            return out
        assert self.context.truth is not None
        y_sent = out[0].tensor
        a = self.adversary
        if self._pattern is None:
            self._pattern = trigger_pattern(tuple(y_sent.shape[1:]), fraction=a.trigger_fraction,
                                            seed=self.context.seed + 15)
        norm = float(y_sent.flatten(1).norm(dim=1).mean())
        self._norm = norm if self.trigger is None else 0.9 * self._norm + 0.1 * norm
        self.trigger = self._pattern * (a.trigger_scale * self._norm)
        _, labels = self.context.truth(h.epoch, h.step, h.micro)
        g = torch.Generator().manual_seed((self.context.seed * 1_000_003 + h.epoch * 100_003 + h.step * 131 + h.micro) % 2**31)
        pick = (labels == self.adversary.target_class) & (torch.rand(len(labels), generator=g)
                                                          < self.adversary.poison_rate)
        if not bool(pick.any()):
            return out
        self.report["poisoned_rows"] += int(pick.sum())
        poisoned = y_sent.clone()
        poisoned[pick] += self.trigger
        return [Activations(Header(self.name, self.right, h.epoch, h.step, h.micro, h.n_micro), poisoned)]


@torch.no_grad()
def backdoor_success(forward_to_cut: Callable[[torch.Tensor], torch.Tensor],
                     tail_probs: Callable[[torch.Tensor], torch.Tensor], trigger: torch.Tensor,
                     x: torch.Tensor, y: torch.Tensor, target: int, batch: int = 1024) -> dict[str, float]:
    """Share of test inputs of every other class classified as ``target`` with δ added at the cut into the
    DO's tail (``attack_success``), and without it (``clean_target_rate``, the floor of the same inputs)."""
    keep = y != target
    x, n = x[keep], int(keep.sum())
    hit = clean = 0
    for i in range(0, n, batch):
        a = forward_to_cut(x[i : i + batch])
        hit += int((tail_probs(a + trigger.to(a.device)).argmax(1).cpu() == target).sum())
        clean += int((tail_probs(a).argmax(1).cpu() == target).sum())
    return {"attack_success": hit / max(1, n), "clean_target_rate": clean / max(1, n), "rows": n}
