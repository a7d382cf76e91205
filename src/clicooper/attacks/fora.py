"""FORA, the feature-oriented reconstruction attack (Xu et al. 2024, "A Stealthy Wrongdoer:
Feature-Oriented Reconstruction Attack against Split Learning", CVPR; reference code
github.com/X1aoyangXu/FORA, ``utils.pseudo_training``).

T1 holds public auxiliary images (no labels needed) and what it received from the DO's head. It never
sees the head, only its architecture. FORA builds a **substitute head** whose outputs on the auxiliary
images match the *distribution* of the received smashed data (Fig. 3 (a), "feature-level transfer
learning"):

    L_sub = (1 − a)·mean D(sub(x_aux)) + a·MK-MMD(sub(x_aux), z_received)

D is a WGAN critic with gradient penalty (weight 1,000 in the reference code), trained to tell received
smashed data from the substitute's. At the same time an **inverse network** is fitted on
``(sub(x_aux), x_aux)`` (Fig. 3 (b)), and applied to what T1 received for each victim (Fig. 3 (c)). The
figure and the reference code were read; the paper's section numbers were not checked.

Two sizes (``arch``). ``"reference"`` is the reference code's: its critic (Conv 128 → 256, six ResBlocks of
256 channels) and inverse network (ConvTranspose 256), substitute and inverse network at lr 10⁻⁴, critic at
3·10⁻⁴, a = 0.8, batch 64, 40,000 iterations in its ``run.sh`` (:data:`REFERENCE_DIFFERENCES` lists what
still differs, and why). ``"small"`` keeps the same losses with width-``width`` networks at lr 10⁻³: the
demo and sweep budgets, which must run in minutes on a CPU. Every result records its settings and the
differences from the reference, and a training record (the inverse network's fit of its own auxiliary
images, the substitute's MK-MMD to the received data) that tells a figure at the mean image's level from
an attack that failed to train.

With activation protection on, the public noise distribution is simulated on the substitute's outputs
(clip + fresh Gaussian noise, never the secret values), as the white-box decoder does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from clicooper.attacks.adversarial import (
    Critic,
    gradient_penalty,
    mk_mmd,
    run_steps,
    setting_differences,
    training_record,
)
from clicooper.attacks.base import AttackResult, budget_points, register, require
from clicooper.attacks.inversion import victim_board
from clicooper.attacks.nets import Decoder, batched, reinit
from clicooper.attacks.reference_nets import ForaCritic, ForaDecoder
from clicooper.attacks.views import Views

#: The reference code's settings (X1aoyangXu/FORA ``main.py`` defaults and ``run.sh``).
REFERENCE = {"critic": "Conv 128 s2, Conv 256 s2, 6 ResBlocks of 256, Conv 256 s2, Linear",
             "decoder": "ConvTranspose 256 + BN + LeakyReLU 0.2, Conv + BN + tanh",
             "substitute": "VGG16-bn head (a different architecture from the victim's MobileNet head)",
             "lr": 1e-4, "critic_lr": 3e-4, "optimizer": "Adam (0.9, 0.999)", "mmd_weight": 0.8,
             "gp_weight": 1000.0, "batch": 64, "steps": 40000, "aux_images": 5000}
#: (setting, reference, reason) of what ``arch="reference"`` still does differently.
REFERENCE_DIFFERENCES: tuple[tuple[str, str, str], ...] = (
    ("substitute", REFERENCE["substitute"],
     "the public head architecture with fresh weights: the attacker knows it (a stronger attacker than the "
     "reference's, which guesses a VGG head)"),
    ("input size", "32×32×3 CIFAR-10 cut at 16×16",
     "the same networks on the cut's own shape: a half-resolution cut gets exactly the reference's layers, "
     "other resolutions the reference's stem for that resolution; a flat cut linear layers of the same widths"),
    ("decoder output", "tanh on images normalised to [−1, 1]", "tanh mapped back to [0, 1] (the reference's "
     "DeNormalize), the range the victims' images are scored in"),
    ("victim training", "online, the victim trains alongside the attack",
     "offline on the recorded epoch's received data (what the attacker stored)"),
)


@dataclass(frozen=True)
class ForaConfig:
    """Settings of :class:`ForaAttack`: ``steps`` joint iterations (substitute, critic, inverse network),
    ``mmd_weight`` is the reference code's ``a``."""

    victims: int = 500
    steps: int = 1500
    batch: int = 64
    lr: float = 1e-3
    critic_lr: float = 3e-4
    mmd_weight: float = 0.8
    gp_weight: float = 1000.0
    width: int = 32
    arch: str = "small"
    grid: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.victims >= 1 and self.steps >= 1 and self.batch >= 2, "victims, steps ≥ 1 and batch ≥ 2")
        require(self.lr > 0 and self.critic_lr > 0, "learning rates must be > 0")
        require(0 <= self.mmd_weight <= 1, "mmd_weight (the reference's a) must be in [0, 1]")
        require(self.gp_weight >= 0, "gp_weight must be ≥ 0")
        require(self.width >= 4 and self.width % 2 == 0, "width must be an even number ≥ 4")
        require(self.arch in ("small", "reference"), f"arch must be small or reference, got {self.arch!r}")
        require(self.arch == "small" or self.width == 32,
                "width sizes the small networks; the reference architecture has the reference's widths (drop width)")

    def differences(self) -> list[dict[str, str]]:
        """Each setting that differs from the reference code: setting, reference, ours, reason."""
        rows = [{"setting": k, "reference": ref, "ours": "same", "reason": why} for k, ref, why in REFERENCE_DIFFERENCES]
        rows[0]["ours"] = "the victim's public head architecture"
        if self.arch == "small":
            rows += [{"setting": "critic", "reference": str(REFERENCE["critic"]), "ours": f"2 strided convs of width "
                      f"{self.width}, {2 * self.width}", "reason": "the small size: CPU minutes (demo, sweep budgets)"},
                     {"setting": "decoder", "reference": str(REFERENCE["decoder"]), "ours": f"conv/upsample decoder of "
                      f"width {self.width}", "reason": "the small size: CPU minutes (demo, sweep budgets)"}]
        return rows + setting_differences(self, REFERENCE, ("lr", "critic_lr", "mmd_weight", "gp_weight", "batch", "steps"),
                                          {"lr": "faster convergence at the small size's step budget"})


@register("fora")
class ForaAttack:
    """FORA by T1: substitute head matched to the received distribution, then an inverse network."""

    name: ClassVar[str] = "fora"
    knowledge: ClassVar[tuple[str, ...]] = ("zero", "aux")

    def __init__(self, **config: Any) -> None:
        self.config = ForaConfig(**config)

    def run(self, views: Views) -> AttackResult:
        """Train the substitute, critic and inverse network together; score the victims' reconstructions."""
        cfg, view = self.config, views.zero
        require(view.position == 1, f"FORA is T1's attack; this view is {view.received.party}'s")
        require(views.aux is not None, "FORA needs auxiliary images (the aux knowledge level)")
        board = victim_board(views, cfg.victims, cfg.grid)
        wall, cpu = time.perf_counter(), time.process_time()
        reads = self._train(views)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        board.score("fora", {"fora": [r[0] for r in reads]}, budget_points(cfg.steps),
                    {"substitute": "public head architecture, fresh weights", "mmd_weight": cfg.mmd_weight,
                     "arch": cfg.arch, "training": training_record([r[1] for r in reads], reads[-1][2], noise=view.public.noise is not None,
                                                                   mmd=[r[3] for r in reads])})
        noise = view.public.noise
        return AttackResult(attack=self.name, levels=board.levels, artifacts=board.grids,
                            info={"party": view.received.party, "epoch": view.received.epoch,
                                  "victims": int(board.x.shape[0]), "aux_images": int(views.aux.x.shape[0]),  # type: ignore[union-attr]
                                  "noise_simulated": None if noise is None else noise.__dict__,
                                  "config": cfg.__dict__, "reference": REFERENCE,
                                  "differences_from_reference": cfg.differences(),
                                  "train_seconds": {"wall": wall, "cpu": cpu, "threads": torch.get_num_threads()}})

    def _train(self, views: Views) -> list[tuple[torch.Tensor, float, float, float]]:
        """The joint loop of the reference code (one substitute, critic and decoder step per iteration);
        at ¼, ½ and all of the steps: the victims' reconstructions, the inverse network's MSE on a fixed
        probe of auxiliary images, the mean image's MSE on it, and the substitute's MK-MMD to received data."""
        cfg, view = self.config, views.zero
        aux_x = views.aux.x.float()  # type: ignore[union-attr]
        z_all, noise = view.received.activations, view.public.noise
        z_vic = z_all[views.truth.victims[: cfg.victims]]
        gen = torch.Generator().manual_seed(cfg.seed)
        sub = reinit(view.public.architecture.head(), cfg.seed)
        torch.manual_seed(cfg.seed)
        z_shape, x_shape = tuple(z_all.shape[1:]), tuple(aux_x.shape[1:])
        if cfg.arch == "reference":
            critic, dec = ForaCritic(z_shape), ForaDecoder(z_shape, x_shape)
        else:
            critic, dec = Critic(z_shape, cfg.width), Decoder(z_shape, x_shape, width=cfg.width)
        opt_s = torch.optim.Adam(sub.parameters(), lr=cfg.lr)
        opt_c = torch.optim.Adam(critic.parameters(), lr=cfg.critic_lr)
        opt_d = torch.optim.Adam(dec.parameters(), lr=cfg.lr)
        b = min(cfg.batch, aux_x.shape[0], z_all.shape[0])

        def features(xb: torch.Tensor, g: torch.Generator = gen) -> torch.Tensor:
            out = sub(xb)
            return noise.simulate(out, g) if noise is not None else out

        def step(_: int) -> None:
            xb = aux_x[torch.randint(0, aux_x.shape[0], (b,), generator=gen)]
            zr = z_all[torch.randint(0, z_all.shape[0], (b,), generator=gen)]
            fake = features(xb)  # 1) substitute: match the received distribution
            loss_s = (1 - cfg.mmd_weight) * critic(fake).mean() + cfg.mmd_weight * mk_mmd(fake, zr)
            opt_s.zero_grad()
            loss_s.backward()
            opt_s.step()
            fake = fake.detach()  # 2) critic (WGAN-GP): low on received data, high on the substitute's
            loss_c = critic(zr).mean() - critic(fake).mean() + cfg.gp_weight * gradient_penalty(critic, zr, fake, gen)
            opt_c.zero_grad()
            loss_c.backward()
            opt_c.step()
            with torch.no_grad():  # 3) inverse network on (substitute(aux), aux), the updated substitute's
                zs = features(xb)
            loss_d = F.mse_loss(dec(zs), xb)
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()

        probe = aux_x[torch.randperm(aux_x.shape[0], generator=torch.Generator().manual_seed(cfg.seed + 7))[:256]]
        z_probe = z_all[torch.randperm(z_all.shape[0], generator=torch.Generator().manual_seed(cfg.seed + 8))[:256]]
        n = min(probe.shape[0], z_probe.shape[0])
        mean_mse = float(F.mse_loss(aux_x.mean(0, keepdim=True).expand_as(probe), probe))

        def read() -> tuple[torch.Tensor, float, float, float]:
            for m in (sub, dec):
                m.eval()
            with torch.random.fork_rng(devices=[]), torch.no_grad():  # reading must not change the run's randomness
                zs = features(probe, torch.Generator().manual_seed(cfg.seed + 9))
                fit = float(F.mse_loss(batched(dec, zs), probe))
                mmd = float(mk_mmd(zs[:n], z_probe[:n]))
            out = batched(dec, z_vic)
            for m in (sub, dec):
                m.train()
            return out, fit, mean_mse, mmd

        for m in (sub, critic, dec):
            m.train()
        return run_steps(cfg.steps, step, read)
