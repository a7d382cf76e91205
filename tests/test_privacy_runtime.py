"""The DO's privacy mechanisms built from a RunConfig (the integration glue)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clicooper.config import make_config
from clicooper.errors import PrivacyError
from clicooper.privacy import COVERS_LABEL_DP, COVERS_RELEASES, ActivationProtector, LabelCodec
from clicooper.privacy.defaults import resolve_sigma
from clicooper.privacy.runtime import label_codec_for_run, mechanisms_for_run
from clicooper.privacy.secrets import secrets_dir


def test_no_defense_builds_nothing_and_writes_no_secrets(tmp_path: Path) -> None:
    m = mechanisms_for_run(make_config(defense="none"), tmp_path, 10, new_run=True)

    assert not m.enabled and not m.under_dp
    assert all(getattr(m, f) is None for f in ("protector", "grad_protector", "label_encoder", "label_noiser",
                                               "head_dpsgd", "sigma", "notice", "prefetcher"))
    assert not secrets_dir(tmp_path).exists()


def test_clicooper_defense_builds_protector_codec_and_labelled_epsilon(tmp_path: Path) -> None:
    config = make_config(defense="clicooper", dp={"sigma": 2.0, "clip_norm": 1.0})

    m = mechanisms_for_run(config, tmp_path, 10, new_run=True)

    assert isinstance(m.protector, ActivationProtector) and m.grad_protector is None
    assert isinstance(m.label_encoder, LabelCodec) and m.label_encoder.num_outputs == 20
    assert "back up" in m.notice
    reports = m.epsilon_after(1)
    assert reports[0]["covers"] == COVERS_RELEASES
    assert reports[0]["epsilon"] == pytest.approx(4.38, rel=0.02)


def test_resume_reuses_the_same_secrets(tmp_path: Path) -> None:
    config = make_config(defense="labels")
    first = mechanisms_for_run(config, tmp_path, 10, new_run=True).label_encoder

    again = mechanisms_for_run(config, tmp_path, 10, new_run=False)

    assert again.notice is None
    assert again.label_encoder.permutation == first.permutation
    assert label_codec_for_run(tmp_path, config, 10).permutation == first.permutation
    with pytest.raises(PrivacyError):
        mechanisms_for_run(config, tmp_path, 10, new_run=True)  # would replace the label key


def test_open_tail_label_dp_is_reported(tmp_path: Path) -> None:
    config = make_config(defense="labels", topology="open-tail", labels={"label_dp_epsilon": 2.0})

    m = mechanisms_for_run(config, tmp_path, 10, new_run=True)

    y = torch.arange(10)
    assert torch.equal(
        m.label_noiser.noisy_labels(y, sample_ids=y), m.label_noiser.noisy_labels(y, sample_ids=y)
    )
    assert [r["covers"] for r in m.epsilon_after(3)] == [COVERS_LABEL_DP]


def test_gradient_protection_needs_its_own_clip_norm(tmp_path: Path) -> None:
    config = make_config(defense="dp", dp={"sigma": 1.0, "protect_gradients": True})

    with pytest.raises(PrivacyError, match="grad_clip_norm"):
        mechanisms_for_run(config, tmp_path, 10, new_run=True)
    assert not secrets_dir(tmp_path).exists()


def test_unset_sigma_is_derived_from_the_cut_and_recorded(tmp_path: Path) -> None:
    config = make_config(defense="clicooper", model="fmnist-private-d64")

    with pytest.raises(PrivacyError, match="dp.sigma is unset"):
        mechanisms_for_run(config, tmp_path, 10, new_run=True)
    assert not secrets_dir(tmp_path).exists()  # refused before any secret is written
    with pytest.raises(PrivacyError, match="cut shape"):
        resolve_sigma(config)  # the noise-ratio rule needs the cut

    m = mechanisms_for_run(resolve_sigma(config, cut_shape=(64,)), tmp_path, 10, new_run=True, cut_shape=(64,))
    assert m.protector.sigma == 0.125
    assert m.sigma["source"] == "noise-ratio" and m.sigma["cut_dim"] == 64
    assert "σ = 0.125" in m.notice and "back up" in m.notice
    noise = m.record_after(2)["activation_noise"]
    assert noise["sigma_source"] == "noise-ratio" and noise["sigma_derivation"]["noise_to_signal"] == 1.0


def test_explicit_sigma_zero_is_clip_only_and_labelled_infinite(tmp_path: Path) -> None:
    m = mechanisms_for_run(
        make_config(defense="dp", dp={"sigma": 0.0}), tmp_path, 10, new_run=True, cut_shape=(8,)
    )

    record = m.record_after(1)
    assert m.protector.sigma == 0.0 and m.prefetcher is None
    assert record["activation_noise"]["sigma_source"] == "explicit"
    assert "clip only" in record["activation_noise"]["note"]
    assert record["reports"][0]["epsilon"] in ("inf", float("inf"))
    assert "ε = ∞" in m.notice


def test_label_dp_outside_the_open_tail_is_refused() -> None:
    with pytest.raises(ValueError, match="open tail"):
        make_config(defense="labels", topology="u-shape", labels={"label_dp_epsilon": 2.0})


def test_cli_per_mechanism_settings_reach_the_config(tmp_path: Path) -> None:
    from clicooper.cli.common import config_from_options as _config_from_options

    cfg = _config_from_options(
        None, defense="clicooper", topology="open-tail", sigma=0.25,
        sets=["dp.clip_norm=2.0", "dp.delta=1e-6", "labels.expansion=3", "labels.label_dp_epsilon=4.0"],
    )
    assert (cfg.dp.sigma, cfg.dp.clip_norm, cfg.dp.delta) == (0.25, 2.0, 1e-6)
    assert (cfg.labels.expansion, cfg.labels.label_dp_epsilon) == (3, 4.0)
    # gradient protection needs the gradient the DO returns, which only the U-shape has
    cfg = _config_from_options(None, defense="clicooper", sigma=0.25,
                               sets=["dp.protect_gradients=true", "dp.grad_clip_norm=0.01"])
    assert (cfg.dp.protect_gradients, cfg.dp.grad_clip_norm) == (True, 0.01)
    # --set overrides a config file's tables key by key; keys not set keep the file's values
    f = tmp_path / "run.json"
    f.write_text('{"topology": "open-tail", "defense": "clicooper", "dp": {"sigma": 0.5, "delta": 1e-7},'
                 ' "labels": {"expansion": 4}}')
    cfg = _config_from_options(f, sets=["labels.label_dp_epsilon=1.0", "dp.clip_norm=3.0"])
    assert (cfg.dp.sigma, cfg.dp.delta, cfg.dp.clip_norm) == (0.5, 1e-7, 3.0)
    assert (cfg.labels.expansion, cfg.labels.label_dp_epsilon) == (4, 1.0)
    with pytest.raises(ValueError, match="open tail"):
        _config_from_options(None, defense="labels", sets=["labels.label_dp_epsilon=1.0"])


def test_noise_on_an_unmeasured_wide_cut_comes_with_advice(tmp_path: Path) -> None:
    from clicooper.privacy.defaults import cut_advice

    assert cut_advice("fmnist-private-d64w") is None
    assert "--with nopeek:weight=3" in cut_advice("fmnist-resnet-s8") and "frontier-resnet" in cut_advice("fmnist-resnet-s16")
    assert "--preset private-accurate" in cut_advice("fmnist-cnn")
    assert "not measured" in cut_advice("digits-mlp", "digits")
    m = mechanisms_for_run(make_config(defense="clicooper", dp={"sigma": 0.1}), tmp_path / "a", 10, new_run=True)
    assert "--preset private-accurate" in m.notice
    m = mechanisms_for_run(make_config(defense="clicooper", model="fmnist-private-d64", dp={"sigma": 0.1}),
                           tmp_path / "b", 10, new_run=True)
    assert "frontier measured" not in m.notice
