"""Named privacy presets for ``clicooper train --preset NAME`` (and ``preset = "NAME"`` in a config file).

Each preset is a point of the measured frontier in ``docs/research/privacy-frontier.md`` ("Recommended ``--defense
clicooper`` defaults and presets"): a private model whose cut is L2-normalised, so with ``clip_norm = 1``
σ is the noise std per unit of signal and ρ = σ·√d is the noise/signal ratio. The figures in each
description are copied from that table (Fashion-MNIST, rows 0–15,000, 3 epochs, one seed; SSIM of the
known-plaintext (KP, 100 / 1,000 pairs) and white-box (WB) inversions by T1, class floor 0.357; ε per-release,
head fixed, δ = 1e-5) — they are what was measured at that budget, not guarantees.

Explicit fields win over a preset's: a preset only fills ``model``, ``defense``, ``dp.sigma``,
``dp.clip_norm`` (and ``nopeek`` where its point was measured with NoPeek) where the user gave no value (``dp.sigma`` also stays unset when ``dp.target_epsilon``
is given, so the target decides σ).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clicooper.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    """One named configuration of the DO's privacy (all ``defense = "clicooper"``)."""

    name: str
    model: str
    sigma: float
    clip_norm: float
    description: str
    defense: str = "clicooper"
    nopeek: float = 0.0  # NoPeek's α (RunConfig.nopeek) where the point was measured with it

    def fields(self) -> dict[str, Any]:
        """The config fields this preset sets (before explicit fields override them)."""
        return {
            "model": self.model,
            "defense": self.defense,
            "dp": {"sigma": self.sigma, "clip_norm": self.clip_norm},
        } | ({"nopeek": self.nopeek} if self.nopeek else {})


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="private-light",
            model="fmnist-private-d64",
            sigma=0.0625,
            clip_norm=1.0,
            description=(
                "realistic attacker only: fmnist-private-d64, σ 0.0625 (ρ 0.5); measured acc 0.8190, "
                "KP-100 0.384, KP-1000 0.416, WB 0.432, DO share 0.072, DO-alone 0.8425, ε 1,801 (3 ep.)"
            ),
        ),
        Preset(
            name="private-balanced",
            model="fmnist-private-d64r",
            sigma=0.125,
            clip_norm=1.0,
            description=(
                "recommended point: fmnist-private-d64r (the d64 cut, trainers rescale it by √d), σ 0.125 "
                "(ρ 1); measured acc 0.8324, KP-100 0.321, KP-1000 0.372, WB 0.388, DO share 0.072, "
                "DO-alone 0.8389, ε 516 (3 ep.)"
            ),
        ),
        Preset(
            name="private-strong",
            model="fmnist-private-d16",
            sigma=0.25,
            clip_norm=1.0,
            description=(
                "fmnist-private-d16, σ 0.25 (ρ 1); measured acc 0.7958, KP-100 0.285, KP-1000 0.319, "
                "WB 0.327, DO share 0.050, DO-alone 0.8213, ε 154 (3 ep.)"
            ),
        ),
        Preset(
            name="private-accurate",
            model="fmnist-private-d64w",
            sigma=0.125,
            clip_norm=1.0,
            description=(
                "more accuracy for more DO compute: fmnist-private-d64w (32-channel head), σ 0.125 (ρ 1); "
                "measured at 6 epochs acc 0.8690, KP-100 0.302, KP-1000 0.359, WB 0.379, DO share 0.132, "
                "DO-alone 0.8728, ε 935 (6 ep.)"
            ),
        ),
        Preset(
            name="private-resnet",
            model="fmnist-resnet-s8",
            sigma=0.0505,
            clip_norm=1.0,
            nopeek=3.0,
            description=(
                "residual trainers that add accuracy (issue 14): fmnist-resnet-s8 (8×7×7 unit-norm cut), σ 0.0505 "
                "(ρ 1), NoPeek α 3; measured over 3 seeds at 3 epochs acc 0.7765 (undefended fmnist-resnet "
                "0.8437), KP-100 0.319, KP-1000 0.319, WB 0.328 (lower bounds: not converged), DO share 0.026, "
                "DO-alone 0.7334, ε 2,700 (3 ep.)"
            ),
        ),
    )
}


def preset_names() -> list[str]:
    """The valid preset names, in the order of the frontier table."""
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called ``name``; :class:`ConfigError` naming the valid ones otherwise."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def presets_help() -> str:
    """One line per preset (for ``clicooper train --help``)."""
    return "\n".join(f"{p.name}: {p.description}" for p in PRESETS.values())


def _given(value: Any) -> bool:
    return value is not None


def apply_preset(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` (raw config fields, with ``preset``) with the preset's values filled in where not given.

    ``dp`` may be a dict or a ``DPConfig``; only the fields the user set count as given. ``dp.sigma`` taken
    from the preset is marked ``dp.sigma_source = "preset"``.
    """
    name = fields.get("preset")
    if name is None:
        return fields
    preset = get_preset(name)
    out = dict(fields)
    for key in ("model", "defense"):
        if not _given(out.get(key)):
            out[key] = getattr(preset, key)
    if preset.nopeek and not _given(out.get("nopeek")):
        out["nopeek"] = preset.nopeek
    dp_in = out.get("dp")
    if dp_in is None:
        dp: dict[str, Any] = {}
    elif isinstance(dp_in, dict):
        dp = dict(dp_in)
    elif hasattr(dp_in, "model_fields_set"):  # a DPConfig: what the user set explicitly
        dp = {k: getattr(dp_in, k) for k in dp_in.model_fields_set}
    else:
        return out  # not a mapping: let validation report it
    if not _given(dp.get("sigma")) and not _given(dp.get("target_epsilon")):
        dp["sigma"] = preset.sigma
        dp["sigma_source"] = "preset"
    if not _given(dp.get("clip_norm")):
        dp["clip_norm"] = preset.clip_norm
    out["dp"] = dp
    return out
