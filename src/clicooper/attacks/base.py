"""One interface for every attack, and a registry that later attacks (watermark removal, ledger forgery)
join with ``@register("name")``.

An attack is a named object with a validated config and one method, :meth:`Attack.run`, that takes the
views of what the attacker may read (:mod:`clicooper.attacks.views`) and returns an :class:`AttackResult`:
plain numbers, grouped by knowledge level, each group carrying the floor (or chance level) its headline
figure must beat. Whether a figure is *informative* — the undefended run beats its floor, docs/design/metrics.md#informative-figures —
is decided by the report with :func:`informative`, because it compares two runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import torch

from clicooper.errors import AttackError

Number = float | int


@dataclass
class LevelResult:
    """The result of one attack at one knowledge level (e.g. ``"zero-knowledge"``, ``"known-10"``).

    ``score`` is the headline figure (the name of the metric is ``primary``); ``floor`` is what the figure
    must beat for the attack to count (chance accuracy, AUC 0.5, the SSIM of the auxiliary mean image …),
    and ``higher_is_better`` its direction. ``metrics`` holds every other number (JSON-serialisable).
    """

    primary: str
    score: float
    floor: float
    higher_is_better: bool = True
    metrics: dict[str, Any] = field(default_factory=dict)
    convergence: dict[str, Any] | None = None  # :func:`convergence`; None: no step budget (e.g. k-means)

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {
            "primary": self.primary,
            "score": _clean(self.score),
            "floor": _clean(self.floor),
            "higher_is_better": self.higher_is_better,
            "beats_floor": beats_floor(self),
            "metrics": _clean(self.metrics),
            "convergence": _clean(self.convergence),
            "converged": None if self.convergence is None else bool(self.convergence["converged"]),
        }


@dataclass
class AttackResult:
    """Numbers of one attack run: per-knowledge-level results plus run-wide info.

    ``artifacts`` holds tensors for the report (e.g. an inversion grid); they are not part of the JSON and
    the runner stores them as safetensors next to it.
    """

    attack: str
    levels: dict[str, LevelResult]
    info: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (artifacts excluded)."""
        return {
            "attack": self.attack,
            "info": _clean(self.info),
            "levels": {k: v.to_json() for k, v in self.levels.items()},
        }


#: Fractions of an attack's step budget at which its figure is read (issue 14: ¼, ½ and the full budget).
BUDGET_FRACTIONS: tuple[float, ...] = (0.25, 0.5, 1.0)
#: A figure counts as converged when the last doubling of the budget (½ → 1) changed it by less than this.
CONVERGENCE_TOL = 0.01


def budget_points(steps: int) -> list[int]:
    """The step counts (at least 1 each) of :data:`BUDGET_FRACTIONS` of a ``steps`` budget."""
    return [max(1, round(steps * f)) for f in BUDGET_FRACTIONS]


def convergence(values: list[float], steps: list[int] | None = None, *, what: str = "steps",
                tol: float = CONVERGENCE_TOL, training: dict[str, Any] | None = None) -> dict[str, Any]:
    """The convergence record of a figure read at ¼, ½ and the full budget (``values`` in that order).

    ``converged`` is whether the last doubling (½ → full) changed the figure by less than ``tol``; when it
    did not, the full-budget figure is a *lower bound* of what the attack reaches (or, if it fell, an
    unstable one) and the report says so. ``what`` names the budget (``"steps"``, ``"rounds"`` …).

    ``training`` is the attack's own training record (:func:`clicooper.attacks.adversarial.training_record`),
    where it keeps one. A figure that stopped moving only because the attack never started training is not
    converged: with a record, the figure converged only if the attack also fitted its own auxiliary data. An
    attack whose features carry the simulated public noise may be unable to fit them because the noise leaves
    nothing to decode; there it suffices that it learned at least the mean image on them (its inverse network's
    MSE at most the mean image's) and that its own error settled (the last doubling moved it by less than
    :data:`TRAINING_TOL` of itself).
    """
    if len(values) != len(BUDGET_FRACTIONS):
        raise AttackError(f"convergence needs {len(BUDGET_FRACTIONS)} values (¼, ½, full budget), got {len(values)}")
    change = abs(float(values[-1]) - float(values[-2]))
    stable = bool(math.isfinite(change) and change < tol)
    out: dict[str, Any] = {"fractions": list(BUDGET_FRACTIONS), "budget": steps, "unit": what,
                           "values": [float(v) for v in values], "last_doubling": change, "tol": tol,
                           "converged": stable}
    if training is not None:
        trained, why = attack_trained(training)
        out.update(figure_stable=stable, trained=trained, converged=stable and trained)
        if not trained:
            out["not_trained_why"] = why
    return out


#: The attack's own error (its inverse network's MSE on its auxiliary data) settled when the last doubling of
#: the steps moved it by less than this share of itself.
TRAINING_TOL = 0.05


def attack_trained(training: dict[str, Any]) -> tuple[bool, str]:
    """Whether an attack's own training record shows it trained (see :func:`convergence`), and if not, why."""
    fits = [float(f) for f in training.get("aux_mse", [])]
    mean = float(training.get("mean_image_mse", math.nan))
    if training.get("fitted"):
        return True, ""
    if not fits or not all(math.isfinite(f) for f in fits) or not math.isfinite(mean):
        return False, "its training record has no finite error on its own auxiliary data"
    if fits[-1] > mean:
        return False, (f"it has not learned even the mean image on its own auxiliary data (MSE {fits[-1]:.4f} "
                       f"against the mean image's {mean:.4f})")
    if not training.get("noise_simulated"):
        return False, (f"it did not fit its own auxiliary data, with no noise in the way (MSE {fits[-1]:.4f} "
                       f"against the mean image's {mean:.4f})")
    moved = abs(fits[-1] - fits[-2]) / max(fits[-1], 1e-12) if len(fits) >= 2 else math.inf
    if not moved < TRAINING_TOL:
        return False, (f"its error on its own auxiliary data was still falling (MSE {fits[-2]:.4f} → {fits[-1]:.4f} "
                       "over the last doubling)")
    return True, ""


def converged(level: LevelResult | dict[str, Any]) -> bool | None:
    """Whether a level's figure converged (None: the attack has no step budget to check)."""
    conv = level.convergence if isinstance(level, LevelResult) else level.get("convergence")
    return None if conv is None else bool(conv.get("converged"))


def beats_floor(level: LevelResult) -> bool:
    """Whether the level's headline figure is strictly better than its floor."""
    if not (math.isfinite(level.score) and math.isfinite(level.floor)):
        return False
    return level.score > level.floor if level.higher_is_better else level.score < level.floor


def informative(undefended: LevelResult | dict[str, Any]) -> bool:
    """docs/design/metrics.md#informative-figures: a defended figure counts only if the *same* attack beats its floor on the undefended run.

    Pass the undefended run's level result (object or its JSON form).
    """
    if isinstance(undefended, dict):
        undefended = LevelResult(
            primary=undefended["primary"],
            score=float(undefended["score"]),
            floor=float(undefended["floor"]),
            higher_is_better=bool(undefended.get("higher_is_better", True)),
        )
    return beats_floor(undefended)


@runtime_checkable
class Attack(Protocol):
    """An attack: a name, a validated config, and ``run``.

    Implementations are dataclass-configured classes; ``run`` must only use what the views hold and keep
    ground truth (the evaluator's) out of the attack itself — it is passed to metric functions only.
    """

    name: ClassVar[str]

    @property
    def config(self) -> Any:
        """The attack's typed, validated config (a dataclass)."""
        ...

    def run(self, views: Any) -> AttackResult:
        """Run the attack on the given views and return its numbers."""
        ...


A = TypeVar("A")
_REGISTRY: dict[str, Callable[..., Any]] = {}
#: entry-point group of third-party attacks: name = the attack's name, value = its class (an :class:`Attack`)
ENTRY_POINT_GROUP = "clicooper.attacks"
_PLUGINS: list[str] = []  # names registered from entry points, in discovery order
_plugins_loaded = False


def _load_plugins() -> None:
    """Register the attacks installed packages add (``clicooper.attacks`` entry points), once per process.
    A built-in name cannot be taken over; a package that fails to import is refused with one line."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name in _REGISTRY:
            raise AttackError(f"the attack {ep.name!r} of entry point {ep.value} clashes with a built-in attack; "
                              "rename it in that package")
        try:
            cls = ep.load()
        except Exception as e:  # a broken third-party package: one clear line, not its traceback
            raise AttackError(f"attack {ep.name!r} comes from {ep.value}, which failed to load ({e}); reinstall "
                              "or uninstall that package") from e
        if not callable(getattr(cls, "run", None)):
            raise AttackError(f"entry point {ep.name} = {ep.value} is not an attack (it has no run method)")
        _REGISTRY[ep.name] = cls
        _PLUGINS.append(ep.name)


def plugin_names() -> list[str]:
    """Names of the attacks installed packages add through entry points, sorted."""
    _load_plugins()
    return list(_PLUGINS)


def register(name: str) -> Callable[[A], A]:
    """Class decorator: make an attack available as ``get(name)``. Names are unique."""

    def deco(cls: A) -> A:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise AttackError(f"attack name {name!r} is already registered; pick another name")
        _REGISTRY[name] = cls  # type: ignore[assignment]
        return cls

    return deco


def get(name: str) -> Callable[..., Any]:
    """The attack class registered under ``name`` (call it with config keywords to build an attack)."""
    _load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError as e:
        raise AttackError(f"unknown attack {name!r}; choose one of {', '.join(names())}") from e


def names() -> list[str]:
    """Registered attack names (the built-ins and installed packages' ones), sorted."""
    _load_plugins()
    return sorted(_REGISTRY)


def _clean(x: Any) -> Any:
    """Convert tensors / numpy scalars to plain Python for JSON; NaN and inf become None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _clean(x.tolist())
    if hasattr(x, "item") and not isinstance(x, str | bytes):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def require(cond: bool, message: str) -> None:
    """Raise :class:`AttackError` with ``message`` (which should say what to do) unless ``cond`` holds."""
    if not cond:
        raise AttackError(message)
