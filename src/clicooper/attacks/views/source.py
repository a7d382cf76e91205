"""Reading what views are built from, through :class:`~clicooper.attacks.reader.RunReader` only: the
recorded epochs (``observations/index.json``), one party's received observations and recorded segment, the
leaked head (white-box), and the public noise distribution and ranges from ``config.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from clicooper.attacks.reader import RunReader
from clicooper.attacks.views.content import Architecture, NoiseSpec, Received
from clicooper.errors import AttackError


def _find(obj: Any, *keys: str) -> Any:
    """First value of any of ``keys`` found in a nested config (depth-first), else None."""
    if isinstance(obj, dict):
        for k in keys:
            if k in obj and obj[k] is not None:
                return obj[k]
        for v in obj.values():
            r = _find(v, *keys)
            if r is not None:
                return r
    return None


def noise_from_config(config: dict[str, Any]) -> NoiseSpec | None:
    """The public activation-noise distribution from ``config.json`` (None when protection is off).

    Protection is on when ``defenses`` lists ``keyed-noise`` (σ and the clip norm are its ``sigma`` and
    ``clip_norm``), or, in a ``config.json`` written before ``defenses``, for ``defense`` ``dp`` or
    ``clicooper`` with ``dp.sigma`` and ``dp.clip_norm`` (docs/design/mechanisms.md#activation-protection).
    """
    if isinstance(config.get("defenses"), list):
        noise = next((d for d in config["defenses"] if isinstance(d, dict) and d.get("kind") == "keyed-noise"), None)
        if noise is None:
            return None
        return NoiseSpec(sigma=float(noise.get("sigma") or 0.0), clip=float(noise.get("clip_norm", 1.0)))
    defense = config.get("defense")
    dp = config.get("dp") if isinstance(config.get("dp"), dict) else {}
    if defense is not None:
        if defense not in ("dp", "clicooper"):
            return None
        return NoiseSpec(sigma=float(dp.get("sigma", 0.0)), clip=float(dp.get("clip_norm", 1.0)))
    sigma, clip = _find(config, "sigma", "noise_sigma"), _find(config, "clip_norm", "clip")
    if sigma is None or clip is None:
        return None
    return NoiseSpec(sigma=float(sigma), clip=float(clip))


def parse_range(r: Any, n: int, what: str) -> tuple[int, int]:
    """``(start, stop)`` of ``r``, checked to lie within ``n`` samples."""
    try:
        a, b = int(r[0]), int(r[1])
    except (TypeError, ValueError, IndexError) as e:
        raise AttackError(f"{what} must be a pair (start, stop), got {r!r}") from e
    if not 0 <= a < b <= n:
        raise AttackError(f"{what} {a}:{b} is out of bounds for {n} samples; choose 0 ≤ start < stop ≤ {n}")
    return a, b


def recorded_epochs(reader: RunReader, epochs: str | Sequence[int]) -> list[int]:
    """The recorded epochs ``epochs`` names: ``"last"``, ``"all"`` or a list (each must be recorded)."""
    if not reader.exists("observations/index.json"):
        raise AttackError(
            f"{reader.root} has no observations/index.json: the run was trained without recording "
            "observations; retrain with observations enabled (e.g. `--record-observations`)"
        )
    index = reader.read_json("observations/index.json")
    recorded = [int(e) for e in index.get("epochs", [])]
    if not recorded:
        raise AttackError(f"{reader.root}: observations/index.json lists no epochs; retrain with observations")
    if epochs == "last":
        return [max(recorded)]
    if epochs == "all":
        return sorted(recorded)
    out = [int(e) for e in epochs]  # type: ignore[union-attr]
    missing = sorted(set(out) - set(recorded))
    if missing:
        raise AttackError(f"epochs {missing} were not recorded (recorded: {recorded}); choose recorded epochs")
    return out


def load_received(reader: RunReader, party: str, epoch: int) -> tuple[Received, torch.Tensor]:
    """What ``party`` received at ``epoch``, and the evaluator's sample ids of those rows."""
    obs = reader.read_tensors(f"observations/{party}/epoch_{epoch}.safetensors")
    for key in ("sample_ids", "activations"):
        if key not in obs:
            raise AttackError(f"observations/{party}/epoch_{epoch}.safetensors lacks {key!r}; re-record it")
    if "gradients" not in obs and "labels" not in obs:  # only the open tail's last trainer receives no gradient
        raise AttackError(f"observations/{party}/epoch_{epoch}.safetensors lacks 'gradients'; re-record it")
    grads = obs.get("gradients")
    rec = Received(party=party, epoch=epoch, activations=obs["activations"].float(),
                   gradients=None if grads is None else grads.float(), labels=obs.get("labels"))
    return rec, obs["sample_ids"].long()


def load_segment(reader: RunReader, arch: Architecture, party: str, epoch: int) -> tuple[nn.Module, int]:
    """``party``'s own segment as recorded at ``epoch`` (in eval mode), and its position."""
    pos = int(party[1:])
    if not 1 <= pos <= len(arch.segments):
        raise AttackError(f"party {party} is not a trainer of this run (T1..T{len(arch.segments)})")
    seg = arch.segments[pos - 1]()
    state = reader.read_tensors(f"observations/{party}/segment_epoch_{epoch}.safetensors")
    try:
        seg.load_state_dict(state)
    except RuntimeError as e:
        raise AttackError(f"{party}'s recorded segment does not fit the run's architecture: {e}") from e
    return seg.eval(), pos


def load_head(reader: RunReader, arch: Architecture) -> nn.Module:
    """The DO's leaked head (``model/head.safetensors``) in the public head architecture, in eval mode."""
    head = arch.head()
    try:
        head.load_state_dict(reader.read_tensors("model/head.safetensors"))
    except RuntimeError as e:
        raise AttackError(f"model/head.safetensors does not fit the head architecture: {e}") from e
    return head.eval()
