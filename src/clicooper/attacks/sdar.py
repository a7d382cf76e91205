"""SDAR, simulator-decoder attack with adversarial regularisation (Zhu et al. 2025, "Passive Inference
Attacks on Split Learning via Adversarial Regularization", NDSS; arXiv:2310.10483; the authors' code
github.com/zhxchd/SDAR_SplitNN, ``src/sdar/sdar.py`` and ``src/util/util.py`` ``load_config``; its
predecessor, the decoding simulator attack, is github.com/zhxchd/sl-privacy ``dsa/dsa.py``).

The attacker is the split-learning "server": the trainers, pooled (``party="pool"``; T1 alone works too).
Their own segments ``g`` were trained on the gradients they received, so ``g`` already encodes the DO's
task; SDAR uses it, frozen, with labelled public auxiliary data (the abstract's "decodable simulator of
the client's private model"; the reference code was read, the paper's section numbers were not checked):

* a **simulator** ``ẽ`` of the DO's head (fresh weights of the public head architecture) trained so that
  the pooled segments and a simulated tail classify the auxiliary images (cross-entropy, labels flipped
  with probability ``flip_rate`` as the reference's U-shape configuration does), while a discriminator
  pushes ``ẽ(x_aux)`` towards the distribution of the received smashed data (weight λ₁);
* in the U-shape, a **tail simulator** ``h̃`` (the remaining segments' and the DO tail's architecture with
  C true-label outputs) trained with the same cross-entropy — it infers the labels of the received
  rows as ``h̃(g(z))`` (label inference in the U-shape);
* a **decoder** trained on ``(ẽ(x_aux), x_aux)`` with a discriminator on its outputs for the received data
  (weight λ₂), applied to what T1 received for the victims.

Settings follow the reference configuration for the U-shape with a plain CNN: simulator and tail lr 10⁻³,
decoder lr 5·10⁻⁴, λ₁ = 0.04, λ₂ = 10⁻⁵, discriminator lr = the generator's × λ, flip rate 0.1;
unconditional discriminators (the U-shape has no labels at the server). Activation protection: the public
noise distribution is simulated on ``ẽ``'s outputs. The attack reads the figures at ¼, ½ and all of its
steps; the reference trains online along the victim's training, here offline on the recorded epoch.

Two sizes (``arch``). ``"reference"`` uses the reference's discriminators and decoder
(:mod:`clicooper.attacks.reference_nets`) and its batch of 128; ``"small"`` keeps the same losses and rates
with width-``width`` networks for the CPU-minute demo and sweep budgets. :data:`REFERENCE_DIFFERENCES` lists
what differs from the reference and why; every result records it, and a training record (the decoder's fit
of its own auxiliary images) that tells a figure at the mean image's level from an attack that failed to
train.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clicooper.attacks import metrics
from clicooper.attacks.adversarial import Critic, run_steps, setting_differences, training_record
from clicooper.attacks.base import AttackResult, LevelResult, budget_points, convergence, register, require
from clicooper.attacks.inversion import victim_board
from clicooper.attacks.nets import Decoder, batched, reinit
from clicooper.attacks.reference_nets import SdarDecoder, SdarImageCritic, SdarSimulatorCritic
from clicooper.attacks.views import Architecture, Views

#: The reference code's settings (zhxchd/SDAR_SplitNN ``scripts/run_sdar.py``, ``src/util/util.py``
#: ``load_config``, U-shape, plain CNN on CIFAR-10).
REFERENCE = {"e_dis": "make_simulator_discriminator (standard widths 32–256, BN, LeakyReLU 0.2, dropout 0.4)",
             "decoder": "make_decoder (unconditional in the U-shape, widths 16/32/64, Upsample + Conv, BN)",
             "d_dis": "make_decoder_discriminator (Conv 64, 128 s2, 128 s2, 256 s2, dropout 0.4)",
             "simulator": "the client's own architecture, fresh weights",
             "e_lr": 1e-3, "d_lr": 5e-4, "hs_lr": 1e-3, "lambda1": 0.04, "lambda2": 1e-5, "flip_rate": 0.1,
             "e_dis_lr": "e_lr × lambda1", "d_dis_lr": "d_lr × lambda2", "optimizer": "Adam (Keras defaults)",
             "batch": 128, "steps": 20000}
#: (setting, reference, ours, reason) of what ``arch="reference"`` still does differently.
REFERENCE_DIFFERENCES: tuple[tuple[str, str, str, str], ...] = (
    ("input size", "32×32×3 CIFAR-10 cut at 16×16 (levels 4–6)", "the cut's own shape",
     "the reference's networks for the cut's resolution (half resolution: its level-4 decoder and level ≤ 6 "
     "discriminator); a flat cut gets linear layers of the same widths"),
    ("framework", "TensorFlow / Keras", "PyTorch", "the library's; Keras BN momentum 0.9 = torch momentum 0.1"),
    ("victim training", "online, the victim trains alongside the attack", "offline on the recorded epoch",
     "what the attacker stored"),
    ("dataset", "CIFAR-10 (20,000 iterations; 10,000 for other datasets in its code)", "this run's dataset",
     "the steps are the budget's; convergence is read at ¼, ½ and all of them"),
)


@dataclass(frozen=True)
class SdarConfig:
    """Settings of :class:`SdarAttack` (defaults: the reference's U-shape plain-CNN configuration)."""

    victims: int = 500
    steps: int = 1500
    batch: int = 64
    e_lr: float = 1e-3
    d_lr: float = 5e-4
    hs_lr: float = 1e-3
    lambda1: float = 0.04
    lambda2: float = 1e-5
    flip_rate: float = 0.1
    width: int = 32
    arch: str = "small"
    grid: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.victims >= 1 and self.steps >= 1 and self.batch >= 2, "victims, steps ≥ 1 and batch ≥ 2")
        require(min(self.e_lr, self.d_lr, self.hs_lr) > 0, "learning rates must be > 0")
        require(self.lambda1 >= 0 and self.lambda2 >= 0, "lambda1 and lambda2 must be ≥ 0")
        require(0 <= self.flip_rate < 1, "flip_rate must be in [0, 1)")
        require(self.width >= 4 and self.width % 2 == 0, "width must be an even number ≥ 4")
        require(self.arch in ("small", "reference"), f"arch must be small or reference, got {self.arch!r}")
        require(self.arch == "small" or self.width == 32,
                "width sizes the small networks; the reference architecture has the reference's widths (drop width)")

    def differences(self) -> list[dict[str, str]]:
        """Each setting that differs from the reference code: setting, reference, ours, reason."""
        rows = [{"setting": k, "reference": ref, "ours": ours, "reason": why}
                for k, ref, ours, why in REFERENCE_DIFFERENCES]
        if self.arch == "small":
            why = "the small size: CPU minutes (demo, sweep budgets)"
            rows += [{"setting": k, "reference": str(REFERENCE[k]), "ours": f"{what} of width {self.width}",
                      "reason": why} for k, what in (("e_dis", "2 strided convs"), ("decoder", "conv/upsample decoder"),
                                                     ("d_dis", "2 strided convs"))]
        return rows + setting_differences(self, REFERENCE, ("e_lr", "d_lr", "hs_lr", "lambda1", "lambda2", "flip_rate",
                                                            "batch", "steps"),
                                          {"batch": "the small size's budget (CPU minutes)"})


def _frozen(mods: list[nn.Module]) -> nn.Sequential:
    body = nn.Sequential(*mods).eval()
    for p in body.parameters():
        p.requires_grad_(False)
    return body


def simulated_tail(arch: Architecture, pooled: int, g_out: torch.Tensor, c: int, seed: int) -> nn.Module:
    """Fresh weights of what follows the pooled segments (the other trainers' segments and the DO tail),
    ending in C true-label outputs: the public tail when it has C outputs, else a linear read-out."""
    rest = [reinit(f(), seed + 1 + i) for i, f in enumerate(arch.segments[pooled:])]
    if arch.tail is not None:
        rest.append(reinit(arch.tail(), seed + 50))
    body = nn.Sequential(*rest) if rest else nn.Identity()
    out = batched(body, g_out[:2])
    if out.dim() == 2 and out.shape[1] == c:
        return body
    torch.manual_seed(seed + 60)
    return nn.Sequential(body, nn.Flatten(), nn.Linear(int(math.prod(out.shape[1:])), c))


def _flip(y: torch.Tensor, c: int, rate: float, gen: torch.Generator) -> torch.Tensor:
    """Labels replaced by a uniform class with probability ``rate`` (the reference's ``label_flip``)."""
    if rate <= 0:
        return y
    flip = torch.rand(y.shape[0], generator=gen) < rate
    return torch.where(flip, torch.randint(0, c, y.shape, generator=gen), y)


@register("sdar")
class SdarAttack:
    """SDAR by the pooled trainers: head simulator + tail simulator + decoder, adversarially regularised."""

    name: ClassVar[str] = "sdar"
    knowledge: ClassVar[tuple[str, ...]] = ("zero", "aux")

    def __init__(self, **config: Any) -> None:
        self.config = SdarConfig(**config)

    def run(self, views: Views) -> AttackResult:
        """Train the simulators and decoder; score reconstructions of the victims and inferred labels."""
        cfg, pool = self.config, views.pooled
        require(bool(pool) and pool[0].position == 1 and [v.position for v in pool] == list(range(1, len(pool) + 1)),
                "SDAR needs T1's view and the pooled trainers after it (build the view with party='pool' or 'T1')")
        require(views.aux is not None and views.aux.y is not None, "SDAR needs labelled auxiliary data (aux level)")
        board = victim_board(_t1_views(views), cfg.victims, cfg.grid)
        wall, cpu = time.perf_counter(), time.process_time()
        series = self._train(views)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        board.score("sdar", {"sdar": [s[0] for s in series]}, budget_points(cfg.steps),
                    {"simulated": "head (and, beyond the pooled trainers, the rest of the model)", "arch": cfg.arch,
                     "training": training_record([s[2] for s in series], series[-1][3],
                                                 noise=views.zero.public.noise is not None)})
        y = views.truth.y.numpy()
        accs = [metrics.accuracy(y, s[1]) for s in series]
        board.levels["sdar-labels"] = LevelResult(
            primary="accuracy", score=accs[-1], floor=metrics.majority_rate(y),
            metrics={"accuracy": accs[-1], "rows": int(y.size), "note": "h̃(g(z)) on every received row, true labels"},
            convergence=convergence(accs, budget_points(cfg.steps)))
        noise = views.zero.public.noise
        return AttackResult(attack=self.name, levels=board.levels, artifacts=board.grids,
                            info={"parties": [v.received.party for v in pool], "epoch": views.zero.received.epoch,
                                  "victims": int(board.x.shape[0]), "aux_images": int(views.aux.x.shape[0]),
                                  "noise_simulated": None if noise is None else noise.__dict__,
                                  "config": cfg.__dict__, "reference": REFERENCE,
                                  "differences_from_reference": cfg.differences(),
                                  "train_seconds": {"wall": wall, "cpu": cpu, "threads": torch.get_num_threads()}})

    def _train(self, views: Views) -> list[tuple[torch.Tensor, np.ndarray, float, float]]:
        """The reference's training step (simulators, then decoder) repeated ``steps`` times; at ¼, ½ and all
        of the steps: the victims' reconstructions, every row's inferred label, the decoder's MSE on a fixed
        probe of auxiliary images through the simulator, and the mean image's MSE on it."""
        cfg, pool = self.config, views.pooled
        public = pool[0].public
        c, noise = public.num_classes, public.noise
        x_aux, y_aux = views.aux.x.float(), views.aux.y.long()  # type: ignore[union-attr]
        z_all = pool[0].received.activations  # the DO head's output, as T1 received it
        z_vic = z_all[views.truth.victims[: cfg.victims]]
        g = _frozen([v.segment for v in pool])
        gen = torch.Generator().manual_seed(cfg.seed)
        e = reinit(public.architecture.head(), cfg.seed)
        hs = simulated_tail(public.architecture, len(pool), batched(g, z_all[:2]), c, cfg.seed)
        torch.manual_seed(cfg.seed)
        z_shape = tuple(z_all.shape[1:])
        x_shape = tuple(x_aux.shape[1:])
        if cfg.arch == "reference":
            e_dis, dec, d_dis = (SdarSimulatorCritic(z_shape, (x_shape[1], x_shape[2])), SdarDecoder(z_shape, x_shape),
                                 SdarImageCritic(x_shape))
        else:
            e_dis, dec, d_dis = Critic(z_shape, cfg.width), Decoder(z_shape, x_shape, width=cfg.width), \
                Critic(x_shape, cfg.width)
        opts = {"e": torch.optim.Adam(e.parameters(), lr=cfg.e_lr),
                "hs": torch.optim.Adam(hs.parameters(), lr=cfg.hs_lr),
                "e_dis": torch.optim.Adam(e_dis.parameters(), lr=cfg.e_lr * cfg.lambda1),
                "d": torch.optim.Adam(dec.parameters(), lr=cfg.d_lr),
                "d_dis": torch.optim.Adam(d_dis.parameters(), lr=cfg.d_lr * cfg.lambda2)}
        b = min(cfg.batch, x_aux.shape[0], z_all.shape[0])

        def sim(xb: torch.Tensor, g: torch.Generator = gen) -> torch.Tensor:
            out = e(xb)
            return noise.simulate(out, g) if noise is not None else out

        probe = x_aux[torch.randperm(x_aux.shape[0], generator=torch.Generator().manual_seed(cfg.seed + 7))[:256]]
        mean_mse = float(F.mse_loss(x_aux.mean(0, keepdim=True).expand_as(probe), probe))

        def step(_: int) -> None:
            idx = torch.randint(0, x_aux.shape[0], (b,), generator=gen)
            xs, ys = x_aux[idx], _flip(y_aux[idx], c, cfg.flip_rate, gen)
            z = z_all[torch.randint(0, z_all.shape[0], (b,), generator=gen)]
            _simulator_step(sim, g, hs, e_dis, opts, xs, ys, z, cfg.lambda1)
            _decoder_step(sim, dec, d_dis, opts, xs, z, cfg.lambda2)

        def read() -> tuple[torch.Tensor, np.ndarray, float, float]:
            for m in (dec, hs, e):
                m.eval()
            with torch.no_grad():
                fit = float(F.mse_loss(batched(dec, sim(probe, torch.Generator().manual_seed(cfg.seed + 9))), probe))
            out = batched(dec, z_vic), batched(lambda t: hs(g(t)), z_all).argmax(1).numpy(), fit, mean_mse
            for m in (dec, hs, e):
                m.train()
            return out

        for m in (e, hs, e_dis, dec, d_dis):
            m.train()
        return run_steps(cfg.steps, step, read)


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def _simulator_step(sim: Any, g: nn.Module, hs: nn.Module, e_dis: nn.Module, opts: dict[str, Any],
                    xs: torch.Tensor, ys: torch.Tensor, z: torch.Tensor, lambda1: float) -> None:
    """The head simulator and tail simulator classify aux data through the frozen segments; the
    head simulator also fools a discriminator of the received smashed data, which is then updated."""
    zs = sim(xs)
    eg = F.cross_entropy(hs(g(zs)), ys)
    fake = e_dis(zs)
    for k in ("e", "hs", "e_dis"):
        opts[k].zero_grad()
    (eg + lambda1 * _bce(fake, 1.0)).backward()
    opts["e"].step()
    opts["hs"].step()  # hs's gradient is that of eg alone (the discriminator term does not reach it)
    opts["e_dis"].zero_grad()
    (_bce(e_dis(z), 1.0) + _bce(e_dis(zs.detach()), 0.0)).backward()
    opts["e_dis"].step()


def _decoder_step(sim: Any, dec: nn.Module, d_dis: nn.Module, opts: dict[str, Any], xs: torch.Tensor,
                  z: torch.Tensor, lambda2: float) -> None:
    """The decoder inverts the simulator on aux data; its outputs on the received smashed data are
    pushed towards the aux image distribution by a discriminator, which is then updated."""
    with torch.no_grad():
        zs = sim(xs)
    decoded = dec(z)
    loss = F.mse_loss(dec(zs), xs) + lambda2 * _bce(d_dis(decoded), 1.0)
    opts["d"].zero_grad()
    opts["d_dis"].zero_grad()
    loss.backward()
    opts["d"].step()
    opts["d_dis"].zero_grad()
    (_bce(d_dis(xs), 1.0) + _bce(d_dis(decoded.detach()), 0.0)).backward()
    opts["d_dis"].step()


def _t1_views(views: Views) -> Views:
    """The views with T1's as the attacking party's own (the victims' received rows are T1's)."""
    return replace(views, zero=views.pooled[0])
