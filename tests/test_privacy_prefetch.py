"""Noise prefetch (privacy/prefetch.py): same values, bounded, closed cleanly, bit-identical training."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from clicooper.data import epoch_order
from clicooper.privacy import ActivationProtector
from clicooper.privacy.prefetch import EpochSchedule, NoisePrefetcher

SECRET = bytes(range(32))
SHAPE = (4, 7, 7)


def _schedule(n: int = 50, bs: int = 8, epochs: int = 2, seed: int = 3) -> EpochSchedule:
    ids = torch.arange(100, 100 + n)
    return EpochSchedule(lambda r: epoch_order(ids, seed=seed, epoch=r), batch_size=bs, epochs=epochs)


def _batches(s: EpochSchedule, n: int = 50, seed: int = 3) -> list[tuple[int, list[int]]]:
    out = []
    for r in range(s.epochs):
        order = epoch_order(torch.arange(100, 100 + n), seed=seed, epoch=r).tolist()
        out += [(r, order[i : i + s.batch_size]) for i in range(0, n, s.batch_size)]
    return out


def _noise_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("clicooper-noise") and t.is_alive()]


def test_schedule_predicts_the_next_batch_across_rounds() -> None:
    s = _schedule()
    batches = _batches(s)

    for (r, ids), (r2, nxt) in zip(batches, batches[1:], strict=False):
        assert s.next_batch(r, ids) == (r2, tuple(nxt))
        assert s.next_batch(r, ids[1:3]) == (r2, tuple(nxt))  # a micro-batch of it
    assert s.next_batch(*batches[-1]) is None  # last batch of the last round
    r0, first = batches[0]
    assert s.next_batch(r0, [first[1], first[0]]) is None  # not a slice of the order
    assert s.next_batch(r0, [10**9]) is None and s.next_batch(5, first) is None


def test_prefetched_noise_equals_inline_noise_with_micro_batches() -> None:
    s = _schedule()
    plain = ActivationProtector(sigma=0.7, clip_norm=1.3, secret=SECRET)
    pf = NoisePrefetcher(s)
    fast = ActivationProtector(sigma=0.7, clip_norm=1.3, secret=SECRET, prefetcher=pf)
    try:
        for r, ids in _batches(s):
            for part in [c for c in (ids[:3], ids[3:]) if c]:  # micro-batches (contiguous, as tensor_split)
                a = torch.randn(len(part), *SHAPE, requires_grad=True)
                want = plain.protect(a, sample_ids=part, round=r)
                got = fast.protect(a, sample_ids=torch.tensor(part), round=r)
                assert torch.equal(got, want)
                got.sum().backward()  # still differentiable through the clip
                assert a.grad is not None
                for stream in ("grad", "query"):  # another stream and an unscheduled one: same values
                    assert torch.equal(
                        fast.noise(SHAPE, sample_ids=part, round=r, stream=stream),
                        plain.noise(SHAPE, sample_ids=part, round=r, stream=stream),
                    )
        assert pf.hits >= 2 * (len(_batches(s)) - 1)  # every batch but the first came from the prefetch
    finally:
        pf.close()


def test_prefetch_is_bounded_and_misses_fall_back_inline() -> None:
    s = _schedule()
    pf = NoisePrefetcher(s, max_ahead=2)
    p = ActivationProtector(sigma=1.0, clip_norm=1.0, secret=SECRET, prefetcher=pf)
    plain = ActivationProtector(sigma=1.0, clip_norm=1.0, secret=SECRET)
    try:
        batches = _batches(s)
        for r, ids in batches:  # predictions only, nothing taken
            for stream in ("act", "grad", "query"):
                pf.ahead(p, p._compute_noise, stream, r, SHAPE, ids)
            assert len(pf._entries) <= 4  # two per training stream, none for queries
        r, ids = batches[3]
        assert torch.equal(
            p.noise(SHAPE, sample_ids=ids, round=r), plain.noise(SHAPE, sample_ids=ids, round=r)
        )
        with pytest.raises(ValueError):
            NoisePrefetcher(s, max_ahead=0)
    finally:
        pf.close()


def test_a_failing_worker_falls_back_to_the_inline_computation() -> None:
    s = _schedule()
    pf = NoisePrefetcher(s)
    (r, ids), (r2, nxt) = _batches(s)[:2]

    def boom(*_: Any) -> torch.Tensor:
        raise RuntimeError("worker failed")

    try:
        pf.ahead("owner", boom, "act", r, SHAPE, ids)
        assert pf.take("owner", "act", r2, SHAPE, nxt) is None and pf.misses == 1
    finally:
        pf.close()


def test_close_is_idempotent_stops_the_thread_and_keeps_values() -> None:
    s = _schedule()
    pf = NoisePrefetcher(s)
    p = ActivationProtector(sigma=0.5, clip_norm=1.0, secret=SECRET, prefetcher=pf)
    plain = ActivationProtector(sigma=0.5, clip_norm=1.0, secret=SECRET)
    r, ids = _batches(s)[0]
    p.noise(SHAPE, sample_ids=ids, round=r)  # starts the worker on the next batch
    assert _noise_threads()

    pf.close()
    pf.close()

    assert pf.closed and not pf._entries and not _noise_threads()
    r, ids = _batches(s)[1]
    assert torch.equal(p.noise(SHAPE, sample_ids=ids, round=r), plain.noise(SHAPE, sample_ids=ids, round=r))


def _train(tmp: Path, monkeypatch: pytest.MonkeyPatch, *, prefetch: bool, **extra: Any) -> tuple[Any, dict]:
    from clicooper.core import privacy as privacy_hooks
    from clicooper.training import run as training_run
    from clicooper.training import train

    monkeypatch.setattr(privacy_hooks, "PREFETCH_NOISE", prefetch)
    # the same secrets for both runs (tests fix the secret), so that only the prefetch differs
    monkeypatch.setattr(
        "clicooper.privacy.secrets.os.urandom", lambda n: bytes((7 * i + 3) % 256 for i in range(n))
    )
    built: dict[str, Any] = {}
    real = training_run.build_privacy

    def spy(*a: Any, **k: Any) -> Any:
        made = real(*a, **k)
        built["prefetcher"] = made.prefetcher
        return made

    monkeypatch.setattr(training_run, "build_privacy", spy)
    config = {
        "dataset": "digits", "model": "digits-mlp", "defense": "clicooper", "epochs": 2,
        "train_range": (0, 200), "batch_size": 32, "micro_batches": 2, "provenance": False, "seed": 1,
        "dp": {"sigma": 0.3, "clip_norm": 1.0, "protect_gradients": True, "grad_clip_norm": 0.05},
    }  # fmt: skip
    return train(config, out=tmp, **extra), built


def test_training_is_bit_identical_with_and_without_prefetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    with_pf, built = _train(tmp_path / "pf", monkeypatch, prefetch=True)
    pf = built["prefetcher"]
    without, built_off = _train(tmp_path / "inline", monkeypatch, prefetch=False)

    assert built_off["prefetcher"] is None
    # 2 rounds × 7 batches × 2 micro-batches × 2 streams; only the very first batch of each stream misses
    assert pf.hits == 2 * 2 * (2 * 7 - 1) and pf.misses == 2 * 2
    assert pf.closed and not _noise_threads()  # train() closed it
    a, b = with_pf.full_model().state_dict(), without.full_model().state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((r.path / "metrics.json").read_text())["epochs"] for r in (with_pf, without))
    assert [(m["loss"], m["test_acc"]) for m in ma] == [(m["loss"], m["test_acc"]) for m in mb]


def test_an_error_during_training_shuts_the_prefetch_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(_: dict) -> None:
        raise RuntimeError("stop after round 1")

    with pytest.raises(RuntimeError, match="stop after round 1"):
        _train(tmp_path / "err", monkeypatch, prefetch=True, on_epoch=fail)

    assert not _noise_threads()


def test_prefetch_defaults_to_on_only_with_a_spare_core(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clicooper.config import make_config
    from clicooper.core import privacy as privacy_hooks
    from clicooper.data import load_dataset
    from clicooper.models.blueprint import blueprint_for

    ds = load_dataset("digits")
    cfg = make_config(dataset="digits", model="digits-mlp", defense="dp", dp={"sigma": 0.1}).resolved(1000)
    bp = blueprint_for(cfg, ds.input_shape, ds.num_classes)
    monkeypatch.setattr(privacy_hooks, "PREFETCH_NOISE", None)
    for spare in (False, True):
        monkeypatch.setattr(privacy_hooks, "spare_core", lambda spare=spare: spare)
        built = privacy_hooks.build_privacy(cfg, tmp_path / str(spare), ds, bp, new_run=True)
        assert (built.prefetcher is not None) is spare
        built.close()
    off = privacy_hooks.build_privacy(cfg, tmp_path / "off", ds, bp, new_run=True, prefetch=False)
    assert off.prefetcher is None
