"""Explicit views: what an attacker may read, per knowledge level (DESIGN §7).

=================  ===========================================================================
level              the attacker reads
=================  ===========================================================================
zero-knowledge     its received observations (activations, gradients, open-tail labels) and its
                   own segment weights — never sample ids (they never go on the wire, §2)
known-sample k     + k labelled samples per class (x, y) and *which received rows* they are
auxiliary data     + samples (x, and y when labelled) from a range disjoint from the DO's training data
white-box          + the leaked DO head (``model/head.safetensors``)
query              + a ``predict`` callable (probabilities) — a query client, not a trainer
=================  ===========================================================================

Every view also holds :class:`PublicInfo` (dataset shape, class count, the public architecture as
*fresh* module factories, the public noise distribution). Ground truth for scoring lives apart in
:class:`Truth`; attacks hand it to metric functions only.

:func:`build_view` reads a run directory through :class:`~clicooper.attacks.reader.RunReader`: only
``observations/``, ``config.json``, the party's own segment, the dataset through the public loader, and
(white-box only) ``model/head.safetensors``. Never ``secrets/`` or ``keys/``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from clicooper.attacks.reader import RunReader
from clicooper.errors import AttackError

Knowledge = Literal["zero", "known", "aux", "white-box", "query"]
KNOWLEDGE_LEVELS: tuple[str, ...] = ("zero", "known", "aux", "white-box", "query")
ModuleFactory = Callable[[], nn.Module]


@dataclass(frozen=True)
class NoiseSpec:
    """The *public* activation-protection distribution (DESIGN §3): clip to ``clip``, add N(0, σ²·clip²).

    The attacker may simulate it; the secret noise values are not part of any view.
    """

    sigma: float
    clip: float

    def __post_init__(self) -> None:
        if not (self.sigma >= 0 and self.clip > 0):
            raise AttackError(f"noise needs sigma ≥ 0 and clip > 0, got sigma={self.sigma}, clip={self.clip}")

    def simulate(self, a: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Apply clip + fresh Gaussian noise with the attacker's own randomness."""
        flat = a.flatten(1)
        scale = (self.clip / flat.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
        out = flat * scale[:, None]
        if self.sigma > 0:
            out = out + torch.randn(out.shape, generator=generator) * (self.sigma * self.clip)
        return out.view_as(a)


@dataclass(frozen=True)
class Architecture:
    """Fresh (randomly initialised) modules of the public architecture: the model is public, its weights
    are not. ``segments[i]`` builds trainer T_{i+1}'s segment; ``tail`` is None in the open tail."""

    head: ModuleFactory
    segments: Sequence[ModuleFactory]
    tail: ModuleFactory | None


@dataclass(frozen=True)
class PublicInfo:
    """What every party knows: task shape, topology, architecture, protection distribution."""

    num_classes: int
    input_shape: tuple[int, ...]
    architecture: Architecture
    topology: str = "u-shape"
    noise: NoiseSpec | None = None


@dataclass(frozen=True)
class Received:
    """One epoch of what one trainer received, rows in the order received (no sample ids)."""

    party: str
    epoch: int
    activations: torch.Tensor  # (N, …) forward input
    gradients: torch.Tensor | None  # (N, …) d loss / d own output; None for the open tail's last trainer
    labels: torch.Tensor | None = None  # (N,) open tail only, as received (obfuscated)

    def __post_init__(self) -> None:
        n = self.activations.shape[0]
        if n == 0:
            raise AttackError(f"{self.party} epoch {self.epoch}: no recorded rows; record observations")
        if (self.gradients is not None and self.gradients.shape[0] != n) or (self.labels is not None and self.labels.shape[0] != n):
            raise AttackError(
                f"{self.party} epoch {self.epoch}: activations, gradients and labels have different row "
                "counts; the observation file is corrupt — re-record it"
            )


@dataclass(frozen=True)
class ZeroKnowledgeView:
    """Zero knowledge: a trainer's received observations and its own segment."""

    public: PublicInfo
    received: Received
    segment: nn.Module
    position: int  # 1..K

    @torch.no_grad()
    def own_output(self, batch: int = 512) -> torch.Tensor:
        """The trainer's own output on what it received (its segment applied to the activations)."""
        self.segment.eval()
        a = self.received.activations
        return torch.cat([self.segment(a[i : i + batch].float()) for i in range(0, a.shape[0], batch)])


@dataclass(frozen=True)
class KnownSampleView:
    """k labelled samples per class (their images and labels) and which received rows they are.

    Samples are stored per class in a random order, so :meth:`per_class` gives nested subsets.
    """

    rows: torch.Tensor  # (m,) int64 indices into the received rows
    x: torch.Tensor  # (m, …) the samples' inputs
    y: torch.Tensor  # (m,) true labels

    def __post_init__(self) -> None:
        if not (self.rows.shape[0] == self.x.shape[0] == self.y.shape[0]):
            raise AttackError("known samples: rows, x and y must have the same length")

    @property
    def k(self) -> int:
        """Samples per class held (the minimum over classes)."""
        return int(torch.bincount(self.y).min()) if self.y.numel() else 0

    def per_class(self, k: int) -> KnownSampleView:
        """The first ``k`` samples of each class."""
        if k > self.k:
            raise AttackError(f"asked for {k} known samples per class but the view holds {self.k}; "
                              "build the view with a larger known_k")
        keep = torch.cat([torch.nonzero(self.y == c).flatten()[:k] for c in torch.unique(self.y)])
        keep = keep.sort().values
        return KnownSampleView(rows=self.rows[keep], x=self.x[keep], y=self.y[keep])


@dataclass(frozen=True)
class AuxiliaryView:
    """Auxiliary data from a range disjoint from the DO's training data (``y`` None when unlabelled)."""

    x: torch.Tensor
    y: torch.Tensor | None
    source: str  # "train" or "test"
    range: tuple[int, int]


@dataclass(frozen=True)
class WhiteBoxView:
    """The DO's head, leaked."""

    head: nn.Module


@dataclass(frozen=True)
class Truth:
    """The evaluator's ground truth. Attacks pass it to metric functions only."""

    y: torch.Tensor  # (N,) true labels of the received rows
    x: torch.Tensor | None  # (N, …) true inputs of the received rows
    victims: torch.Tensor  # (V,) received rows to score reconstruction on (disjoint from known rows)
    x_test: torch.Tensor | None = None  # held-out evaluation data (extraction)
    y_test: torch.Tensor | None = None
    aux_y: torch.Tensor | None = None  # labels of the auxiliary data (for the class floor)


@dataclass(frozen=True)
class Views:
    """Everything one attack run may use, by knowledge level, plus the evaluator's truth.

    ``pooled`` holds every colluding trainer's zero-knowledge view (extraction); ``zero`` is the
    attacking party's own.
    """

    zero: ZeroKnowledgeView
    truth: Truth
    known: KnownSampleView | None = None
    aux: AuxiliaryView | None = None
    white_box: WhiteBoxView | None = None
    pooled: tuple[ZeroKnowledgeView, ...] = ()
    predict: Callable[[torch.Tensor], torch.Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def without(self, *levels: str) -> Views:
        """A copy with the given knowledge levels removed."""
        drop = {"known": "known", "aux": "aux", "white-box": "white_box", "query": "predict"}
        return replace(self, **{drop[lv]: None for lv in levels})


# --------------------------------------------------------------------------------------------------------
# building views from a run directory


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

    Protection is on for ``defense`` ``dp`` or ``clicooper``; σ and the clip norm are ``dp.sigma`` and
    ``dp.clip_norm`` (DESIGN §3).
    """
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


def _parse_range(r: Any, n: int, what: str) -> tuple[int, int]:
    try:
        a, b = int(r[0]), int(r[1])
    except (TypeError, ValueError, IndexError) as e:
        raise AttackError(f"{what} must be a pair (start, stop), got {r!r}") from e
    if not 0 <= a < b <= n:
        raise AttackError(f"{what} {a}:{b} is out of bounds for {n} samples; choose 0 ≤ start < stop ≤ {n}")
    return a, b


def _epochs(reader: RunReader, epochs: str | Sequence[int]) -> list[int]:
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


def _load_received(reader: RunReader, party: str, epoch: int) -> tuple[Received, torch.Tensor]:
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


def _load_segment(reader: RunReader, arch: Architecture, party: str, epoch: int) -> tuple[nn.Module, int]:
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


def build_view(
    run_dir: str | Path,
    party: str,
    knowledge: Iterable[str] = KNOWLEDGE_LEVELS,
    *,
    epoch: int | None = None,
    architecture: Architecture,
    dataset: Any,
    config: dict[str, Any] | None = None,
    known_k: int = 100,
    aux_range: tuple[int, int] | None = None,
    aux_source: Literal["train", "test"] = "test",
    aux_labelled: bool = True,
    training_range: tuple[int, int] | None = None,
    victims: int = 500,
    predict: Callable[[torch.Tensor], torch.Tensor] | None = None,
    seed: int = 0,
    reader: RunReader | None = None,
) -> Views:
    """Build the views of ``party`` (``"T1"`` … ``"TK"``, or ``"pool"`` for all trainers colluding, whose
    own view is then the last trainer's) at one recorded ``epoch`` (default: the last).

    ``dataset`` is what the public loader returns (``x_train, y_train, x_test, y_test, num_classes,
    input_shape``); the DO's training data is ``x_train[training_range]`` (default: all of it). Auxiliary
    data is ``aux_range`` of ``aux_source`` (default: the first half of the test split); the other half of
    the test split is the held-out evaluation data. Known samples (``known_k`` per class) and victims
    (up to ``victims``, disjoint from the known rows) are drawn from the recorded rows with ``seed``.
    """
    levels = set(knowledge)
    unknown = levels - set(KNOWLEDGE_LEVELS)
    if unknown:
        raise AttackError(f"unknown knowledge levels {sorted(unknown)}; choose from {KNOWLEDGE_LEVELS}")
    reader = reader or RunReader(run_dir)
    config = config if config is not None else (reader.read_json("config.json") if reader.exists("config.json") else {})
    (ep,) = _epochs(reader, "last" if epoch is None else [epoch])
    k_trainers = len(architecture.segments)
    parties = [f"T{i}" for i in range(1, k_trainers + 1)] if party == "pool" else [party]
    own = parties[-1]
    if own[:1] != "T" or not own[1:].isdigit():
        raise AttackError(f"party must be 'T1'…'T{k_trainers}' or 'pool', got {party!r}")
    if not 1 <= int(own[1:]) <= k_trainers:
        raise AttackError(f"party {own} is not a trainer of this run (T1..T{k_trainers})")

    x_train, y_train = dataset.x_train, dataset.y_train.long()
    n_train = x_train.shape[0]
    training_range = training_range or config.get("train_range") or (0, n_train)
    train_lo, train_hi = _parse_range(training_range, n_train, "training_range")
    public = PublicInfo(num_classes=int(dataset.num_classes), input_shape=tuple(x_train.shape[1:]),
                        architecture=architecture,
                        topology=str(config.get("topology") or "u-shape"),
                        noise=noise_from_config(config))

    zviews: list[ZeroKnowledgeView] = []
    ids_by_party: dict[str, torch.Tensor] = {}
    for p in parties:
        rec, ids = _load_received(reader, p, ep)
        if ids.shape[0] != rec.activations.shape[0]:
            raise AttackError(f"observations/{p}/epoch_{ep}: {ids.shape[0]} sample ids for "
                              f"{rec.activations.shape[0]} rows; the file is corrupt — re-record it")
        if ids.numel() and (int(ids.min()) < train_lo or int(ids.max()) >= train_hi):
            raise AttackError(f"observations/{p}/epoch_{ep} has sample ids outside the training range "
                              f"{train_lo}:{train_hi}; the observations do not match this dataset/run")
        seg, pos = _load_segment(reader, architecture, p, ep)
        zviews.append(ZeroKnowledgeView(public=public, received=rec, segment=seg, position=pos))
        ids_by_party[p] = ids
    ids = ids_by_party[own]
    if party == "pool" and any(not torch.equal(ids_by_party[p], ids) for p in parties):
        raise AttackError("the trainers' recorded rows do not line up (different sample ids per row); "
                          "pooled attacks need observations recorded from the same batches")

    gen = torch.Generator().manual_seed(seed)
    y_rows = y_train[ids]
    known = None
    known_rows = torch.empty(0, dtype=torch.long)
    perm = torch.randperm(ids.shape[0], generator=gen)
    if "known" in levels:
        per_class = [perm[y_rows[perm] == c][:known_k] for c in range(public.num_classes)]
        short = [c for c, r in enumerate(per_class) if r.numel() < known_k]
        if short:
            raise AttackError(f"classes {short} have fewer than known_k={known_k} recorded rows; "
                              "lower known_k or record more rows")
        known_rows = torch.cat(per_class)
        known = KnownSampleView(rows=known_rows, x=x_train[ids[known_rows]], y=y_rows[known_rows])
    # victims: the DO's own training rows, disjoint from any pair the attacker holds
    mask = torch.ones(ids.shape[0], dtype=torch.bool)
    mask[known_rows] = False
    pool_rows = torch.nonzero(mask).flatten()
    victim_rows = pool_rows[torch.randperm(pool_rows.numel(), generator=gen)[:victims]].sort().values

    x_test, y_test = dataset.x_test, dataset.y_test.long()
    n_test = x_test.shape[0]
    aux = None
    aux_y_true = None
    if "aux" in levels or "white-box" in levels:
        src_x, src_y, n_src = (x_train, y_train, n_train) if aux_source == "train" else (x_test, y_test, n_test)
        if aux_source not in ("train", "test"):
            raise AttackError(f"aux_source must be 'train' or 'test', got {aux_source!r}")
        a, b = _parse_range(aux_range or (0, n_test // 2), n_src, f"aux_range ({aux_source} split)")
        if aux_source == "train" and a < train_hi and train_lo < b:
            raise AttackError(f"aux_range {a}:{b} overlaps the DO's training range {train_lo}:{train_hi}; "
                              "auxiliary data must be disjoint from the DO's data — pick another range")
        aux = AuxiliaryView(x=src_x[a:b], y=src_y[a:b] if aux_labelled else None, source=aux_source, range=(a, b))
        aux_y_true = src_y[a:b]
    # held-out evaluation data: the test split minus the auxiliary range
    keep = torch.ones(n_test, dtype=torch.bool)
    if aux is not None and aux.source == "test":
        keep[aux.range[0] : aux.range[1]] = False
    if not bool(keep.any()):
        raise AttackError("the auxiliary range covers the whole test split; leave some of it for evaluation")

    white = None
    if "white-box" in levels:
        head = architecture.head()
        try:
            head.load_state_dict(reader.read_tensors("model/head.safetensors"))
        except RuntimeError as e:
            raise AttackError(f"model/head.safetensors does not fit the head architecture: {e}") from e
        white = WhiteBoxView(head=head.eval())

    truth = Truth(y=y_rows, x=x_train[ids], victims=victim_rows, x_test=x_test[keep], y_test=y_test[keep],
                  aux_y=aux_y_true)
    info = {"run_dir": str(reader.root), "party": party, "epoch": ep, "rows": int(ids.shape[0]),
            "known_k": known_k if known is not None else 0, "victims": int(victim_rows.numel()),
            "aux": None if aux is None else {"source": aux.source, "range": list(aux.range),
                                             "labelled": aux.y is not None},
            "noise": None if public.noise is None else {"sigma": public.noise.sigma, "clip": public.noise.clip},
            "seed": seed}
    return Views(zero=zviews[-1], truth=truth, known=known, aux=aux, white_box=white,
                 pooled=tuple(zviews) if party == "pool" else (zviews[-1],),
                 predict=predict if "query" in levels else None, info=info)
