"""FSHA — the feature-space hijacking attack by T1 (Pasquini et al., CCS 2021, §3, Algorithm 1).

T1 receives the DO's released head output ``z = ã0`` and, instead of ``∂loss/∂z``, sends back the gradient
of an adversarial loss that pulls the DO's head towards a feature space of T1's choosing: that of its own
*pilot* encoder f̃, trained with a decoder f̃⁻¹ as an auto-encoder on public auxiliary data. Once the head's
outputs look like f̃'s (a discriminator D can no longer tell them apart), ``f̃⁻¹(z)`` reconstructs the DO's
private inputs. Per step, as in the reference code (pasquini-dario/SplitNN_FSHA ``FSHA.train_step`` with
``WGAN=True``, ``gradient_penalty``; zlijingtao/SplitNN_FSHA_torch for PyTorch):

- the gradient sent to the DO: ``∂ mean D(z) / ∂z`` (the head minimises D's score of its output);
- f̃, f̃⁻¹: one Adam step on ``MSE(f̃⁻¹(f̃(x_pub)), x_pub)``;
- D: one Adam step on ``mean D(f̃(x_pub)) − mean D(z) + w·GP`` (WGAN-GP, Gulrajani et al. 2017).

To stay inconspicuous T1 still trains its own segment on the true gradient from T2 and forwards honestly,
so the DO's tail keeps learning. Every ``fsha_eval_every`` steps the *evaluator* scores ``f̃⁻¹(z)`` of the
batch against the true inputs (SSIM; MSE for images under 11×11) beside the class floor (SSIM of each
input against the auxiliary mean image of its class, docs/design/metrics.md#attacks-and-metrics): ``report["curve"]``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from clicooper.attacks.active.base import ActiveTrainer
from clicooper.attacks.active.fsha_nets import gradient_penalty, make_nets
from clicooper.attacks.metrics import SSIM_WINDOW, mse, ssim
from clicooper.errors import ConfigError
from clicooper.protocol.messages import Activations, Gradients, Header, Message


class FSHATrainer(ActiveTrainer):
    """T1 running FSHA (see module docstring)."""

    behaviour = "fsha"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        ctx, a = self.context, self.adversary
        if ctx.aux_x is None or self.input_shape is None:
            raise ConfigError("FSHA needs public auxiliary data and the cut shape; build it through the session core")
        self.aux = ctx.aux_x[: a.fsha_aux_rows].float()
        with torch.random.fork_rng(devices=[]):  # the attacker's own initialisation; the run's RNG untouched
            torch.manual_seed(ctx.seed + 1)
            self.pilot, self.decoder, self.disc = make_nets(tuple(ctx.input_shape), tuple(self.input_shape))
        self.opt_ae = torch.optim.Adam([*self.pilot.parameters(), *self.decoder.parameters()], lr=a.fsha_lr_pilot)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=a.fsha_lr_discriminator)
        self.gen = torch.Generator().manual_seed(ctx.seed + 2)
        self._hijack: dict[tuple[int, int, int], torch.Tensor] = {}
        self.report.update(curve=[], aux_rows=len(self.aux))
        self._class_means = self._means()

    def _means(self) -> dict[int, torch.Tensor]:
        ctx = self.context
        if ctx.aux_y is None:
            return {}
        y = ctx.aux_y[: len(self.aux)]
        return {int(c): self.aux[y == c].mean(0) for c in y.unique()}

    def _forward(self, msg: Activations) -> list[Message]:
        out = super()._forward(msg)
        h = msg.header
        if self.deviates(h):
            z = msg.tensor.detach().float()
            self._hijack[(h.epoch, h.step, h.micro)] = self._fsha_step(z)
            if h.micro == 0 and h.step % self.adversary.fsha_eval_every == 0:
                self._evaluate(h, z)
        return out

    def _fsha_step(self, z: torch.Tensor) -> torch.Tensor:
        """One FSHA update on the received ``z``; returns the gradient to send to the DO."""
        idx = torch.randint(0, len(self.aux), (z.shape[0],), generator=self.gen)
        x_pub = self.aux[idx]
        zq = z.clone().requires_grad_(True)
        f_loss = self.disc(zq).mean()
        grad = torch.autograd.grad(f_loss, zq)[0]
        z_pub = self.pilot(x_pub)
        ae_loss = F.mse_loss(self.decoder(z_pub), x_pub)
        self.opt_ae.zero_grad(set_to_none=True)
        ae_loss.backward()
        self.opt_ae.step()
        z_pub = z_pub.detach()
        d_loss = self.disc(z_pub).mean() - self.disc(z).mean()
        if self.adversary.fsha_gradient_penalty > 0:
            d_loss = d_loss + self.adversary.fsha_gradient_penalty * gradient_penalty(self.disc, z, z_pub, self.gen)
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        return grad.detach()

    def _backward(self, msg: Gradients) -> list[Message]:
        out = super()._backward(msg)  # T1's own segment trains on the true gradient
        h = msg.header
        fake = self._hijack.pop((h.epoch, h.step, h.micro), None)
        if fake is None:
            return out
        return [Gradients(Header(self.name, self.left, h.epoch, h.step, h.micro, h.n_micro), fake)]

    @torch.no_grad()
    def reconstruct(self, z: torch.Tensor) -> torch.Tensor:
        """``f̃⁻¹(z)``: the attacker's reconstruction of what the DO released."""
        return self.decoder(z.float())

    @torch.no_grad()
    def _evaluate(self, h: Header, z: torch.Tensor) -> None:
        truth = self.context.truth
        if truth is None:
            return
        x, y = truth(h.epoch, h.step, h.micro)
        x = x.float()
        rec = self.reconstruct(z).clamp(0, 1).cpu()
        row: dict[str, Any] = {"round": h.epoch, "step": h.step, "rows": len(x), "mse": float(mse(rec, x).mean())}
        if x.dim() == 4 and min(x.shape[-2:]) >= SSIM_WINDOW:
            row["ssim"] = float(ssim(rec, x).mean())
            if self._class_means:
                ref = torch.stack([self._class_means.get(int(c), self.aux.mean(0)) for c in y])
                row["class_floor"] = float(ssim(ref, x).mean())
                row["class_floor_mse"] = float(mse(ref, x).mean())
        self.report["curve"].append(row)
