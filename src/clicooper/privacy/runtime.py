"""Glue: the DO's privacy mechanisms for one run, built from its config and ``RUN/secrets/``.

``training/privacy_hooks.build_privacy`` can return :func:`mechanisms_for_run` as is; ``runs.py`` calls
:func:`label_codec_for_run` to decode predictions. Everything here is bookkeeping over the mechanism modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clicooper.errors import PrivacyError
from clicooper.privacy.activation import ActivationProtector
from clicooper.privacy.defaults import cut_advice, describe_sigma, resolve_sigma, sigma_derivation
from clicooper.privacy.label_dp import RandomizedResponse
from clicooper.privacy.labels import LabelCodec
from clicooper.privacy.prefetch import EpochSchedule, NoisePrefetcher
from clicooper.privacy.record import privacy_record
from clicooper.privacy.secrets import LABEL_KEY, NOISE_SECRET, backup_reminder, create_secrets, load_secret

if TYPE_CHECKING:
    from clicooper.config import RunConfig


def label_codec_for_run(run_dir: str | Path, config: RunConfig, num_classes: int) -> LabelCodec:
    """The run's :class:`LabelCodec` (needs ``RUN/secrets/label_key``; PrivacyError says how to restore it)."""
    return LabelCodec(
        key=load_secret(run_dir, LABEL_KEY), num_classes=num_classes, expansion=config.labels.expansion
    )


_KEYS = (
    "protector",
    "grad_protector",
    "label_encoder",
    "label_noiser",
    "epsilon_after",
    "record_after",
    "head_dpsgd",
    "notice",
    "sigma",
    "prefetcher",
    "close",
)


def mechanisms_for_run(
    config: RunConfig,
    run_dir: str | Path,
    num_classes: int,
    *,
    new_run: bool,
    cut_shape: Sequence[int] | None = None,
    schedule: EpochSchedule | None = None,
) -> dict[str, Any]:
    """Build ``{"protector", "grad_protector", "label_encoder", "label_noiser", "epsilon_after",
    "record_after", "notice", "sigma", "prefetcher", "close"}`` for the DO (``None`` where a mechanism is off).

    Creates the secrets on a new run (``notice`` then starts with the label-key backup reminder to print)
    and loads them on resume. ``epsilon_after(E)`` gives the labelled ε reports after E completed epochs
    (for ``metrics.json``); ``record_after(E)`` the whole ``privacy.json`` dict. ``sigma`` is how the
    activation σ was chosen (:func:`clicooper.privacy.defaults.sigma_derivation`; its one-line summary is
    part of ``notice``).

    ``cut_shape`` (per-sample shape of the head's output) lets an unset σ be derived here by the
    noise-ratio rule and is recorded in ``privacy.json``. ``schedule`` (the DO's batch order) turns on a
    :class:`~clicooper.privacy.prefetch.NoisePrefetcher`: the next batch's noise is drawn on one background
    thread, with the same values; ``close()`` stops it (call it when training ends, also on error).
    """
    out: dict[str, Any] = dict.fromkeys(_KEYS)
    if not (config.protect_activations or config.obfuscate_labels or config.labels.label_dp_epsilon):
        return out
    dp = config.dp
    grad_clip = getattr(dp, "grad_clip_norm", None)
    # Everything that can be refused is checked before any secret is written, so a corrected config can
    # start the same run dir.
    if config.protect_activations and dp.protect_gradients and grad_clip is None:
        raise PrivacyError(
            "dp.protect_gradients needs its own clip norm for the returned gradient (its rows are "
            "about 1/batch_size the scale of a per-sample gradient); set dp.grad_clip_norm"
        )
    if dp.head_dpsgd is not None and not config.protect_activations:
        raise PrivacyError(
            "dp.head_dpsgd composes DP-SGD on the head with the activation releases; it needs "
            "--defense dp or clicooper (the releases of an unprotected head would void it)")
    derivation = None
    if config.protect_activations:
        if dp.sigma is None:
            if dp.target_epsilon is None and cut_shape is None:
                raise PrivacyError(
                    "dp.sigma is unset and no cut shape is known to derive it; resolve the config first "
                    "(RunConfig.resolved(num_train, dataset=...)) or pass cut_shape="
                )
            config = resolve_sigma(config, cut_shape=cut_shape)
            dp = config.dp
        derivation = sigma_derivation(config, cut_shape=cut_shape)
    create_secrets(run_dir, exist_ok=not new_run)
    notice = [backup_reminder(run_dir)] if new_run else []
    noise_secret = load_secret(run_dir, NOISE_SECRET)

    act = grad = prefetcher = None
    if config.protect_activations:
        assert dp.sigma is not None
        if schedule is not None and dp.sigma > 0:
            prefetcher = NoisePrefetcher(schedule)
        act = ActivationProtector(
            sigma=dp.sigma, clip_norm=dp.clip_norm, secret=noise_secret, prefetcher=prefetcher
        )
        if dp.protect_gradients:
            grad = ActivationProtector(
                sigma=dp.sigma, clip_norm=grad_clip, secret=noise_secret, prefetcher=prefetcher
            )
        notice.append(describe_sigma(derivation))
        if new_run and (advice := cut_advice(config.model, config.dataset)) is not None:
            notice.append(advice)
    codec = label_codec_for_run(run_dir, config, num_classes) if config.obfuscate_labels else None
    rr = None
    if config.labels.label_dp_epsilon is not None and config.topology == "open-tail":
        rr = RandomizedResponse(
            epsilon=config.labels.label_dp_epsilon, num_classes=num_classes, key=noise_secret
        )

    head_dpsgd = None
    if dp.head_dpsgd is not None:
        head_dpsgd = {"noise_multiplier": dp.head_dpsgd.noise_multiplier,
                      "max_grad_norm": dp.head_dpsgd.max_grad_norm, "secret": noise_secret}

    def record_after(epochs: int) -> dict[str, Any]:
        # shuffled fixed-size batches: one DP-SGD step per sample per epoch, no subsampling amplification
        dpsgd = None if head_dpsgd is None else {
            "noise_multiplier": head_dpsgd["noise_multiplier"], "sample_rate": 1.0, "steps": epochs}
        return privacy_record(
            epochs=epochs,
            delta=dp.delta,
            activations=act,
            gradients=grad,
            codec=codec,
            label_dp=rr,
            dpsgd=dpsgd,
            accountant=dp.accountant,
            sigma_derivation=derivation,
        )

    def epsilon_after(epochs: int) -> dict[str, Any]:
        return {"reports": record_after(epochs)["reports"]}

    out.update(
        protector=act,
        grad_protector=grad,
        label_encoder=codec,
        label_noiser=rr,
        epsilon_after=epsilon_after if (act is not None or rr is not None) else None,
        record_after=record_after,
        head_dpsgd=head_dpsgd,
        notice="\n".join(notice) or None,
        sigma=derivation,
        prefetcher=prefetcher,
        close=prefetcher.close if prefetcher is not None else None,
    )
    return out
