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
figure and the reference code were read; the paper's section numbers were not checked. Defaults follow the
reference (a = 0.8, critic lr 3·10⁻⁴, batch 64) except the step budget (the reference runs 40,000 GPU
iterations at lr 10⁻⁴; here Adam at 10⁻³ for the budget's steps, read at ¼, ½ and all of them).

With activation protection on, the public noise distribution is simulated on the substitute's outputs
(clip + fresh Gaussian noise, never the secret values), as the white-box decoder does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from clicooper.attacks.adversarial import Critic, gradient_penalty, mk_mmd, run_steps
from clicooper.attacks.base import AttackResult, budget_points, register, require
from clicooper.attacks.inversion import victim_board
from clicooper.attacks.nets import Decoder, batched, reinit
from clicooper.attacks.views import Views


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
    grid: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.victims >= 1 and self.steps >= 1 and self.batch >= 2, "victims, steps ≥ 1 and batch ≥ 2")
        require(self.lr > 0 and self.critic_lr > 0, "learning rates must be > 0")
        require(0 <= self.mmd_weight <= 1, "mmd_weight (the reference's a) must be in [0, 1]")
        require(self.gp_weight >= 0, "gp_weight must be ≥ 0")
        require(self.width >= 4 and self.width % 2 == 0, "width must be an even number ≥ 4")


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
        series = self._train(views)
        board.score("fora", {"fora": series}, budget_points(cfg.steps),
                    {"substitute": "public head architecture, fresh weights", "mmd_weight": cfg.mmd_weight})
        noise = view.public.noise
        return AttackResult(attack=self.name, levels=board.levels, artifacts=board.grids,
                            info={"party": view.received.party, "epoch": view.received.epoch,
                                  "victims": int(board.x.shape[0]), "aux_images": int(views.aux.x.shape[0]),  # type: ignore[union-attr]
                                  "noise_simulated": None if noise is None else noise.__dict__,
                                  "config": cfg.__dict__})

    def _train(self, views: Views) -> list[torch.Tensor]:
        """The joint loop of the reference code (one substitute, critic and decoder step per iteration);
        the victims' reconstructions at ¼, ½ and all of the steps."""
        cfg, view = self.config, views.zero
        aux_x = views.aux.x.float()  # type: ignore[union-attr]
        z_all, noise = view.received.activations, view.public.noise
        z_vic = z_all[views.truth.victims[: cfg.victims]]
        gen = torch.Generator().manual_seed(cfg.seed)
        sub = reinit(view.public.architecture.head(), cfg.seed)
        torch.manual_seed(cfg.seed)
        critic, dec = Critic(tuple(z_all.shape[1:]), cfg.width), Decoder(tuple(z_all.shape[1:]), tuple(aux_x.shape[1:]),
                                                                       width=cfg.width)
        opt_s = torch.optim.Adam(sub.parameters(), lr=cfg.lr)
        opt_c = torch.optim.Adam(critic.parameters(), lr=cfg.critic_lr)
        opt_d = torch.optim.Adam(dec.parameters(), lr=cfg.lr)
        b = min(cfg.batch, aux_x.shape[0], z_all.shape[0])

        def features(xb: torch.Tensor) -> torch.Tensor:
            out = sub(xb)
            return noise.simulate(out, gen) if noise is not None else out

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

        def read() -> torch.Tensor:
            dec.eval()
            out = batched(dec, z_vic)
            dec.train()
            return out

        for m in (sub, critic, dec):
            m.train()
        return run_steps(cfg.steps, step, read)
