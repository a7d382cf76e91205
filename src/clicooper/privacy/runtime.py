"""The DO's privacy mechanisms for one run as one typed record, built from its config and ``RUN/secrets/``.

:func:`mechanisms_for_run` → :class:`PrivacyMechanisms` (the session core builds it once per run);
``runs.py`` calls :func:`label_codec_for_run` to decode predictions. Bookkeeping over the mechanism modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clicooper.config import RunConfig
from clicooper.errors import PrivacyError
from clicooper.privacy.activation import ActivationProtector
from clicooper.privacy.defaults import cut_advice, describe_sigma, sigma_derivation
from clicooper.privacy.label_dp import RandomizedResponse
from clicooper.privacy.labels import LabelCodec
from clicooper.privacy.prefetch import EpochSchedule, NoisePrefetcher
from clicooper.privacy.random_head import head_key
from clicooper.privacy.record import privacy_record
from clicooper.privacy.secrets import LABEL_KEY, NOISE_SECRET, backup_reminder, create_secrets, load_secret


def label_codec_for_run(run_dir: str | Path, config: RunConfig, num_classes: int) -> LabelCodec:
    """The run's :class:`LabelCodec` (needs ``RUN/secrets/label_key``; PrivacyError says how to restore it)."""
    return LabelCodec(
        key=load_secret(run_dir, LABEL_KEY), num_classes=num_classes, expansion=config.labels.expansion
    )


@dataclass(frozen=True)
class HeadDPSGDSpec:
    """What the DO needs to train its head with DP-SGD (:class:`~clicooper.privacy.dpsgd.HeadDPSGD`)."""

    noise_multiplier: float
    max_grad_norm: float
    secret: bytes = field(repr=False)  # the DO's noise secret: never printed


@dataclass
class PrivacyMechanisms:
    """The DO's privacy mechanisms for one run (``None`` where a mechanism is off), built and checked in
    one place, :func:`mechanisms_for_run`, from a validated :class:`~clicooper.config.RunConfig`.

    ``sigma`` is how the activation σ was chosen (:func:`~clicooper.privacy.defaults.sigma_derivation`);
    ``notice`` the lines to print when the run starts (the label-key backup reminder first on a new run).
    """

    protector: ActivationProtector | None = None
    grad_protector: ActivationProtector | None = None
    label_encoder: LabelCodec | None = None
    label_noiser: RandomizedResponse | None = None
    head_dpsgd: HeadDPSGDSpec | None = None
    sigma: dict[str, Any] | None = None
    notice: str | None = None
    prefetcher: NoisePrefetcher | None = None
    head_key: bytes | None = None  # head_mode secret-random: the key the DO's frozen head is drawn from
    delta: float = 1e-5
    accountant: str = "pld"
    noise_secret: bytes | None = field(default=None, repr=False)  # the DO's, for keys a defence derives: never printed

    @property
    def enabled(self) -> bool:
        """Whether any mechanism is on (then the run keeps a ``privacy.json``)."""
        return any(m is not None for m in (self.protector, self.label_encoder, self.label_noiser))

    @property
    def under_dp(self) -> bool:
        """Whether anything is released under a DP guarantee (noised activations or RR labels)."""
        return self.protector is not None or self.label_noiser is not None

    def record_after(self, epochs: int) -> dict[str, Any]:
        """The whole ``privacy.json`` after ``epochs`` completed epochs (labelled ε reports and more)."""
        # shuffled fixed-size batches: one DP-SGD step per sample per epoch, no subsampling amplification
        dpsgd = None if self.head_dpsgd is None else {
            "noise_multiplier": self.head_dpsgd.noise_multiplier, "sample_rate": 1.0, "steps": epochs}
        return privacy_record(epochs=epochs, delta=self.delta, activations=self.protector,
                              gradients=self.grad_protector, codec=self.label_encoder, label_dp=self.label_noiser,
                              dpsgd=dpsgd, accountant=self.accountant, sigma_derivation=self.sigma)

    def epsilon_after(self, epochs: int) -> list[dict[str, Any]]:
        """The labelled ε reports after ``epochs`` epochs (empty when nothing is released under DP)."""
        return self.record_after(epochs)["reports"] if self.under_dp else []

    def close(self) -> None:
        """Stop the noise-prefetch thread, if any (call when training ends, also on error)."""
        if self.prefetcher is not None:
            self.prefetcher.close()


NO_PRIVACY = PrivacyMechanisms()


def _refuse_before_secrets(config: RunConfig) -> None:
    # Everything that can be refused is checked before any secret is written, so a corrected config can
    # start the same run dir. (dp.head_dpsgd without protected releases is refused by RunConfig itself.)
    dp = config.dp
    if config.protect_activations and dp.protect_gradients and dp.grad_clip_norm is None:
        raise PrivacyError(
            "dp.protect_gradients needs its own clip norm for the returned gradient (its rows are "
            "about 1/batch_size the scale of a per-sample gradient); set dp.grad_clip_norm"
        )
    if config.protect_activations and dp.sigma is None:
        raise PrivacyError(
            "dp.sigma is unset; resolve it first (clicooper.privacy.defaults.resolve_sigma(config, "
            "cut_shape=…): the session core does this once the model's plan is known)")


def _activation_protectors(
    config: RunConfig, secret: bytes, schedule: EpochSchedule | None
) -> tuple[ActivationProtector, ActivationProtector | None, NoisePrefetcher | None]:
    dp = config.dp
    assert dp.sigma is not None  # _refuse_before_secrets
    prefetcher = NoisePrefetcher(schedule) if schedule is not None and dp.sigma > 0 else None
    act = ActivationProtector(sigma=dp.sigma, clip_norm=dp.clip_norm, secret=secret, prefetcher=prefetcher)
    grad = None
    if dp.protect_gradients:
        assert dp.grad_clip_norm is not None  # _refuse_before_secrets
        grad = ActivationProtector(sigma=dp.sigma, clip_norm=dp.grad_clip_norm, secret=secret, prefetcher=prefetcher)
    return act, grad, prefetcher


def mechanisms_for_run(
    config: RunConfig,
    run_dir: str | Path,
    num_classes: int,
    *,
    new_run: bool,
    cut_shape: Sequence[int] | None = None,
    schedule: EpochSchedule | None = None,
) -> PrivacyMechanisms:
    """The DO's :class:`PrivacyMechanisms` for ``config`` (σ resolved), with its secrets in ``run_dir``.

    Creates the secrets on a new run (``notice`` then starts with the label-key backup reminder to print)
    and loads them on resume. ``cut_shape`` (per-sample shape of the head's output) is recorded in
    ``privacy.json`` with the noise/signal ratio. ``schedule`` (the DO's batch order) turns on a
    :class:`~clicooper.privacy.prefetch.NoisePrefetcher`: the next batch's noise is drawn on one background
    thread, with the same values; ``close()`` stops it.
    """
    secret_head = config.head_mode == "secret-random"
    if not (config.protect_activations or config.obfuscate_labels or config.labels.label_dp_epsilon or secret_head):
        return PrivacyMechanisms()
    _refuse_before_secrets(config)
    dp = config.dp
    derivation = sigma_derivation(config, cut_shape=cut_shape) if config.protect_activations else None
    create_secrets(run_dir, exist_ok=not new_run)
    notice = [backup_reminder(run_dir)] if new_run else []
    noise_secret = load_secret(run_dir, NOISE_SECRET)
    act = grad = prefetcher = None
    if config.protect_activations:
        act, grad, prefetcher = _activation_protectors(config, noise_secret, schedule)
        notice.append(describe_sigma(derivation))
        if new_run and (advice := cut_advice(config.model, config.dataset)) is not None:
            notice.append(advice)
    rr = None
    if config.labels.label_dp_epsilon is not None and config.topology == "open-tail":
        rr = RandomizedResponse(epsilon=config.labels.label_dp_epsilon, num_classes=num_classes, key=noise_secret)
    head = None
    if dp.head_dpsgd is not None:
        head = HeadDPSGDSpec(dp.head_dpsgd.noise_multiplier, dp.head_dpsgd.max_grad_norm, noise_secret)
    return PrivacyMechanisms(
        protector=act, grad_protector=grad,
        label_encoder=label_codec_for_run(run_dir, config, num_classes) if config.obfuscate_labels else None,
        label_noiser=rr, head_dpsgd=head, sigma=derivation, notice="\n".join(notice) or None,
        prefetcher=prefetcher, head_key=head_key(noise_secret) if secret_head else None, delta=dp.delta,
        accountant=dp.accountant, noise_secret=noise_secret,
    )
