"""Named privacy presets (``--preset``) and the default σ of ``--defense dp/clicooper`` (issue 5).

Config resolution only (no Fashion-MNIST training): cut shapes come from the plan on a stand-in dataset
with Fashion-MNIST's input shape. One tiny run on ``digits`` checks what a run directory records.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from clicooper.config import load_config_file, make_config
from clicooper.config.presets import PRESETS, apply_preset, get_preset, preset_names
from clicooper.core.setup import resolve_run
from clicooper.errors import ConfigError, PrivacyError
from clicooper.privacy.accountant import epsilon, sigma_for_epsilon
from clicooper.privacy.defaults import (
    describe_sigma,
    resolve_sigma,
    sigma_derivation,
    sigma_from_noise_ratio,
)

FMNIST = SimpleNamespace(input_shape=(1, 28, 28), num_classes=10)  # what the blueprint needs of a dataset


def _resolved(c: Any) -> Any:
    """``c`` as a 60,000-sample Fashion-MNIST run records it (batch size, σ from the cut shape)."""
    return resolve_run(c, num_train=60_000, input_shape=FMNIST.input_shape, num_classes=FMNIST.num_classes)[0]


def _cut_shape(c: Any) -> tuple[int, ...]:
    return resolve_run(c, num_train=60_000, input_shape=FMNIST.input_shape, num_classes=FMNIST.num_classes)[1].cut_shape
DOC = Path(__file__).resolve().parents[1] / "docs" / "research" / "privacy-frontier.md"


# ---------------------------------------------------------------------------------------------- presets
def _doc_rows() -> dict[str, list[str]]:
    rows = {}
    for line in DOC.read_text("utf-8").splitlines():
        m = re.match(r"\|\s*`(private-[a-z]+)`[^|]*\|(.*)\|\s*$", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return rows


def test_presets_are_the_frontier_table_rows() -> None:
    rows = _doc_rows()

    assert preset_names() == ["private-light", "private-balanced", "private-strong", "private-accurate",
                              "private-resnet"] == list(rows)
    for name, (model, sigma, rho, *figures) in rows.items():
        p = PRESETS[name]
        assert (p.model, p.sigma, p.clip_norm, p.defense) == (model, float(sigma), 1.0, "clicooper")
        assert "\n" not in p.description
        for fig in [rho, *figures]:  # every measured figure of the row, copied verbatim
            assert fig in p.description, (name, fig)


@pytest.mark.parametrize("name", ["private-light", "private-balanced", "private-strong", "private-accurate",
                                  "private-resnet"])
def test_preset_fills_model_defense_sigma_and_clip(name: str) -> None:
    c = make_config(preset=name)
    p = get_preset(name)

    assert (c.preset, c.model, c.defense) == (name, p.model, "clicooper")
    assert (c.dp.sigma, c.dp.clip_norm, c.dp.sigma_source) == (p.sigma, 1.0, "preset")
    # resolution keeps the preset's σ (no cut or dataset needed)
    r = c.resolved(60_000)
    assert (r.batch_size, r.dp.sigma, r.dp.sigma_source) == (128, p.sigma, "preset")


def test_explicit_fields_override_the_preset() -> None:
    c = make_config(
        preset="private-strong", model="fmnist-cnn", defense="dp", dp={"sigma": 0.3, "clip_norm": 2.0}
    )

    assert (c.model, c.defense, c.dp.sigma, c.dp.clip_norm, c.dp.sigma_source) == (
        "fmnist-cnn",
        "dp",
        0.3,
        2.0,
        "explicit",
    )
    partial = make_config(preset="private-strong", dp={"delta": 1e-6})
    assert (partial.model, partial.dp.sigma, partial.dp.delta) == ("fmnist-private-d16", 0.25, 1e-6)
    # a target ε decides σ: the preset leaves it unset
    target = make_config(preset="private-balanced", dp={"target_epsilon": 100.0})
    assert target.dp.sigma is None and target.model == "fmnist-private-d64r"


def test_unknown_preset_is_a_config_error_listing_the_valid_names() -> None:
    with pytest.raises(ConfigError, match="private-light, private-balanced, private-strong, private-accurate, "
                                          "private-resnet"):
        make_config(preset="private-max")
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("Private-Balanced")


def test_preset_is_recorded_and_a_reload_is_identical(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "private-balanced"\nepochs = 3\n[dp]\ndelta = 1e-6\n', "utf-8")
    c = make_config(**load_config_file(toml))

    dumped = c.model_dump(mode="json")
    noise = next(d for d in dumped["defenses"] if d["kind"] == "keyed-noise")
    assert dumped["preset"] == "private-balanced" and noise["sigma"] == 0.125 and noise["delta"] == 1e-6
    assert "dp" not in dumped and "defense" not in dumped  # config.json holds the specs, not the shorthand
    again = make_config(**json.loads(json.dumps(dumped)))  # config.json → resume
    assert again == c and again.config_hash() == c.config_hash()
    assert apply_preset(dumped) == dumped  # nothing left to fill in


def test_train_help_lists_the_presets_and_cli_options_override_them(tmp_path: Path) -> None:
    from clicooper.cli import app
    from clicooper.cli.common import config_from_options as _config_from_options

    res = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert res.exit_code == 0
    for name in PRESETS:
        assert name in res.output
    assert "--target-epsilon" in res.output and "--set dp.noise_ratio" in res.output

    cfg = _config_from_options(None, preset="private-strong", model="fmnist-private-d64", sigma=None)
    assert (cfg.preset, cfg.model, cfg.dp.sigma) == ("private-strong", "fmnist-private-d64", 0.25)
    toml = tmp_path / "run.toml"
    toml.write_text("[dp]\nclip_norm = 3.0\ndelta = 1e-6\n", "utf-8")
    cfg = _config_from_options(toml, preset="private-light", sigma=0.5, target_epsilon=None)
    assert (cfg.dp.sigma, cfg.dp.clip_norm, cfg.dp.delta, cfg.dp.sigma_source) == (0.5, 3.0, 1e-6, "explicit")

    bad = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), "--preset", "nope"])
    assert bad.exit_code == 2 and "private-balanced" in bad.output and not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------- default σ
def test_noise_ratio_rule_on_a_d64_cut_gives_an_eighth() -> None:
    c = make_config(defense="clicooper", model="fmnist-private-d64")
    assert c.dp.sigma is None and c.dp.noise_ratio == 1.0

    r = _resolved(c)

    assert _cut_shape(c) == (64,)
    assert (r.dp.sigma, r.dp.sigma_source) == (0.125, "noise-ratio")
    d = sigma_derivation(r, cut_shape=(64,))
    assert d["cut_dim"] == 64 and d["noise_to_signal"] == pytest.approx(1.0)
    assert "ρ/√d" in describe_sigma(d)


def test_noise_ratio_rule_on_the_reference_cut() -> None:
    c = make_config(defense="dp", model="fmnist-cnn", dp={"noise_ratio": 1.0})

    r = _resolved(c)

    assert _cut_shape(c) == (32, 14, 14)
    assert r.dp.sigma == pytest.approx(1 / math.sqrt(6272), rel=1e-15)
    half = make_config(defense="dp", dp={"noise_ratio": 0.5})
    assert resolve_sigma(half, cut_shape=(32, 14, 14)).dp.sigma == pytest.approx(0.5 / math.sqrt(6272))


def test_explicit_sigma_wins_and_zero_means_clip_only() -> None:
    c = make_config(defense="clicooper", dp={"sigma": 0.3, "noise_ratio": 4.0})
    assert resolve_sigma(c).dp.sigma == 0.3

    zero = _resolved(make_config(defense="clicooper", dp={"sigma": 0.0}))
    assert (zero.dp.sigma, zero.dp.sigma_source) == (0.0, "explicit")
    d = sigma_derivation(zero, cut_shape=(32, 14, 14))
    assert "clip only" in d["note"] and "ε = ∞" in describe_sigma(d)
    with pytest.raises(ConfigError, match="not both"):
        make_config(defense="clicooper", dp={"sigma": 0.3, "target_epsilon": 10.0})


def test_target_epsilon_wins_over_the_noise_ratio() -> None:
    c = make_config(defense="clicooper", epochs=3, dp={"target_epsilon": 50.0, "noise_ratio": 4.0})

    r = _resolved(c)

    assert r.dp.sigma_source == "target-epsilon"
    assert r.dp.sigma == sigma_for_epsilon(epsilon=50.0, delta=1e-5, epochs=3)
    assert epsilon(sigma=r.dp.sigma, epochs=3, delta=1e-5).epsilon <= 50.0
    d = sigma_derivation(r)
    assert (d["target_epsilon"], d["epochs"], d["covers"]) == (50.0, 3, "per-release, head fixed")


def test_no_sigma_is_derived_without_activation_protection() -> None:
    for defense in ("none", "labels"):
        assert _resolved(make_config(defense=defense)).dp.sigma is None


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_noise_ratio_is_validated(bad: float) -> None:
    with pytest.raises(ConfigError, match="noise_ratio"):
        make_config(defense="clicooper", dp={"noise_ratio": bad})
    with pytest.raises(PrivacyError):
        sigma_from_noise_ratio(noise_ratio=bad, cut_dim=64)
    with pytest.raises(TypeError):
        sigma_from_noise_ratio(1.0, 64)  # type: ignore[misc]  # keyword-only


def test_a_derived_sigma_must_match_the_cut_it_is_used_with() -> None:
    r = _resolved(make_config(defense="clicooper", model="fmnist-private-d64"))
    moved = make_config(**(r.model_dump() | {"model": "fmnist-cnn"}))

    with pytest.raises(ConfigError, match="another cut"):
        sigma_derivation(moved, cut_shape=(32, 14, 14))
    with pytest.raises(ConfigError, match="sigma_source"):
        make_config(dp={"sigma_source": "noise-ratio"})


def test_a_digits_run_records_the_preset_and_the_sigma_derivation(tmp_path: Path) -> None:
    from clicooper.training import train

    run = train(
        {
            "dataset": "digits",
            "model": "digits-mlp",
            "preset": "private-balanced",
            "epochs": 1,
            "train_range": (0, 256),
            "provenance": False,
            "seed": 0,
        },
        out=tmp_path / "run",
    )

    config = json.loads((run.path / "config.json").read_text())
    privacy = json.loads((run.path / "privacy.json").read_text())
    assert (config["preset"], config["model"], [d["kind"] for d in config["defenses"]]) == (
        "private-balanced",
        "digits-mlp",
        ["label-obfuscation", "keyed-noise"],
    )
    noise = config["defenses"][1]
    assert noise["sigma"] == 0.125 and noise["sigma_source"] == "preset"
    noise = privacy["activation_noise"]
    assert noise["sigma"] == 0.125 and noise["sigma_source"] == "preset"
    assert noise["sigma_derivation"]["preset"] == "private-balanced"
    assert noise["sigma_derivation"]["cut_dim"] == math.prod(noise["sigma_derivation"]["cut_shape"])


def test_the_residual_preset_fills_nopeek_unless_given() -> None:
    assert make_config(preset="private-resnet").nopeek == 3.0
    assert make_config(preset="private-light").nopeek == 0.0
    assert make_config(preset="private-resnet", nopeek=0.5).nopeek == 0.5
    assert {"kind": "nopeek", "weight": 3.0} in get_preset("private-resnet").fields()["defenses"]
    # with an explicit defenses list, the list decides which defences run; the preset fills their settings
    listed = make_config(preset="private-resnet", defenses=[{"kind": "keyed-noise"}])
    assert [d.kind for d in listed.defenses] == ["keyed-noise"] and listed.dp.sigma == 0.0505
