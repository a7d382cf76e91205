"""Named privacy presets for ``clicooper train --preset NAME`` (and ``preset = "NAME"`` in a config file).

Each preset is a point of the measured frontier in ``docs/research/privacy-frontier.md`` ("Recommended ``--defense
clicooper`` defaults and presets"): a private model whose cut is L2-normalised, so with ``clip_norm = 1``
σ is the noise std per unit of signal and ρ = σ·√d is the noise/signal ratio. The figures in each
description are copied from that table (Fashion-MNIST, rows 0–15,000, 3 epochs, one seed; SSIM of the
known-plaintext (KP, 100 / 1,000 pairs) and white-box (WB) inversions by T1, class floor 0.357; ε per-release,
head fixed, δ = 1e-5) — they are what was measured at that budget, not guarantees.

A preset is a model and a list of defence specs (:mod:`clicooper.config.defenses`): keyed noise σ and clip
norm, label obfuscation, and NoPeek where its point was measured with it. Explicit fields win over a preset's:
a preset only fills ``model`` and the defences' settings the user gave no value for (σ also stays unset when a
target ε is given, so the target decides σ). With the older fields (``defense``, ``dp``, ``nopeek``) a given
``defense`` decides which of keyed noise and label obfuscation run; with an explicit ``defenses`` list the list
decides which defences run and the preset fills only their unset settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clicooper.config.defenses import migrate
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

    def defenses(self) -> list[dict[str, Any]]:
        """This preset's defence specs (dict forms; ``sigma_source`` "preset")."""
        specs: list[dict[str, Any]] = [
            {"kind": "keyed-noise", "sigma": self.sigma, "sigma_source": "preset", "clip_norm": self.clip_norm}]
        if self.defense == "clicooper":
            specs.append({"kind": "label-obfuscation"})
        if self.nopeek:
            specs.append({"kind": "nopeek", "weight": self.nopeek})
        return specs

    def fields(self) -> dict[str, Any]:
        """The config fields this preset sets (before explicit fields override them)."""
        return {"model": self.model, "defenses": self.defenses()}


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
                "residual trainers that add accuracy: fmnist-resnet-s8 (8×7×7 unit-norm cut), σ 0.0505 "
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


def apply_preset(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` (raw config fields) with ``model`` and ``defenses`` filled in from its ``preset`` where not
    given, and the older defence fields turned into ``defenses`` (:func:`clicooper.config.defenses.migrate`)."""
    name = fields.get("preset")
    if name is None:
        return migrate(fields)
    preset = get_preset(name)
    out = migrate(fields, preset.defenses())
    if out.get("model") is None:
        out["model"] = preset.model
    return out
