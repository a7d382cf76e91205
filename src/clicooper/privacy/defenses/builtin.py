"""The built-in defences of the DO, one class per kind of :mod:`clicooper.config.defenses`.

The maths lives in the mechanism modules (:mod:`clicooper.privacy.activation`, ``labels``, ``label_dp``,
``dpsgd``, ``decorrelation``, ``adversarial``, ``random_head``); these classes put each at its hook. The
DP ones use the objects of the run's :class:`~clicooper.privacy.runtime.PrivacyMechanisms` (built from its
secrets), so ``privacy.json`` accounts for exactly what is applied.
"""

from __future__ import annotations

from typing import Any

import torch

from clicooper.config import defenses as specs
from clicooper.config.defenses import DefenseSpec
from clicooper.errors import PrivacyError
from clicooper.privacy.accountant import epsilon, epsilon_with_dpsgd_head
from clicooper.privacy.activation import ActivationProtector, clip_per_sample
from clicooper.privacy.adversarial import InversionAdversary
from clicooper.privacy.decorrelation import distance_correlation
from clicooper.privacy.defenses.base import Defense, DefenseContext
from clicooper.privacy.dpsgd import HeadDPSGD as _HeadDPSGD
from clicooper.privacy.random_head import draw_secret_head


def _needs(obj: Any, kind: str) -> Any:
    if obj is None:  # mechanisms_for_run builds it for every config with this kind
        raise PrivacyError(f"defence {kind} needs the DO's privacy mechanisms (built from the run's secrets)")
    return obj


class _Noise(Defense):
    """Clip + keyed noise through an :class:`ActivationProtector`, with its per-release ε."""

    protector: ActivationProtector
    released: str

    def _report(self, epochs: int, context_delta: float, accountant: str) -> dict[str, Any]:
        r = epsilon(sigma=self.protector.sigma, epochs=epochs, delta=context_delta, accountant=accountant).to_dict()
        return {"kind": self.kind, "guarantee": "dp", **r, "released": self.released}


class KeyedNoise(_Noise):
    """Keyed noise on every release of the head (training stream ``act``, served queries ``query``)."""

    spec = specs.KeyedNoise
    released = "head activations (stream 'act')"

    def __init__(self, spec: DefenseSpec, context: DefenseContext) -> None:
        super().__init__(spec, context)
        self.protector = _needs(context.privacy.protector, self.kind)
        self.privacy = context.privacy

    def on_release(self, a: torch.Tensor, *, sample_ids: torch.Tensor, epoch: int, stream: str) -> torch.Tensor:
        if stream == "act":  # the protector's default stream (same draws as ever)
            return self.protector.protect(a, sample_ids=sample_ids, round=epoch)
        return self.protector.protect(a, sample_ids=sample_ids, round=epoch, stream=stream)

    def report(self, epochs: int) -> dict[str, Any]:
        return self._report(epochs, self.privacy.delta, self.privacy.accountant)


class GradientProtection(_Noise):
    """Keyed noise on the gradient the DO returns to the last trainer (stream ``grad``)."""

    spec = specs.GradientProtection
    released = "gradient g_K returned to the last trainer (stream 'grad'); model held fixed"

    def __init__(self, spec: DefenseSpec, context: DefenseContext) -> None:
        super().__init__(spec, context)
        self.protector = _needs(context.privacy.grad_protector, self.kind)
        self.privacy = context.privacy

    def on_gradient(self, g: torch.Tensor, *, sample_ids: torch.Tensor, epoch: int) -> torch.Tensor:
        return self.protector.protect(g, sample_ids=sample_ids, round=epoch, stream="grad")

    def report(self, epochs: int) -> dict[str, Any]:
        return self._report(epochs, self.privacy.delta, self.privacy.accountant)


class LabelObfuscation(Defense):
    """Training targets in the secret sub-class space; outputs decoded back with the label key."""

    spec = specs.LabelObfuscation

    def __init__(self, spec: DefenseSpec, context: DefenseContext) -> None:
        super().__init__(spec, context)
        self.codec = _needs(context.privacy.label_encoder, self.kind)

    def on_labels(self, y: torch.Tensor, *, sample_ids: torch.Tensor, epoch: int) -> torch.Tensor:
        return self.codec.encode(y, sample_ids=sample_ids, round=epoch)

    def decode_probs(self, p: torch.Tensor) -> torch.Tensor:
        return self.codec.decode_probs(p)

    def report(self, epochs: int) -> dict[str, Any]:
        return {"kind": self.kind, "guarantee": "empirical", "epsilon": None,
                "covers": f"labels in a secret space of {self.codec.num_outputs} sub-classes (no DP bound)"}


class RandomizedResponse(Defense):
    """Label DP for the open tail: each sample's fixed randomized label."""

    spec = specs.RandomizedResponse

    def __init__(self, spec: DefenseSpec, context: DefenseContext) -> None:
        super().__init__(spec, context)
        self.rr = _needs(context.privacy.label_noiser, self.kind)

    def on_labels(self, y: torch.Tensor, *, sample_ids: torch.Tensor, epoch: int) -> torch.Tensor:
        return self.rr.noisy_labels(y, sample_ids=sample_ids)

    def report(self, epochs: int) -> dict[str, Any]:
        return {"kind": self.kind, "guarantee": "dp", **self.rr.report().to_dict()}


class HeadDPSGD(Defense):
    """DP-SGD on the head: per-sample clipped gradients of T1's gradient plus keyed noise, instead of the
    plain backward (:class:`clicooper.privacy.dpsgd.HeadDPSGD`)."""

    spec = specs.HeadDPSGD
    needs_inputs = True

    def __init__(self, spec: DefenseSpec, context: DefenseContext) -> None:
        super().__init__(spec, context)
        sp = _needs(context.privacy.head_dpsgd, self.kind)
        clip = _needs(context.privacy.protector, "head-dpsgd's release map (keyed-noise)").clip_norm
        self.privacy = context.privacy
        self.dpsgd = _HeadDPSGD(context.head, noise_multiplier=sp.noise_multiplier, max_grad_norm=sp.max_grad_norm,
                                secret=sp.secret, release=lambda a: clip_per_sample(a, clip))

    def on_head_gradient(self, *, x: torch.Tensor | None, release: torch.Tensor, grad: torch.Tensor,
                         batch_size: int) -> bool:
        assert x is not None  # needs_inputs
        self.dpsgd.accumulate(x, grad, batch_size=batch_size)
        return True

    def before_head_step(self, *, epoch: int, step: int, batch_size: int) -> None:
        self.dpsgd.finalize(epoch=epoch, step=step, batch_size=batch_size)

    def report(self, epochs: int) -> dict[str, Any]:
        protector = _needs(self.privacy.protector, "head-dpsgd's report (keyed-noise)")
        r = epsilon_with_dpsgd_head(sigma=protector.sigma, epochs=epochs, delta=self.privacy.delta,
                                    noise_multiplier=self.dpsgd.noise_multiplier, sample_rate=1.0, steps=epochs)
        return {"kind": self.kind, "guarantee": "dp", **r.to_dict()}


class NoPeek(Defense):
    """α · distance correlation between a micro-batch's inputs and the head's output, on the head's loss."""

    spec = specs.NoPeek

    def __init__(self, spec: DefenseSpec, context: DefenseContext) -> None:
        super().__init__(spec, context)
        self.weight = float(spec.weight)  # type: ignore[attr-defined]

    def head_term(self, *, x: torch.Tensor, head_out: torch.Tensor, release: torch.Tensor) -> torch.Tensor | None:
        if len(x) < 2:  # a distance correlation needs two samples
            return None
        return distance_correlation(x, head_out) * self.weight


class AdversarialDecoder(Defense):
    """The DO's own decoder steps on each release; the head's loss gains −λ·MSE(decoder(release), input)."""

    spec = specs.AdversarialDecoder

    def __init__(self, spec: DefenseSpec, context: DefenseContext) -> None:
        super().__init__(spec, context)
        s: specs.AdversarialDecoder = spec  # type: ignore[assignment]
        self.adversary = InversionAdversary(context.cut_shape, context.input_shape, weight=s.weight, hidden=s.hidden,
                                            lr=s.lr, seed=context.config.seed, device=context.device)

    def head_term(self, *, x: torch.Tensor, head_out: torch.Tensor, release: torch.Tensor) -> torch.Tensor | None:
        self.adversary.step(release, x)
        return self.adversary.head_term(release, x)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The decoder's weights and its Adam moments (so a resumed run goes on as an uninterrupted one)."""
        out = {f"decoder.{k}": v.detach().clone() for k, v in self.adversary.decoder.state_dict().items()}
        for i, st in self.adversary.optimizer.state_dict()["state"].items():
            out |= {f"adam.{i}.{k}": torch.as_tensor(v).detach().clone() for k, v in st.items()}
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        dec = {k.removeprefix("decoder."): v for k, v in state.items() if k.startswith("decoder.")}
        self.adversary.decoder.load_state_dict(dec)  # strict: shapes and names are checked
        opt: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in state.items():
            if k.startswith("adam."):
                _, i, name = k.split(".", 2)
                opt.setdefault(int(i), {})[name] = v
        groups = self.adversary.optimizer.state_dict()["param_groups"]
        self.adversary.optimizer.load_state_dict({"state": opt, "param_groups": groups})


class SecretRandomHead(Defense):
    """The head drawn from the DO's head key and frozen before training (nothing of it ever trains)."""

    spec = specs.SecretRandomHead

    def __init__(self, spec: DefenseSpec, context: DefenseContext) -> None:
        super().__init__(spec, context)
        if context.privacy.head_key is None:
            raise PrivacyError("head_mode secret-random needs the DO's privacy mechanisms (its head key)")
        self.key = context.privacy.head_key

    def setup_head(self, head: torch.nn.Module) -> None:
        draw_secret_head(head, self.key)
