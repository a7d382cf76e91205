"""The DO's defences as typed specs: ``RunConfig.defenses`` is a list of them, told apart by ``kind``.

Each spec is a small pydantic model with its own field checks and, in :meth:`DefenseSpec.problem`, its own
conflicts with the rest of the run (the pairwise clash rules live with the defence that has them, not in
``RunConfig``). A subclass registers itself under its ``kind`` when it is defined, so the parsing of a
``defenses`` list is a discriminated union over every spec that exists: the built-ins below and any spec a
third-party package brings through the ``clicooper.defenses`` entry-point group (loaded when its ``kind``
is first met). What a defence *does* at the DO is its mechanism (:mod:`clicooper.privacy.defenses`), one
class per kind.

The old top-level fields (``defense``, ``dp``, ``labels``, ``nopeek``, ``adversarial_decoder``,
``head_mode``) stay accepted as shorthand: :func:`from_shorthand` turns them into specs, so every
``config.json`` written before ``defenses`` existed still loads, resumes and trains the same weights.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# ``problem(config)`` receives the whole RunConfig (clicooper.config.run imports this module, not the reverse)
RunConfig = Any

#: entry-point group of third-party defences: name = the spec's ``kind``, value = the mechanism class
#: (which names its spec as ``spec``); the package's own ``kind`` must not clash with a built-in one
ENTRY_POINT_GROUP = "clicooper.defenses"

_SPECS: dict[str, type[DefenseSpec]] = {}


class DefenseSpec(BaseModel):
    """One defence of the DO: ``kind`` and its settings (see the module doc).

    Subclasses declare ``kind: Literal["name"] = "name"``, may set ``order`` (where the DO applies it among
    the run's defences: lower first; built-ins use 10–60, a new defence defaults to 100) and override
    :meth:`problem` for conflicts with the rest of the run.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    order: ClassVar[int] = 100
    #: True: releases something under a DP guarantee (ε in privacy.json); False: an empirical defence
    under_dp: ClassVar[bool] = False

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        field = cls.model_fields.get("kind")
        kind = None if field is None else field.default
        if not isinstance(kind, str) or not kind:
            raise TypeError(f"{cls.__name__}: a defence spec needs kind: Literal['name'] = 'name'")
        if kind in _SPECS and _SPECS[kind].__qualname__ != cls.__qualname__:
            raise TypeError(f"defence kind {kind!r} is already registered by {_SPECS[kind].__qualname__}")
        _SPECS[kind] = cls

    def problem(self, config: RunConfig) -> str | None:
        """What is wrong with this defence in ``config`` (one line saying what to do), or None."""
        return None


def _plugin_kinds() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def spec_type(kind: str) -> type[DefenseSpec]:
    """The spec class of ``kind``: a built-in or one an installed package registers (entry points)."""
    if kind not in _SPECS:
        ep = _plugin_kinds().get(kind)
        if ep is not None:
            try:
                ep.load()  # importing the plug-in's module defines (and so registers) its spec
            except Exception as e:  # a broken third-party package: one clear line, not its traceback
                raise ValueError(f"defence {kind!r} comes from {ep.value}, which failed to load ({e}); "
                                 "reinstall or uninstall that package") from e
        if kind not in _SPECS:
            raise ValueError(f"unknown kind {kind!r} of defence; choose one of {', '.join(defense_kinds())}")
    return _SPECS[kind]


def defense_kinds() -> list[str]:
    """Every known ``kind``: the built-ins and those installed packages register, sorted."""
    return sorted(set(_SPECS) | set(_plugin_kinds()))


def parse_defense(item: Any, where: str = "defenses") -> DefenseSpec:
    """One spec from its dict form (or a spec), checked by its own class; ValueError names what is wrong."""
    if isinstance(item, DefenseSpec):
        return item
    if not isinstance(item, Mapping) or not isinstance(item.get("kind"), str):
        raise ValueError(f"{where}: each defence is a table with a kind (one of {', '.join(defense_kinds())})")
    cls = spec_type(item["kind"])
    try:
        return cls.model_validate(dict(item))
    except ValidationError as e:
        msgs = [("." .join(str(x) for x in err["loc"]) + ": " if err["loc"] else "")
                + str(err["msg"]).removeprefix("Value error, ") for err in e.errors()]
        raise ValueError(f"{where} ({item['kind']}): " + "; ".join(msgs)) from None


#: names a ``defenses`` entry may use for the kinds they stand for (the older ``defense`` values)
ALIASES: dict[str, tuple[str, ...]] = {"none": (), "dp": ("keyed-noise",), "labels": ("label-obfuscation",),
                                       "clicooper": ("label-obfuscation", "keyed-noise")}


def expand_aliases(items: Any) -> Any:
    """A ``defenses`` list with its shorthand entries spelled out: a bare name is ``{"kind": name}``, and
    ``dp`` / ``labels`` / ``clicooper`` / ``none`` stand for the kinds they always meant (``{"kind": "dp",
    "sigma": 0.5}`` is keyed noise with σ 0.5)."""
    if not isinstance(items, list | tuple):
        return items
    out: list[Any] = []
    for it in items:
        if isinstance(it, str):
            out += [{"kind": k} for k in ALIASES.get(it, (it,))]
        elif isinstance(it, Mapping) and it.get("kind") in ALIASES:
            kinds, settings = ALIASES[it["kind"]], {k: v for k, v in it.items() if k != "kind"}
            if settings and len(kinds) != 1:
                raise ValueError(f"{it['kind']} takes no settings here; give each of its defences "
                                 f"({', '.join(kinds) or 'none'}) as its own entry")
            out += [{"kind": k, **settings} for k in kinds]
        else:
            out.append(it)
    return out


def parse_defenses(items: Any) -> list[DefenseSpec]:
    """The specs of a ``defenses`` list, each kind at most once, in the order the DO applies them."""
    items = expand_aliases(items)
    if not isinstance(items, list | tuple):
        raise ValueError("defenses must be a list of tables, each with a kind")
    specs = [parse_defense(x, f"defenses[{i}]") for i, x in enumerate(items)]
    kinds = [s.kind for s in specs]
    dup = sorted({k for k in kinds if kinds.count(k) > 1})
    if dup:
        raise ValueError(f"defenses lists {', '.join(dup)} more than once; keep one of each kind")
    return sorted(specs, key=lambda s: type(s).order)  # stable: equal orders keep the user's order


# ---------------------------------------------------------------------------------------------- built-ins
SigmaSource = Literal["explicit", "target-epsilon", "preset", "noise-ratio"]


def mark_explicit_sigma(data: Any) -> Any:
    """Raw σ fields with ``sigma_source = "explicit"`` filled in where ``sigma`` is given and its source is
    not (a ``mode="before"`` validator of every table that holds σ: :class:`KeyedNoise` and the older
    ``dp`` table, so both record the same source)."""
    if isinstance(data, dict) and data.get("sigma") is not None and data.get("sigma_source") is None:
        data = {**data, "sigma_source": "explicit"}
    return data


def check_sigma_choice(sigma: float | None, sigma_source: str | None, target_epsilon: float | None) -> None:
    """Refuse a σ whose recorded source contradicts the fields given (ValueError saying what to do); one
    check for :class:`KeyedNoise` and the older ``dp`` table, so both refuse with the same words."""
    if sigma is None and sigma_source is not None:
        raise ValueError("dp.sigma_source is filled in when σ is chosen; leave it out (or give dp.sigma)")
    if sigma_source == "explicit" and target_epsilon is not None:
        raise ValueError("give dp.sigma or dp.target_epsilon, not both (the target ε chooses σ); drop one of them")
    if sigma_source == "target-epsilon" and target_epsilon is None:
        raise ValueError("dp.sigma_source is 'target-epsilon' but dp.target_epsilon is not set")


class KeyedNoise(DefenseSpec):
    """Activation protection at the cut (docs/design/mechanisms.md#activation-protection): each release clipped per sample to ``clip_norm`` and
    noised with keyed Gaussian noise of std ``sigma · clip_norm`` (the DO's secret, never the seed).

    σ left unset is chosen when the run starts (:mod:`clicooper.privacy.defaults`): from ``target_epsilon``
    if given, else ``σ = noise_ratio / √d`` for a cut of ``d`` values per sample; ``sigma_source`` records
    how σ was chosen (filled in; ``"explicit"`` when ``sigma`` is given)."""

    kind: Literal["keyed-noise"] = "keyed-noise"
    order: ClassVar[int] = 30
    under_dp: ClassVar[bool] = True

    sigma: float | None = Field(None, ge=0.0, allow_inf_nan=False, description="noise std / clip norm (σ); "
                                "0 = clip only (ε = ∞); unset: derived (target_epsilon or noise_ratio)")
    noise_ratio: float = Field(1.0, gt=0.0, allow_inf_nan=False, description="ρ = noise norm / clipped signal "
                               "norm; with σ unset, σ = ρ/√d (d = values per sample at the cut)")
    target_epsilon: float | None = Field(None, gt=0.0, allow_inf_nan=False, description="with σ unset: the "
                                         "smallest σ whose per-release ε (head fixed) after `epochs` is at most this")
    max_sigma: float = Field(1000.0, gt=0.0, allow_inf_nan=False,
                             description="the largest σ that target_epsilon may choose; a target that needs more is refused")
    sigma_source: SigmaSource | None = Field(None, description="how σ was chosen (filled in, not an input)")
    clip_norm: float = Field(1.0, gt=0.0, allow_inf_nan=False, description="per-sample L2 clip norm S of the head output")
    delta: float = Field(1e-5, gt=0.0, lt=1.0, description="δ of every (ε, δ) report")
    accountant: Literal["pld", "rdp"] = "pld"

    _mark_explicit = model_validator(mode="before")(mark_explicit_sigma)

    @model_validator(mode="after")
    def _sigma_choice(self) -> KeyedNoise:
        check_sigma_choice(self.sigma, self.sigma_source, self.target_epsilon)
        return self


class GradientProtection(DefenseSpec):
    """The gradient the DO sends back to the last trainer (U-shape) clipped per sample to ``clip_norm`` and
    noised with the keyed-noise defence's σ (its rows are about 1/batch_size the scale of a per-sample
    gradient, hence a clip norm of its own)."""

    kind: Literal["gradient-protection"] = "gradient-protection"
    order: ClassVar[int] = 35

    clip_norm: float | None = Field(None, gt=0.0, allow_inf_nan=False,
                                    description="per-sample clip norm of the returned gradient (required)")

    def problem(self, config: RunConfig) -> str | None:
        if config.defense_of("keyed-noise") is None:
            return ("gradient-protection noises with the keyed-noise defence's σ; add keyed-noise "
                    "(--defense dp or clicooper) or drop it")
        if config.topology == "open-tail":
            return ("gradient-protection noises the gradient the DO returns to the last trainer, and in the open "
                    "tail the DO returns none (the last trainer computes the loss); use topology u-shape or drop it")
        return None


class LabelObfuscation(DefenseSpec):
    """Secret label obfuscation (docs/design/mechanisms.md#label-obfuscation): a keyed permutation of ``expansion`` sub-classes per class."""

    kind: Literal["label-obfuscation"] = "label-obfuscation"
    order: ClassVar[int] = 20

    expansion: int = Field(2, ge=1, le=64, description="sub-classes per class (m)")


class RandomizedResponse(DefenseSpec):
    """Label DP for the open tail: randomized response with a prior, one draw per sample (pure ε)."""

    kind: Literal["randomized-response"] = "randomized-response"
    order: ClassVar[int] = 10
    under_dp: ClassVar[bool] = True

    epsilon: float = Field(..., gt=0.0, allow_inf_nan=False, description="RR-with-prior ε for the open tail")

    def problem(self, config: RunConfig) -> str | None:
        if config.topology != "open-tail":
            return ("labels.label_dp_epsilon (randomized response) protects the labels sent to the last trainer, "
                    "which only happens in the open tail; use --topology open-tail or drop labels.label_dp_epsilon "
                    "(in the U-shape the labels never leave the DO)")
        return None


class HeadDPSGD(DefenseSpec):
    """DP-SGD on the DO's head (privacy/dpsgd.py): per-sample clip ``max_grad_norm``, noise multiplier."""

    kind: Literal["head-dpsgd"] = "head-dpsgd"
    order: ClassVar[int] = 40

    noise_multiplier: float = Field(..., gt=0.0, allow_inf_nan=False, description="noise std / max_grad_norm")
    max_grad_norm: float = Field(1.0, gt=0.0, allow_inf_nan=False, description="per-sample gradient clip C")

    def problem(self, config: RunConfig) -> str | None:
        if config.defense_of("keyed-noise") is None:
            return ("dp.head_dpsgd composes DP-SGD on the head with the activation releases; it needs "
                    "--defense dp or clicooper (the releases of an unprotected head would void it)")
        if config.overlap_steps:
            return ("overlap_steps is not combined with dp.head_dpsgd (its checks and records assume one step "
                    "in flight); drop overlap_steps or dp.head_dpsgd")
        return None


def _trains_head_beside_t1(name: str, config: RunConfig) -> str | None:
    if config.overlap_steps or config.defense_of("head-dpsgd") is not None:
        return (f"{name} trains the head on its own term beside T1's gradient; it is not combined with "
                "overlap_steps or dp.head_dpsgd: drop one of them")
    return None


class NoPeek(DefenseSpec):
    """NoPeek (Vepakomma et al. 2020; privacy/decorrelation.py): ``weight`` α of the distance correlation
    between each micro-batch's inputs and the DO head's output, added to the head's loss. Empirical: no ε."""

    kind: Literal["nopeek"] = "nopeek"
    order: ClassVar[int] = 50

    weight: float = Field(..., gt=0.0, le=100.0, allow_inf_nan=False, description="α of the distance correlation")

    def problem(self, config: RunConfig) -> str | None:
        return _trains_head_beside_t1("nopeek", config)


class AdversarialDecoder(DefenseSpec):
    """ResSFL-style adversarial training (Li et al. 2022; privacy/adversarial.py): ``weight`` λ of
    −MSE(decoder(release), input) in the head's loss, against an MLP decoder the DO trains on its own
    releases. Empirical: no ε. The decoder and its optimizer are checkpointed with the run."""

    kind: Literal["adversarial-decoder"] = "adversarial-decoder"
    order: ClassVar[int] = 60

    weight: float = Field(..., gt=0.0, le=100.0, allow_inf_nan=False, description="λ of the decoder's term")
    hidden: int = Field(512, ge=1, le=65536, description="the decoder's hidden width")
    lr: float = Field(1e-3, gt=0.0, allow_inf_nan=False, description="the decoder's Adam learning rate")

    def problem(self, config: RunConfig) -> str | None:
        return _trains_head_beside_t1("adversarial_decoder", config)


class SecretRandomHead(DefenseSpec):
    """The DO's head drawn from its secret key and never trained (privacy/random_head.py); U-shape only."""

    kind: Literal["secret-random-head"] = "secret-random-head"
    order: ClassVar[int] = 25

    def problem(self, config: RunConfig) -> str | None:
        clash = [name for name, on in (("open-tail", config.topology == "open-tail"),
                                       ("nopeek", config.defense_of("nopeek") is not None),
                                       ("adversarial_decoder", config.defense_of("adversarial-decoder") is not None),
                                       ("dp.head_dpsgd", config.defense_of("head-dpsgd") is not None)) if on]
        if clash:
            return (f"head_mode secret-random (a frozen head) is not combined with {', '.join(clash)} "
                    "(nothing there would train, or it trains the head); use head_mode learned")
        return None


# ---------------------------------------------------------------------------------------------- shorthand
#: the old top-level fields that :func:`from_shorthand` turns into specs
SHORTHAND_FIELDS = ("defense", "dp", "labels", "nopeek", "adversarial_decoder", "head_mode")
_DP_NOISE_KEYS = ("sigma", "noise_ratio", "target_epsilon", "max_sigma", "sigma_source", "clip_norm", "delta",
                  "accountant")
_DP_KEYS = (*_DP_NOISE_KEYS, "protect_gradients", "grad_clip_norm", "head_dpsgd")


def _given(value: Any, name: str = "table") -> dict[str, Any]:
    """The fields given in a shorthand table (a dict, or a model: only the fields set explicitly)."""
    if value is None:
        return {}
    if isinstance(value, BaseModel):
        return {k: getattr(value, k) for k in value.model_fields_set}
    if isinstance(value, Mapping):
        return dict(value)
    raise ValueError(f"{name}: expected a table of fields, got {value!r}")


def from_shorthand(data: Mapping[str, Any], preset_specs: list[dict[str, Any]] | None = None
                   ) -> list[dict[str, Any]]:
    """The ``defenses`` list (dict forms) that the old fields in ``data`` and a preset's specs describe.

    Same meaning as before ``defenses`` existed: ``defense`` dp/clicooper turns on keyed noise (with
    ``dp``'s settings, gradient protection with ``dp.protect_gradients``), labels/clicooper label
    obfuscation (``labels.expansion``); ``labels.label_dp_epsilon`` randomized response; ``dp.head_dpsgd``,
    ``nopeek`` > 0, ``adversarial_decoder`` > 0 and ``head_mode = "secret-random"`` their own defences. A
    preset's specs fill in what the old fields leave unset (``defense`` unset: the preset's kinds)."""
    dp, labels = _given(data.get("dp"), "dp"), _given(data.get("labels"), "labels")
    label_keys = ("expansion", "label_dp_epsilon")
    unknown = [(f"dp.{k}", k, _DP_KEYS) for k in sorted(set(dp) - set(_DP_KEYS))] + \
              [(f"labels.{k}", k, label_keys) for k in sorted(set(labels) - set(label_keys))]
    if unknown:  # a misspelt field: name the nearest real one, as for every other table
        raise ValueError("; ".join(
            f"{where}: unknown field; did you mean `{near[0]}`?" if (near := difflib.get_close_matches(k, keys, n=1))
            else f"{where}: unknown field; check its spelling" for where, k, keys in unknown))
    defense = data.get("defense")
    if defense is not None and defense not in ("none", "dp", "labels", "clicooper"):
        raise ValueError(f"defense must be one of none, dp, labels, clicooper, got {defense!r}")
    preset = {s["kind"]: dict(s) for s in (preset_specs or [])}
    out: dict[str, dict[str, Any]] = {}

    def on(kind: str, flag: bool | None, fields: dict[str, Any]) -> None:
        """``flag`` None: the user left it to the preset."""
        if flag is None:
            flag = kind in preset
        if flag:
            out[kind] = {"kind": kind, **{k: v for k, v in preset.get(kind, {}).items() if k != "kind"}, **fields}

    noise = {k: dp[k] for k in _DP_NOISE_KEYS if dp.get(k) is not None}
    if "keyed-noise" in preset and ("sigma" in noise or "target_epsilon" in noise):
        noise.setdefault("sigma", None)  # the user's σ (or target ε) decides; the preset's σ does not apply
        noise.setdefault("sigma_source", None)
    on("keyed-noise", None if defense is None else defense in ("dp", "clicooper"), noise)
    expansion = {k: labels[k] for k in ("expansion",) if labels.get(k) is not None}
    on("label-obfuscation", None if defense is None else defense in ("labels", "clicooper"), expansion)
    # settings of a defence left off are still checked (a malformed dp or labels table is refused, as ever)
    for kind, fields in (("keyed-noise", noise), ("label-obfuscation", expansion)):
        if fields and kind not in out:
            parse_defense({"kind": kind, **fields}, "dp" if kind == "keyed-noise" else "labels")
    if "keyed-noise" in out:
        if dp.get("protect_gradients"):
            out["gradient-protection"] = {"kind": "gradient-protection", "clip_norm": dp.get("grad_clip_norm")}
        elif dp.get("protect_gradients") is None:
            on("gradient-protection", None, {})
    if labels.get("label_dp_epsilon") is not None:
        out["randomized-response"] = {"kind": "randomized-response", "epsilon": labels["label_dp_epsilon"]}
    else:
        on("randomized-response", None, {})
    if dp.get("head_dpsgd") is not None:
        out["head-dpsgd"] = {"kind": "head-dpsgd", **_given(dp["head_dpsgd"], "dp.head_dpsgd")}
    else:
        on("head-dpsgd", None, {})
    for kind, name in (("nopeek", "nopeek"), ("adversarial-decoder", "adversarial_decoder")):
        w = data.get(name)
        if w is not None and (isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0):
            raise ValueError(f"{name} must be a number ≥ 0 (0 = off), got {w!r}")
        on(kind, None if w is None else w > 0, {"weight": w} if w else {})
    mode = data.get("head_mode")
    if mode is not None and mode not in ("learned", "secret-random"):
        raise ValueError(f"head_mode must be learned or secret-random, got {mode!r}")
    on("secret-random-head", None if mode is None else mode == "secret-random", {})
    for kind, spec in preset.items():  # a preset's own kinds that no old field speaks of
        if kind not in _SHORTHAND_KINDS:
            out.setdefault(kind, spec)
    return list(out.values())


_SHORTHAND_KINDS = frozenset({"keyed-noise", "label-obfuscation", "gradient-protection", "randomized-response",
                              "head-dpsgd", "nopeek", "adversarial-decoder", "secret-random-head"})


def fill_from_preset(defenses: list[Any], preset_specs: list[dict[str, Any]]) -> list[Any]:
    """An explicit ``defenses`` list with a preset's settings filled into the specs of the same kind (the
    list decides which defences run; the user's fields win, and a given σ or target ε keeps the preset's σ
    out)."""
    preset = {s["kind"]: s for s in preset_specs}
    out = []
    for item in defenses:
        if isinstance(item, Mapping) and item.get("kind") in preset:
            base = dict(preset[item["kind"]])
            if item.get("sigma") is not None or item.get("target_epsilon") is not None:
                base.pop("sigma", None)
                base.pop("sigma_source", None)
            item = base | dict(item)
        out.append(item)
    return out


def migrate(data: Mapping[str, Any], preset_specs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Raw config fields with the old fields (and a preset's specs) turned into ``defenses``.

    An explicit ``defenses`` list decides which defences run (a preset only fills the settings its specs
    leave unset); without one, :func:`from_shorthand` reads the old fields. Both at once are refused."""
    out = dict(data)
    old = {k: out.pop(k) for k in SHORTHAND_FIELDS if k in out}
    old = {k: v for k, v in old.items() if v is not None}
    if out.get("defenses") is not None:
        if old:
            raise ValueError(f"give defenses or the older fields ({', '.join(sorted(old))}), not both; "
                             "move their settings into the defenses list")
        items = expand_aliases(out["defenses"])
        if preset_specs and isinstance(items, list | tuple):
            items = fill_from_preset(list(items), preset_specs)
        out["defenses"] = items
    else:
        out["defenses"] = from_shorthand(old, preset_specs)
    return out


def defense_kinds_of(raw: Mapping[str, Any]) -> list[str]:
    """The defence kinds a raw config (a ``config.json``, either form) turns on, without validating it."""
    items = raw.get("defenses")
    if isinstance(items, list):
        return [d["kind"] for d in items if isinstance(d, Mapping) and isinstance(d.get("kind"), str)]
    try:
        return [d["kind"] for d in from_shorthand(raw)]
    except (ValueError, KeyError):
        return []


def defense_summary(kinds: list[str]) -> str:
    """The older one-word summary of the activation and label defences: none, dp, labels or clicooper."""
    noise, labels = "keyed-noise" in kinds, "label-obfuscation" in kinds
    return "clicooper" if noise and labels else "dp" if noise else "labels" if labels else "none"
