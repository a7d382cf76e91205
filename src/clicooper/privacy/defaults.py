"""How σ is chosen when the user did not give it (``defense = "dp"`` or ``"clicooper"``).

Precedence, first match wins:

1. ``dp.sigma`` given explicitly (``--sigma``, ``[dp] sigma``) — source ``"explicit"``; ``σ = 0`` is allowed
   and means clip only (ε = ∞, labelled as such);
2. ``dp.target_epsilon`` (``--target-epsilon``) — the smallest σ whose per-release ε (head fixed) after
   ``epochs`` epochs at ``dp.delta`` is at most the target (:func:`~.accountant.sigma_for_epsilon`);
   source ``"target-epsilon"``;
3. a preset's σ (``--preset``; :mod:`clicooper.config.presets`) — source ``"preset"``;
4. otherwise **σ = ρ/√d** — source ``"noise-ratio"``: ``ρ = dp.noise_ratio`` (default 1.0) and ``d`` the
   number of values per sample of the head's output (the cut). With the clip norm ``S``, each released row
   is clipped to norm ≤ S and gets noise of norm ≈ σ·S·√d = ρ·S: ρ is the noise/signal ratio at the cut
   (exactly, when the activation's norm reaches S; a lower bound on it otherwise).

Explicit σ and a target ε together are refused (``ConfigError``). The choice is recorded in
``config.json`` (``dp.sigma``, ``dp.sigma_source``) and, with how it was derived, in ``RUN/privacy.json``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from clicooper.config import RunConfig
from clicooper.errors import ConfigError, PrivacyError
from clicooper.privacy.accountant import sigma_for_epsilon

DEFAULT_NOISE_RATIO = 1.0


def sigma_from_noise_ratio(*, noise_ratio: float, cut_dim: int) -> float:
    """``σ = ρ/√d``: the noise multiplier that gives noise of norm ≈ ρ·S on a cut of ``d`` values."""
    if isinstance(noise_ratio, bool) or not isinstance(noise_ratio, int | float):
        raise PrivacyError(f"noise_ratio must be a number > 0, got {noise_ratio!r}")
    if not math.isfinite(noise_ratio) or noise_ratio <= 0:
        raise PrivacyError(f"noise_ratio must be a finite number > 0, got {noise_ratio!r}")
    if isinstance(cut_dim, bool) or not isinstance(cut_dim, int) or cut_dim < 1:
        raise PrivacyError(f"cut_dim must be a positive int (values per sample at the cut), got {cut_dim!r}")
    return float(noise_ratio) / math.sqrt(cut_dim)


def resolve_sigma(config: RunConfig, *, cut_shape: Sequence[int] | None = None) -> RunConfig:
    """``config`` with ``dp.sigma`` and ``dp.sigma_source`` filled in (see the module docstring).

    A config that already has σ, or that does not protect activations, is returned as is. The noise-ratio
    rule needs ``cut_shape``, the per-sample shape of the head's output
    (:attr:`clicooper.models.blueprint.Blueprint.cut_shape`).
    """
    dp = config.dp
    if dp.sigma is not None or not config.protect_activations:
        return config
    if dp.target_epsilon is not None:
        try:
            sigma = sigma_for_epsilon(
                epsilon=dp.target_epsilon, delta=dp.delta, epochs=config.epochs, accountant=dp.accountant,
                max_sigma=dp.max_sigma,
            )
        except PrivacyError as e:
            raise ConfigError(f"dp.target_epsilon: {e} (raise it with --set dp.max_sigma=S)") from e
        source = "target-epsilon"
    else:
        if cut_shape is None:
            raise PrivacyError("σ is unset and follows the noise-ratio rule, which needs the cut shape: pass "
                               "cut_shape= (the model's Blueprint.cut_shape)")
        sigma = sigma_from_noise_ratio(
            noise_ratio=dp.noise_ratio, cut_dim=math.prod(int(s) for s in cut_shape)
        )
        source = "noise-ratio"
    noise = config.defense_of("keyed-noise")
    assert noise is not None  # protect_activations
    return config.with_defense(type(noise).model_validate(noise.model_dump() | {"sigma": sigma, "sigma_source": source}))


def sigma_derivation(config: RunConfig, *, cut_shape: Sequence[int] | None = None) -> dict[str, Any]:
    """How ``config``'s σ was chosen, for ``RUN/privacy.json`` (``config`` must have σ resolved).

    With ``cut_shape``, also the effective noise/signal ratio ``σ·√d`` at the cut. Raises
    :class:`ConfigError` when σ says it came from the noise-ratio rule but does not match this cut (a
    config copied to another model): remove ``dp.sigma``/``dp.sigma_source`` to derive it again.
    """
    dp = config.dp
    if dp.sigma is None:
        raise PrivacyError("dp.sigma is not resolved yet; call RunConfig.resolved(...) first")
    out: dict[str, Any] = {
        "sigma": dp.sigma,
        "source": dp.sigma_source or "explicit",
        "clip_norm": dp.clip_norm,
    }
    d = math.prod(int(s) for s in cut_shape) if cut_shape is not None else None
    if dp.sigma_source == "noise-ratio":
        out |= {"noise_ratio": dp.noise_ratio, "rule": "sigma = noise_ratio / sqrt(cut_dim)"}
        if d is not None:
            want = sigma_from_noise_ratio(noise_ratio=dp.noise_ratio, cut_dim=d)
            if not math.isclose(dp.sigma, want, rel_tol=1e-12):
                raise ConfigError(
                    f"dp.sigma = {dp.sigma} was derived from noise_ratio {dp.noise_ratio} for another cut; "
                    f"this model's cut has d = {d} values (σ would be {want:.6g}); remove dp.sigma and "
                    "dp.sigma_source to derive it again"
                )
    elif dp.sigma_source == "target-epsilon":
        out |= {
            "target_epsilon": dp.target_epsilon,
            "delta": dp.delta,
            "epochs": config.epochs,
            "accountant": dp.accountant,
            "covers": "per-release, head fixed",
        }
    elif dp.sigma_source == "preset":
        out["preset"] = config.preset
    if d is not None:
        out |= {"cut_shape": [int(s) for s in cut_shape or ()], "cut_dim": d}
        out["noise_to_signal"] = dp.sigma * math.sqrt(d)
    if dp.sigma == 0.0:
        out["note"] = "sigma = 0: clip only, no noise; epsilon = inf (no formal guarantee)"
    return out


def describe_sigma(derivation: dict[str, Any]) -> str:
    """One line for the user: σ, how it was chosen, and what it means at the cut."""
    s, src = derivation["sigma"], derivation["source"]
    if src == "explicit":
        how = "given explicitly"
    elif src == "preset":
        how = f"from preset {derivation.get('preset')}"
    elif src == "target-epsilon":
        how = (
            f"smallest σ for target ε = {derivation.get('target_epsilon')} (δ = {derivation.get('delta')}, "
            f"{derivation.get('epochs')} epoch(s), per-release, head fixed)"
        )
    elif src == "noise-ratio":
        how = f"default rule σ = ρ/√d with ρ = {float(derivation['noise_ratio']):g}"
        if "cut_dim" in derivation:
            how += f", d = {derivation['cut_dim']}"
    else:
        how = str(src)
    line = f"activation noise: σ = {s:.6g} ({how}), clip_norm S = {derivation['clip_norm']:g}"
    if "noise_to_signal" in derivation:
        line += f", noise/signal at the cut ≈ {derivation['noise_to_signal']:.3g}"
    if s == 0.0:
        line += "; σ = 0: clip only, ε = ∞ (no formal guarantee)"
    return line


def cut_advice(model: str, dataset: str = "fashion-mnist") -> str | None:
    """A warning for activation noise on a model that is not one of the measured bottleneck models.

    Only the ``fmnist-private-*`` models (an L2-normalised low-dimensional cut) were measured at the
    inversion class floor (docs/research/privacy-frontier.md). On a wide cut the same ρ buys little: ``fmnist-cnn``
    with the default σ = ρ/√d, ρ = 1 lost 8.8 points and still let inversion reach SSIM 0.66.
    """
    if model.startswith("fmnist-private-"):
        return None
    if model.startswith("fmnist-resnet-s"):
        return (f"note: on {model} noise alone was measured above the inversion class floor (fmnist-resnet-s8, "
                "3 seeds, 15k rows × 3 epochs, converging attackers: noise/signal 1 → strongest inversion ≥ 0.20 "
                "over the class floor for −4.0 points, 2 → ≥ 0.08 for −7.9; NoPeek α 3 (--with nopeek:weight=3) at noise/signal 1 "
                "(--preset private-resnet) → ≥ 0.04 for −8.3; docs/research/frontier-resnet.md).")
    if dataset != "fashion-mnist":
        return (f"note: what this noise protects on {model} ({dataset}) is not measured; run `clicooper report` "
                "on the run (with --record-observations) to measure inversion against an undefended baseline.")
    return (
        f"note: {model} does not end its DO head in a low-dimensional normalised cut, so this noise is not what "
        "the privacy frontier measured: fmnist-cnn with the default σ (ρ = 1; 15k rows, 3 epochs) lost 8.8 "
        "accuracy points and inversion still reached SSIM 0.66 (class floor 0.36). For input privacy use "
        "--preset private-accurate or private-balanced (docs/research/privacy-frontier.md)."
    )
