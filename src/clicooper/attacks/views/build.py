"""Building the views of one attacker from a run directory: :func:`build_view`, one function per knowledge
level it adds to the zero-knowledge view (known samples, auxiliary data, the white-box head), and the
evaluator's :class:`~clicooper.attacks.views.content.Truth` (victims and held-out data).

Everything is read through :class:`~clicooper.attacks.reader.RunReader` (:mod:`.source`); the dataset
comes from the public loader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from clicooper.attacks.reader import RunReader
from clicooper.attacks.views.content import (
    KNOWLEDGE_LEVELS,
    Architecture,
    AuxiliaryView,
    KnownSampleView,
    PublicInfo,
    Truth,
    Views,
    WhiteBoxView,
    ZeroKnowledgeView,
)
from clicooper.attacks.views.source import (
    load_head,
    load_received,
    load_segment,
    noise_from_config,
    parse_range,
    recorded_epochs,
)
from clicooper.errors import AttackError


def _levels(knowledge: Iterable[str]) -> set[str]:
    levels = set(knowledge)
    unknown = levels - set(KNOWLEDGE_LEVELS)
    if unknown:
        raise AttackError(f"unknown knowledge levels {sorted(unknown)}; choose from {KNOWLEDGE_LEVELS}")
    return levels


def _parties(party: str, k_trainers: int) -> list[str]:
    """The trainers whose views are read; the attacker's own view is the last one's."""
    parties = [f"T{i}" for i in range(1, k_trainers + 1)] if party == "pool" else [party]
    own = parties[-1]
    if own[:1] != "T" or not own[1:].isdigit():
        raise AttackError(f"party must be 'T1'…'T{k_trainers}' or 'pool', got {party!r}")
    if not 1 <= int(own[1:]) <= k_trainers:
        raise AttackError(f"party {own} is not a trainer of this run (T1..T{k_trainers})")
    return parties


def _zero_views(reader: RunReader, parties: Sequence[str], ep: int, public: PublicInfo,
                train: tuple[int, int]) -> tuple[list[ZeroKnowledgeView], torch.Tensor]:
    """Each party's zero-knowledge view at epoch ``ep``, and the sample ids of the (shared) rows."""
    train_lo, train_hi = train
    zviews: list[ZeroKnowledgeView] = []
    ids_by_party: dict[str, torch.Tensor] = {}
    for p in parties:
        rec, ids = load_received(reader, p, ep)
        if ids.shape[0] != rec.activations.shape[0]:
            raise AttackError(f"observations/{p}/epoch_{ep}: {ids.shape[0]} sample ids for "
                              f"{rec.activations.shape[0]} rows; the file is corrupt — re-record it")
        if ids.numel() and (int(ids.min()) < train_lo or int(ids.max()) >= train_hi):
            raise AttackError(f"observations/{p}/epoch_{ep} has sample ids outside the training range "
                              f"{train_lo}:{train_hi}; the observations do not match this dataset/run")
        seg, pos = load_segment(reader, public.architecture, p, ep)
        zviews.append(ZeroKnowledgeView(public=public, received=rec, segment=seg, position=pos))
        ids_by_party[p] = ids
    ids = ids_by_party[parties[-1]]
    if any(not torch.equal(ids_by_party[p], ids) for p in parties):
        raise AttackError("the trainers' recorded rows do not line up (different sample ids per row); "
                          "pooled attacks need observations recorded from the same batches")
    return zviews, ids


def _known_view(perm: torch.Tensor, ids: torch.Tensor, y_rows: torch.Tensor, x_train: torch.Tensor,
                num_classes: int, known_k: int) -> KnownSampleView:
    """Known-sample level: the first ``known_k`` rows of each class in the random order ``perm``."""
    per_class = [perm[y_rows[perm] == c][:known_k] for c in range(num_classes)]
    short = [c for c, r in enumerate(per_class) if r.numel() < known_k]
    if short:
        raise AttackError(f"classes {short} have fewer than known_k={known_k} recorded rows; "
                          "lower known_k or record more rows")
    known_rows = torch.cat(per_class)
    return KnownSampleView(rows=known_rows, x=x_train[ids[known_rows]], y=y_rows[known_rows])


def _victims(n_rows: int, known: KnownSampleView | None, victims: int, gen: torch.Generator) -> torch.Tensor:
    """Up to ``victims`` received rows (sorted): the DO's own training rows, disjoint from any pair the
    attacker holds."""
    mask = torch.ones(n_rows, dtype=torch.bool)
    mask[known.rows if known is not None else torch.empty(0, dtype=torch.long)] = False
    pool_rows = torch.nonzero(mask).flatten()
    return pool_rows[torch.randperm(pool_rows.numel(), generator=gen)[:victims]].sort().values


def _aux_view(dataset: Any, aux_range: tuple[int, int] | None, aux_source: str, aux_labelled: bool,
              train: tuple[int, int], aux_rows: int | None = None
              ) -> tuple[AuxiliaryView, torch.Tensor, tuple[int, int]]:
    """Auxiliary-data level: ``aux_range`` of the ``aux_source`` split (disjoint from the DO's training
    range; its first ``aux_rows`` when given), the true labels of those samples (for the class floor), and the
    whole range."""
    x_train, y_train = dataset.x_train, dataset.y_train.long()
    x_test, y_test = dataset.x_test, dataset.y_test.long()
    n_test = x_test.shape[0]
    src_x, src_y, n_src = (x_train, y_train, x_train.shape[0]) if aux_source == "train" else (x_test, y_test, n_test)
    if aux_source not in ("train", "test"):
        raise AttackError(f"aux_source must be 'train' or 'test', got {aux_source!r}")
    a, b = parse_range(aux_range or (0, n_test // 2), n_src, f"aux_range ({aux_source} split)")
    train_lo, train_hi = train
    if aux_source == "train" and a < train_hi and train_lo < b:
        raise AttackError(f"aux_range {a}:{b} overlaps the DO's training range {train_lo}:{train_hi}; "
                          "auxiliary data must be disjoint from the DO's data — pick another range")
    whole = (a, b)
    if aux_rows is not None:
        b = min(b, a + aux_rows)
    aux = AuxiliaryView(x=src_x[a:b], y=src_y[a:b] if aux_labelled else None, source=aux_source, range=(a, b))
    return aux, src_y[a:b], whole


def _held_out(n_test: int, aux: AuxiliaryView | None, aux_range: tuple[int, int] | None = None) -> torch.Tensor:
    """Mask of the held-out evaluation data: the test split minus the auxiliary range (``aux_range`` when
    given: the whole range, of which ``aux`` may hold only the first rows)."""
    keep = torch.ones(n_test, dtype=torch.bool)
    if aux is not None and aux.source == "test":
        a, b = aux_range or aux.range
        keep[a:b] = False
    if not bool(keep.any()):
        raise AttackError("the auxiliary range covers the whole test split; leave some of it for evaluation")
    return keep


def _info(reader: RunReader, party: str, ep: int, rows: int, known_k: int, victim_rows: torch.Tensor,
          aux: AuxiliaryView | None, public: PublicInfo, seed: int) -> dict[str, Any]:
    """``Views.info``: the settings the views were built with."""
    return {"run_dir": str(reader.root), "party": party, "epoch": ep, "rows": rows,
            "known_k": known_k, "victims": int(victim_rows.numel()),
            "aux": None if aux is None else {"source": aux.source, "range": list(aux.range),
                                             "labelled": aux.y is not None},
            "noise": None if public.noise is None else {"sigma": public.noise.sigma, "clip": public.noise.clip},
            "seed": seed}


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
    test_rows: int | None = None,
    aux_rows: int | None = None,
) -> Views:
    """Build the views of ``party`` (``"T1"`` … ``"TK"``, or ``"pool"`` for all trainers colluding, whose
    own view is then the last trainer's) at one recorded ``epoch`` (default: the last).

    ``dataset`` is what the public loader returns (``x_train, y_train, x_test, y_test, num_classes,
    input_shape``); the DO's training data is ``x_train[training_range]`` (default: all of it). Auxiliary
    data is ``aux_range`` of ``aux_source`` (default: the first half of the test split); the other half of
    the test split is the held-out evaluation data. Known samples (``known_k`` per class) and victims
    (up to ``victims``, disjoint from the known rows) are drawn from the recorded rows with ``seed``.
    ``test_rows`` caps the held-out evaluation data at that many rows spread evenly over it (a budget's
    bound on scoring, which otherwise runs every surrogate over the whole held-out split at each reading).
    ``aux_rows`` caps the auxiliary data at the first that many rows of its range; the rows it leaves out
    are not held out for evaluation either (the held-out data stays the same).
    """
    if test_rows is not None and test_rows < 1:
        raise AttackError(f"test_rows must be ≥ 1, got {test_rows}")
    if aux_rows is not None and aux_rows < 1:
        raise AttackError(f"aux_rows must be ≥ 1, got {aux_rows}")
    levels = _levels(knowledge)
    reader = reader or RunReader(run_dir)
    config = config if config is not None else (reader.read_json("config.json") if reader.exists("config.json") else {})
    (ep,) = recorded_epochs(reader, "last" if epoch is None else [epoch])
    parties = _parties(party, len(architecture.segments))
    x_train, y_train = dataset.x_train, dataset.y_train.long()
    n_train = x_train.shape[0]
    train = parse_range(training_range or config.get("train_range") or (0, n_train), n_train, "training_range")
    public = PublicInfo(num_classes=int(dataset.num_classes), input_shape=tuple(x_train.shape[1:]),
                        architecture=architecture, topology=str(config.get("topology") or "u-shape"),
                        noise=noise_from_config(config))
    zviews, ids = _zero_views(reader, parties, ep, public, train)

    gen = torch.Generator().manual_seed(seed)
    y_rows = y_train[ids]
    perm = torch.randperm(ids.shape[0], generator=gen)
    known = _known_view(perm, ids, y_rows, x_train, public.num_classes, known_k) if "known" in levels else None
    victim_rows = _victims(ids.shape[0], known, victims, gen)
    aux, aux_y_true, whole = (_aux_view(dataset, aux_range, aux_source, aux_labelled, train, aux_rows)
                              if "aux" in levels or "white-box" in levels else (None, None, None))
    keep = _held_out(dataset.x_test.shape[0], aux, whole)
    if test_rows is not None and int(keep.sum()) > test_rows:
        kept = torch.nonzero(keep).flatten()
        keep = kept[torch.linspace(0, kept.numel() - 1, test_rows).round().long()]
    white = WhiteBoxView(head=load_head(reader, architecture)) if "white-box" in levels else None

    x_test, y_test = dataset.x_test, dataset.y_test.long()
    truth = Truth(y=y_rows, x=x_train[ids], victims=victim_rows, x_test=x_test[keep], y_test=y_test[keep],
                  aux_y=aux_y_true)
    info = _info(reader, party, ep, int(ids.shape[0]), known_k if known is not None else 0, victim_rows, aux,
                 public, seed)
    info["test_rows"] = int(truth.y_test.shape[0])  # type: ignore[union-attr]
    return Views(zero=zviews[-1], truth=truth, known=known, aux=aux, white_box=white,
                 pooled=tuple(zviews) if party == "pool" else (zviews[-1],),
                 predict=predict if "query" in levels else None, info=info)
