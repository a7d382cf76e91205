"""Typed, validated run configuration (pydantic).

One :class:`RunConfig` describes a whole run; ``config.json`` in a run directory is its full dump, and
``--config run.toml`` is the same fields in TOML. Validation errors become :class:`ConfigError` with a
message that names the field and says what to do.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from clicooper import jsonbound
from clicooper.config.defenses import (
    DefenseSpec,
    SigmaSource,
    check_sigma_choice,
    defense_summary,
    mark_explicit_sigma,
    parse_defenses,
)
from clicooper.config.presets import apply_preset
from clicooper.config.security import AdversaryConfig, AuditConfig, DetectionConfig, security_problem
from clicooper.errors import ConfigError

Topology = Literal["u-shape", "open-tail"]
Defense = Literal["none", "dp", "labels", "clicooper"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HeadDPSGDConfig(_Strict):
    """DP-SGD on the DO's head (privacy/dpsgd.py): per-sample clip ``max_grad_norm``, noise multiplier."""

    noise_multiplier: float = Field(..., gt=0.0, allow_inf_nan=False, description="noise std / max_grad_norm")
    max_grad_norm: float = Field(1.0, gt=0.0, allow_inf_nan=False, description="per-sample gradient clip C")


class DPConfig(_Strict):
    """Activation protection at the cut (docs/design/mechanisms.md#activation-protection). ``sigma`` is the noise multiplier of the clip norm.

    σ left unset is chosen when the run starts (:mod:`clicooper.privacy.defaults`): from ``target_epsilon``
    if given, else ``σ = noise_ratio / √d`` for a cut of ``d`` values per sample. ``sigma_source`` records
    how σ was chosen (filled in; ``"explicit"`` when ``sigma`` is given).
    """

    sigma: float | None = Field(
        None,
        ge=0.0,
        allow_inf_nan=False,
        description="noise std / clip norm (σ); 0 = clip only (ε = ∞); unset: derived (target_epsilon or noise_ratio)",
    )
    noise_ratio: float = Field(
        1.0,
        gt=0.0,
        allow_inf_nan=False,
        description="ρ = noise norm / clipped signal norm; with σ unset, σ = ρ/√d (d = values per sample at the cut)",
    )
    target_epsilon: float | None = Field(
        None,
        gt=0.0,
        allow_inf_nan=False,
        description="with σ unset: the smallest σ whose per-release ε (head fixed) after `epochs` is at most this",
    )
    max_sigma: float = Field(
        1000.0,
        gt=0.0,
        allow_inf_nan=False,
        description="the largest σ that dp.target_epsilon may choose; a target that needs more is refused",
    )
    sigma_source: SigmaSource | None = Field(None, description="how σ was chosen (filled in, not an input)")
    clip_norm: float = Field(
        1.0, gt=0.0, allow_inf_nan=False, description="per-sample L2 clip norm S of the head output"
    )
    delta: float = Field(1e-5, gt=0.0, lt=1.0)
    protect_gradients: bool = Field(False, description="also noise the gradient the DO sends back (U-shape)")
    grad_clip_norm: float | None = Field(
        None,
        gt=0.0,
        description="per-sample clip norm of the returned gradient (needed with protect_gradients)",
    )
    accountant: Literal["pld", "rdp"] = "pld"
    head_dpsgd: HeadDPSGDConfig | None = Field(
        None, description="train the DO's head with DP-SGD; privacy.json then also reports the composed "
        "'DP-SGD head + releases' ε"
    )

    _mark_explicit = model_validator(mode="before")(mark_explicit_sigma)

    @model_validator(mode="after")
    def _sigma_choice(self) -> DPConfig:
        check_sigma_choice(self.sigma, self.sigma_source, self.target_epsilon)
        return self


class LabelConfig(_Strict):
    """Secret label obfuscation (docs/design/mechanisms.md#label-obfuscation) and, in the open tail, label DP
    (randomized response, docs/design/mechanisms.md#label-dp)."""

    expansion: int = Field(2, ge=1, le=64, description="sub-classes per class (m)")
    label_dp_epsilon: float | None = Field(None, gt=0.0, description="RR-with-prior ε for the open tail")


class WatermarkConfig(_Strict):
    """Dynamic chained watermark (docs/design/mechanisms.md#watermarks)."""

    enabled: bool = True
    strength: float = Field(0.1, ge=0.0, description="λ of the watermark regularizer")
    max_extra_steps: int = Field(500, ge=0, description="bounded watermark-only steps to reach BER 0")
    min_params: int = Field(10_000, ge=1, description="segments with fewer weights carry no mark")


ImageMode = Literal["RGB", "L"]

# which dataset forms each data option applies to (the part of ``dataset`` before the first ':'), and its CLI flag
# where it has one (the others are set with --set data.KEY=VALUE)
_DATA_OPTION_FORMS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "label_column": (("csv",), "--label-column"),
    "test_fraction": (("csv", "imagefolder"), None),
    "image_size": (("imagefolder",), None),
    "image_mode": (("imagefolder",), None),
}


class DataOptions(_Strict):
    """Options of the dataset forms that need them (``csv:``, ``imagefolder:``), kept in ``config.json`` so
    a run directory reloads its own data. Unset (``None``) means the documented default; an option given for
    a form it does not apply to is refused (:meth:`problem_for`).
    """

    label_column: str | None = Field(
        None, min_length=1, description="csv: the column holding the class (required for csv: datasets)"
    )
    test_fraction: float | None = Field(
        None, gt=0.0, lt=1.0, allow_inf_nan=False,
        description="csv: (one file) and flat imagefolder: the held-out test share; None: 0.2",
    )
    split_seed: int = Field(
        0, ge=0, description="public seed of that train/test split (fixed per dataset, not the run's seed)"
    )
    image_size: int | None = Field(
        None, ge=1, le=4096, description="imagefolder: resize every image to N×N; None: keep the files' size"
    )
    image_mode: ImageMode | None = Field(None, description="imagefolder: RGB (3 channels) or L (grey); None: RGB")
    stream: bool = Field(
        False, description="read training samples from their files per batch (clicooper.data.stream) instead of "
        "holding the training split in memory; same batches, ids and weights"
    )
    workers: int = Field(2, ge=0, le=64, description="with stream: DataLoader worker processes (0: read inline)")
    crop_padding: int = Field(
        0, ge=0, le=64, description="augmentation: random crop after zero padding of N pixels per side (0: off)"
    )
    flip: bool = Field(False, description="augmentation: random horizontal flip of training images")

    def problem_for(self, dataset: str) -> str | None:
        """Why these options do not fit ``dataset`` (a sentence saying what to do), or ``None`` if they do."""
        form = dataset.partition(":")[0]
        for field, (forms, flag) in _DATA_OPTION_FORMS.items():
            if getattr(self, field) is not None and form not in forms:
                where = " and ".join(f"{f}:" for f in forms)
                named = f"data.{field}" + (f" ({flag})" if flag else "")
                return f"{named} applies to {where} datasets only, not {dataset!r}; drop it"
        if self.stream and form not in ("imagefolder", "cifar10", "cifar100", "cifar100-coarse"):
            return (f"data.stream (--stream) reads imagefolder: and cifar*: datasets from their files; {dataset!r} "
                    "is loaded into memory: drop --stream")
        if form == "csv" and self.label_column is None:
            return f"{dataset!r} needs data.label_column: pass --label-column NAME (the column holding the class)"
        return None


class RunConfig(_Strict):
    """Everything that determines a run. Public: the seed here never derives a secret."""

    dataset: str = Field("fashion-mnist", description="what the DO trains on: a built-in name or FORM:PATH "
                         "(npz:, csv:, imagefolder:, cifar10:, python:pkg.module:fn; `clicooper train --help`)")
    data: DataOptions = Field(DataOptions(), description="options of csv: / imagefolder: datasets")
    model: str = Field("fmnist-cnn", description="built-in model name (`clicooper models`), or a model file's name")
    model_spec: list[dict[str, Any]] | None = Field(
        None, description="the model's layers (a model file's spec, clicooper.models.spec); when set, `model` "
        "only names it and every party builds from this list"
    )
    trainers: int = Field(2, ge=1, le=64, description="number of trainer clients K")
    capacities: list[float] | None = Field(
        None, description="relative compute capacity of each trainer (one per trainer); the plan balances "
        "their layers by it; None: equal")
    topology: Topology = Field(
        "u-shape", description="u-shape: the DO keeps the head and the tail (labels never leave it); open-tail: the "
        "last trainer holds the tail and receives labels")
    epochs: int = Field(5, ge=1, le=10_000, description="passes over the training range")
    batch_size: int | None = Field(
        None, ge=1, le=1_000_000, description="None: 128, or 16 for datasets under 6,400 training samples"
    )
    micro_batches: int = Field(
        1, ge=1, le=1024, description="GPipe micro-batches per step: M pieces of each batch pipelined through "
        "the parties (same gradients; BatchNorm statistics per micro-batch)")
    wire_dtype: Literal["fp32", "bf16", "fp16", "int8"] = Field(
        "fp32", description="how activations and gradients travel: fp32, bf16, fp16, or int8 with a per-row "
        "scale (clicooper.protocol.wire_codec); applied after the privacy mechanisms, so ε is unchanged",
    )
    lr: float = Field(1e-3, gt=0.0, description="learning rate of every party's optimiser")
    optimizer: Literal["adam", "sgd"] = Field(
        "adam", description="every party's optimizer: adam (AdamW with weight_decay > 0) or sgd (Nesterov momentum)")
    weight_decay: float = Field(
        0.0, ge=0.0, le=1.0, allow_inf_nan=False,
        description="adam: decoupled weight decay (AdamW, Loshchilov & Hutter 2019), 0: plain Adam; sgd: L2 decay",
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0, allow_inf_nan=False, description="sgd: Nesterov momentum")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="every party's learning rate per epoch: constant `lr`, or cosine, "
        "lr · ½(1 + cos(π·e/epochs)) in epoch e (0-based; each party sets it from the epoch of what it steps on)",
    )
    overlap_steps: bool = Field(
        False, description="opt-in, changes the result: the DO sends step s + 1 while step s's gradients come "
        "back, hiding a wide-area link's latency; its head then trains one step stale (step s's forward uses the "
        "head after step s − 2, its gradient applied one step late); the trainers and the tail stay exact. "
        "Deterministic (in-process, gRPC and resumed runs agree); not with provenance, detection or head DP-SGD",
    )
    seed: int = Field(0, description="public seed (weights init, shuffling); never derives a secret")
    train_range: tuple[int, int] | None = Field(
        None, description="[START, END): the slice of the training split the DO trains on; None: all of it")
    record_observations: bool = Field(
        False, description="record what trainers receive (observations/), for `clicooper report` and attacks")
    observe: Literal["subset", "all"] = Field(
        "subset", description="which rows are recorded: a fixed subset of observe_count ids, or all")
    observe_count: int = Field(5000, ge=1, description="rows of the recorded subset")
    observe_dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="how recorded activations and gradients are stored (observations/): float16 "
        "halves the files (relative error ≈ 2·10⁻⁴ per row; a tensor with values beyond float16's range stays "
        "float32), bfloat16 halves them with float32's range (≈ 2·10⁻³); attacks read every one as float32",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="every party's device unless party_devices overrides it; auto: cuda when visible")
    party_devices: dict[str, Literal["auto", "cpu", "cuda"]] = Field(
        default_factory=dict,
        description="per-party overrides of `device`, e.g. {DO = \"cpu\", T1 = \"cuda\"} (the DO on the CPU, "
        "trainers on a GPU is the typical deployment)",
    )
    trainer_precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: trainers run their segment's forward under bf16 autocast (on CUDA; also "
        "on the CPU, slowly); what they send stays float32",
    )
    defenses: list[SerializeAsAny[DefenseSpec]] = Field(
        default_factory=list, description="the DO's defences, each a table with a kind (clicooper.config.defenses: "
        "keyed-noise, gradient-protection, label-obfuscation, randomized-response, head-dpsgd, nopeek, "
        "adversarial-decoder, secret-random-head, and those installed packages add); the older fields defense, "
        "dp, labels, nopeek, adversarial_decoder and head_mode are accepted as shorthand for them",
    )
    watermark: WatermarkConfig = WatermarkConfig()
    adversary: AdversaryConfig | None = Field(
        None, description="research option: one malicious trainer (config/security.py); never a default")
    detection: DetectionConfig = Field(DetectionConfig(), description="the DO's live detection (off by default)")
    audit: AuditConfig = Field(AuditConfig(), description="trainers keep messages and checkpoints for audits")
    provenance: bool = Field(True, description="keep a signed ledger (docs/design/ledger.md#the-ledger)")
    preset: str | None = Field(
        None,
        description="named privacy preset (clicooper.config.presets); explicit fields override its values",
    )

    def lr_at(self, epoch: int) -> float:
        """The learning rate of (0-based) ``epoch`` under ``lr_schedule``: the same function at every party,
        so a networked run, an in-process run, a resumed run and an audit replay step alike."""
        if self.lr_schedule == "constant":
            return self.lr
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(max(epoch, 0), self.epochs) / self.epochs))

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        # the preset's model and defences, and the older defence fields (shorthand) turned into `defenses`
        if isinstance(data, dict):
            data = apply_preset(data)
            data["defenses"] = parse_defenses(data["defenses"])
        return data

    @field_validator("capacities")
    @classmethod
    def _caps(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(not (math.isfinite(c) and c > 0) for c in v):
            bad = next(c for c in v if not (math.isfinite(c) and c > 0))
            raise ValueError(f"every trainer capacity must be a finite number > 0, got {bad:g} "
                             "(e.g. --capacities 1,2,1)")
        return v

    @field_validator("train_range")
    @classmethod
    def _range(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not (0 <= v[0] < v[1]):
            raise ValueError("train_range must be START:END with 0 <= START < END (e.g. 0:50000)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.capacities is not None and len(self.capacities) != self.trainers:
            raise ValueError(
                f"--capacities has {len(self.capacities)} values but --trainers is {self.trainers}; "
                "give one capacity per trainer"
            )
        data_problem = self.data.problem_for(self.dataset)
        if data_problem is not None:
            raise ValueError(data_problem)
        if self.batch_size is not None and self.micro_batches > self.batch_size:
            raise ValueError("micro_batches cannot exceed batch_size")
        if self.overlap_steps:
            clash = [name for name, on in (("provenance", self.provenance), ("detection", self.detection.enabled),
                                           ("adversary", self.adversary is not None)) if on]
            if clash:
                raise ValueError(f"overlap_steps is not combined with {', '.join(clash)} (their checks and records "
                                 "assume one step in flight); turn those off (--no-provenance) or drop "
                                 "overlap_steps")
        security = security_problem(self.adversary, self.audit, trainers=self.trainers, topology=self.topology,
                                    provenance=self.provenance)
        if security is not None:
            raise ValueError(security)
        unknown = sorted(set(self.party_devices) - {"DO", *(f"T{i + 1}" for i in range(self.trainers))})
        if unknown:
            raise ValueError(f"party_devices names {', '.join(unknown)}, not a party of this run; use DO or "
                             f"T1 … T{self.trainers} (e.g. --set party_devices.T1=cuda)")
        for spec in self.defenses:  # each defence's own conflicts with the rest of the run
            problem = spec.problem(self)
            if problem is not None:
                raise ValueError(problem)
        return self

    def resolved(self, num_train: int) -> RunConfig:
        """This config with its batch size filled in (128, or 16 under 6,400 training samples).

        σ, when unset, is chosen from the cut shape by :func:`clicooper.privacy.defaults.resolve_sigma`
        (the session core calls it once the model's plan is known).
        """
        if self.batch_size is not None:
            return self
        bs = 128 if num_train >= 6400 else 16
        return make_config(**(self.model_dump() | {"batch_size": max(bs, self.micro_batches)}))

    def defense_of(self, kind: str) -> DefenseSpec | None:
        """This run's defence of ``kind`` (``None``: not among ``defenses``)."""
        return next((d for d in self.defenses if d.kind == kind), None)

    def with_defense(self, spec: DefenseSpec) -> RunConfig:
        """This config with ``spec`` in place of its defence of the same kind (validated again)."""
        items = [spec if d.kind == spec.kind else d for d in self.defenses]
        return make_config(**(self.model_dump() | {"defenses": items}))

    # Views of the defences under the older names (read-only; `defenses` is what a run is made of).
    @property
    def defense(self) -> Defense:
        """The older summary of the activation and label defences: none, dp, labels or clicooper."""
        return defense_summary([d.kind for d in self.defenses])  # type: ignore[return-value]

    @property
    def dp(self) -> DPConfig:
        """Keyed noise, gradient protection and head DP-SGD as the older ``dp`` table."""
        noise, grad, head = (self.defense_of(k) for k in ("keyed-noise", "gradient-protection", "head-dpsgd"))
        fields: dict[str, Any] = {} if noise is None else noise.model_dump(exclude={"kind"})
        if grad is not None:
            fields |= {"protect_gradients": True, "grad_clip_norm": grad.clip_norm}  # type: ignore[attr-defined]
        if head is not None:
            fields["head_dpsgd"] = head.model_dump(exclude={"kind"})
        return DPConfig(**fields)

    @property
    def labels(self) -> LabelConfig:
        """Label obfuscation and randomized response as the older ``labels`` table."""
        obf, rr = self.defense_of("label-obfuscation"), self.defense_of("randomized-response")
        return LabelConfig(expansion=getattr(obf, "expansion", 2), label_dp_epsilon=getattr(rr, "epsilon", None))

    @property
    def nopeek(self) -> float:
        """NoPeek's weight α (0: off)."""
        return float(getattr(self.defense_of("nopeek"), "weight", 0.0))

    @property
    def adversarial_decoder(self) -> float:
        """The adversarial decoder's weight λ (0: off)."""
        return float(getattr(self.defense_of("adversarial-decoder"), "weight", 0.0))

    @property
    def head_mode(self) -> Literal["learned", "secret-random"]:
        """``secret-random`` with the secret random head, else ``learned``."""
        return "secret-random" if self.defense_of("secret-random-head") is not None else "learned"

    @property
    def obfuscate_labels(self) -> bool:
        """Whether labels are secretly obfuscated (defense ``labels`` or ``clicooper``)."""
        return self.defense_of("label-obfuscation") is not None

    @property
    def protect_activations(self) -> bool:
        """Whether activations are clipped and noised (defense ``dp`` or ``clicooper``)."""
        return self.defense_of("keyed-noise") is not None

    @property
    def cut_clip_norm(self) -> float | None:
        """The per-sample norm the DO clips its head's output to before anything leaves it (``dp.clip_norm``
        when activations are protected, else ``None``). It is part of the function the trainers learn on, so
        the local inference path applies it too (without the noise)."""
        return self.dp.clip_norm if self.protect_activations else None

    def device_of(self, party: str) -> str:
        """The device party ``party`` (``DO``, ``T<i>``) asks for: its override, else ``device``."""
        return self.party_devices.get(party, self.device)

    def config_hash(self) -> str:
        """SHA-256 of the canonical JSON of this config (sorted keys, no whitespace)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the (nested) model that ``loc``'s last element belongs to."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field is not None else None
        sub = next((a for a in (ann, *getattr(ann, "__args__", ())) if isinstance(a, type) and issubclass(a, BaseModel)),
                   None)
        if sub is None:
            return []
        model = sub
    return list(model.model_fields)


def _format_validation(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and err["loc"]:  # a misspelt field: name the nearest real one
            near = difflib.get_close_matches(str(err["loc"][-1]), _field_names(RunConfig, err["loc"]), n=1)
            msg = f"unknown field; did you mean `{near[0]}`?" if near else "unknown field; check its spelling"
        parts.append(msg if loc == "config" else f"{loc}: {msg}")
    return "invalid configuration: " + "; ".join(parts)


def make_config(**fields: Any) -> RunConfig:
    """Build a :class:`RunConfig`, turning validation errors into one clear :class:`ConfigError`."""
    try:
        return RunConfig(**fields)
    except ValidationError as e:
        raise ConfigError(_format_validation(e)) from e


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a ``.toml`` or ``.json`` config file into a dict (validated later by :func:`make_config`)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found; pass an existing .toml or .json file")
    try:
        if p.suffix == ".toml":
            return tomllib.loads(p.read_text("utf-8"))
        if p.suffix == ".json":
            data = jsonbound.load_file(p)  # size and depth bounded: a config may come from another party
            if not isinstance(data, dict):
                raise ConfigError(f"{p}: the top level must be an object of config fields")
            return data
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError, RecursionError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{p} is not valid {p.suffix[1:].upper()}: {e}") from None
    raise ConfigError(f"{p}: unsupported config format {p.suffix!r}; use .toml or .json")


def parse_range(text: str | None) -> tuple[int, int] | None:
    """Parse ``START:END`` into a tuple, or ``None``."""
    if text is None or text == "":
        return None
    try:
        a, b = text.split(":")
        return int(a), int(b)
    except ValueError as e:
        raise ConfigError(f"range {text!r} must look like START:END, e.g. 0:50000") from e


def parse_capacities(text: str | None) -> list[float] | None:
    """Parse ``1,2,1`` into floats, or ``None``."""
    if text is None or text == "":
        return None
    try:
        caps = [float(x) for x in text.split(",")]
    except ValueError as e:
        raise ConfigError(f"--capacities {text!r} must be comma-separated numbers, e.g. 1,2,1") from e
    if not all(math.isfinite(c) and c > 0 for c in caps):
        raise ConfigError(f"--capacities {text!r}: every capacity must be a finite number > 0, e.g. 1,2,1")
    return caps
