"""Run one attack on a run directory and store ``RUN/attacks/<name>.json`` (bookkeeping only; the math
lives in the attack modules).

The core supplies the public architecture (model zoo + ``plan.json``, weights re-drawn), the dataset
(public loader ``clicooper.data.load_dataset``) and, for query attacks only, the DO's ``predict``
interface (``clicooper.runs.load_run``). What the *attacker* reads from the run directory goes through
:class:`RunReader` (no ``secrets/``, no ``keys/``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save as _st_save
from torch import nn, no_grad

from clicooper.attacks.base import get
from clicooper.attacks.nets import reinit
from clicooper.attacks.reader import RunReader
from clicooper.attacks.views import Architecture, build_view, recorded_epochs
from clicooper.config import make_config
from clicooper.data.given import GivenData, open_dataset
from clicooper.errors import AttackError
from clicooper.models.describe import as_sequential
from clicooper.models.partition import Plan
from clicooper.rundir import atomic_write_bytes
from clicooper.runs import build_skeleton, load_run

#: Which parties an attack is run as when ``party`` is not given.
DEFAULT_PARTIES = {"clustering": "each", "gradient-leak": "last", "inversion": "T1", "extraction": "pool",
                   "fora": "T1", "sdar": "pool", "completion": "each", "paper-metrics": "last"}


def _factory(mod: Any, seed: int) -> Any:
    return lambda: reinit(copy.deepcopy(mod), seed)


@dataclass(frozen=True)
class OwnObjects:
    """What a run cannot rebuild from its description, handed back by its owner (``run_attack(model=,
    data=, test_data=)``): the module of a run of the user's own module classes, the data given in Python."""

    model: nn.Module | Sequence[nn.Module] | None = None
    data: GivenData | None = None
    test_data: Any = None


def _load_core(reader: RunReader, need_predict: bool, own: OwnObjects = OwnObjects()
               ) -> tuple[Any, Architecture, Callable[..., Any] | None]:
    """(dataset, architecture, predict) from the core.

    The architecture comes from ``config.json`` + ``plan.json`` (public) through the model zoo (or a copy of
    the user's own module) with re-drawn weights — no weight file is read. ``predict`` (the DO's query
    interface; it decodes labels with the DO's key, as a deployed service would) is loaded only for query
    attacks.
    """
    config = make_config(**reader.read_json("config.json"))
    plan = Plan.from_dict(reader.read_json("plan.json"))
    dataset = open_dataset(config.dataset, config.data, own.data, own.test_data,
                           fingerprint_of_run=plan.extra.get("data_fingerprint"))
    module = as_sequential(own.model) if own.model is not None else None
    _, modules = build_skeleton(config, plan, int(plan.extra.get("num_classes", dataset.num_classes)), module)
    arch = Architecture(head=_factory(modules["DO:head"], 1),
                        segments=[_factory(modules[p.party], 2 + i) for i, p in enumerate(plan.segments)],
                        tail=_factory(modules["DO:tail"], 99) if "DO:tail" in modules else None)
    predict = load_run(reader.root, model=own.model).predict if need_predict else None
    return dataset, arch, predict


def _raw_predict(reader: RunReader, own: OwnObjects = OwnObjects()) -> Callable[[Any], Any]:
    """For attacks with ``query_space = "raw"``: the softmax of the model's own outputs, in eval mode, not
    decoded with the DO's label key (the obfuscated label space, as a copy of the model without the key
    answers)."""
    run = load_run(reader.root, model=own.model)

    def predict(x: Any) -> Any:
        run.full_model().eval()
        with no_grad():
            return run.forward(x.float()).softmax(1)
    return predict


def _parties(who: str, k_trainers: int) -> list[str]:
    """The attacking parties ``who`` names: ``"each"`` trainer, the ``"last"`` one, or one by name."""
    if who == "each":
        return [f"T{i}" for i in range(1, k_trainers + 1)]
    return [f"T{k_trainers}"] if who == "last" else [who]


def _write(reader: RunReader, name: str, out: dict[str, Any], artifacts: dict[str, Any]) -> None:
    """``RUN/attacks/<name>.json`` (and its artifacts' safetensors, named in ``out``), atomically."""
    base = reader.root / "attacks"
    if artifacts:
        atomic_write_bytes(base / f"{name}_artifacts.safetensors", _st_save(artifacts))
        out["artifacts"] = f"attacks/{name}_artifacts.safetensors"
    atomic_write_bytes(base / f"{name}.json", json.dumps(out, indent=2, sort_keys=True).encode())


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Denormal floats flushed to zero while an attack trains its nets (CPU). A decoder fitted with weight
    decay to a thousand pairs drifts into denormals and then ran 8× slower (254 s against 30 s for the demo's
    known-plaintext decoder, the same figure to the last digit); values below 1.2·10⁻³⁸ do not matter to an
    attack. Training is left alone: its arithmetic is part of the protocol."""
    on = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if on:
            torch.set_flush_denormal(False)


def run_attack(
    run_dir: str | Path,
    name: str,
    *,
    knowledge: Sequence[str] | None = None,
    party: str | None = None,
    aux_range: tuple[int, int] | None = None,
    aux_source: Literal["train", "test"] = "test",
    victims: int = 500,
    epochs: Literal["last", "all"] | Sequence[int] = "last",
    known_k: int | None = None,
    seed: int = 0,
    config: dict[str, Any] | None = None,
    write: bool = True,
    annotate: dict[str, Any] | None = None,
    save_as: str | None = None,
    own: OwnObjects | None = None,
    test_rows: int | None = None,
    aux_rows: int | None = None,
) -> dict[str, Any]:
    """Run attack ``name`` on ``run_dir``, write ``RUN/attacks/<name>.json`` atomically and return its dict.

    ``knowledge`` defaults to every level the attack uses; ``party`` to the attack's natural attacker
    (``DEFAULT_PARTIES``); ``epochs`` to the last recorded epoch; ``aux_range`` to the first half of the
    test split. ``config`` is passed to the attack's config dataclass. Reconstruction grids are written
    to ``RUN/attacks/<name>_artifacts.safetensors``. ``annotate`` adds keys to ``settings`` (e.g. the
    budget name used by ``clicooper attack --budget``). ``save_as``: the file stem instead of ``name`` (a
    second run of the same attack with other settings, kept beside the first instead of replacing it).
    ``own``: the module and data a run of the user's own objects takes back (:class:`OwnObjects`).
    ``test_rows``: score on at most that many held-out test rows (default: all of them; the smoke budget's
    bound, see :func:`clicooper.attacks.views.build_view`). ``aux_rows``: use at most that many auxiliary
    images, the first of the aux range (default: all of it; the smoke budget's bound).
    """
    t0 = time.time()
    stem = save_as or name
    if not stem.replace("-", "").replace("_", "").isalnum():
        raise AttackError(f"save_as must be letters, digits, '-' or '_', got {stem!r}")
    cls = get(name)
    attack = cls(**(config or {}))
    reader = RunReader(run_dir)
    levels = list(knowledge) if knowledge is not None else list(getattr(cls, "knowledge", ("zero", "known")))
    eps = recorded_epochs(reader, epochs)
    own = own or OwnObjects()
    dataset, arch, predict = _load_core(reader, "query" in levels, own)
    if predict is not None and getattr(cls, "query_space", "decoded") == "raw":
        predict = _raw_predict(reader, own)
    kk = known_k if known_k is not None else int(getattr(cls, "known_k", 10))
    parties = _parties(party or DEFAULT_PARTIES.get(name, getattr(cls, "default_party", "each")), len(arch.segments))
    cfg_json = reader.read_json("config.json")
    results: list[dict[str, Any]] = []
    artifacts: dict[str, Any] = {}
    for p in parties:
        for ep in eps:
            views = build_view(run_dir, p, levels, epoch=ep, architecture=arch, dataset=dataset, config=cfg_json,
                               known_k=kk, aux_range=aux_range, aux_source=aux_source, victims=victims,
                               predict=predict, seed=seed, reader=reader, test_rows=test_rows,
                               aux_rows=aux_rows)
            with flush_denormals():
                res = attack.run(views)
            results.append({"party": p, "epoch": ep, "views": views.info, **res.to_json()})
            artifacts.update({f"{p}/epoch_{ep}/{k}": v.contiguous() for k, v in res.artifacts.items()})
    out = {
        "attack": name,
        "run_dir": str(reader.root),
        "settings": {"knowledge": levels, "parties": parties, "epochs": eps, "known_k": kk,
                     "aux": {"source": aux_source, "range": list(aux_range) if aux_range else "first half of test"},
                     "victims": victims, "seed": seed, "config": attack.config.__dict__,
                     **({"test_rows": test_rows} if test_rows is not None else {}),
                     **({"aux_rows": aux_rows} if aux_rows is not None else {}),
                     "note": "defaults fit a small budget: recorded subset of rows, last epoch only",
                     **(annotate or {})},
        "results": results,
        "headline": {r["party"]: r["levels"] for r in results if r["epoch"] == eps[-1]},
        "seconds": round(time.time() - t0, 2),
    }
    out = json.loads(json.dumps(out, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
    if write:
        _write(reader, stem, out, artifacts)
    return out
