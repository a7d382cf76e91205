"""A received model spec is bounded before anything is allocated: caps on padding, parameters,
activations and counted FLOPs, each refusal naming the layer and the cap; a fuzz of the validator under a
memory and a time limit."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clicooper.errors import ConfigError
from clicooper.models import spec as spec_mod
from clicooper.models.spec import MAX_FLOPS, MAX_PARAMETERS, build_model, check_model
from tests.support.bounded import run_bounded

_HEAD = [{"type": "Flatten"}, {"type": "Linear", "out_features": "outputs"}]


def _refusal(layers: list[dict], shape: tuple[int, ...] = (1, 28, 28)) -> tuple[str, float]:
    """Build ``layers``; the ConfigError's message and the time it took (anything else propagates)."""
    t0 = time.perf_counter()
    try:
        build_model(layers, shape, 10)
    except ConfigError as e:
        return str(e), time.perf_counter() - t0
    return "accepted", time.perf_counter() - t0


@pytest.mark.parametrize(("layers", "message"), [
    ([{"type": "Conv2d", "out_channels": 16, "kernel_size": 1, "padding": 9000}, *_HEAD],
     "layer 0 (Conv2d): padding=9000 is invalid (Input should be less than or equal to 1024"),
    ([{"type": "Conv2d", "out_channels": 16, "kernel_size": 1024, "padding": 512}, *_HEAD],
     f"layer 0 (Conv2d): the model reaches 28,219,277,312 counted FLOPs per sample here, more than the "
     f"{MAX_FLOPS:,} allowed"),
    ([{"type": "Flatten"}, *[{"type": "Linear", "out_features": 16384}] * 3, {"type": "Linear", "out_features": 10}],
     f"layer 2 (Linear): the model reaches 281,313,280 parameters here, more than the {MAX_PARAMETERS:,} allowed"),
    ([{"type": "Flatten"}, {"type": "Linear", "out_features": 1024},
      *[{"type": "Linear", "out_features": 1024}] * 200, {"type": "Linear", "out_features": "outputs"}],
     f"more than the {MAX_PARAMETERS:,} allowed in all"),
    ([{"type": "AdaptiveAvgPool2d", "output_size": [4096, 4096]}, {"type": "Conv2d", "out_channels": 4,
                                                                     "kernel_size": 1}, *_HEAD],
     "layer 1 (Conv2d): its output has 67,108,864 values per sample, more than the 33,554,432 allowed"),
])
def test_a_hostile_spec_is_refused_quickly_and_small(layers: list[dict], message: str) -> None:
    # act: in a child limited to 1.5 GiB of address space and 60 s
    out = run_bounded(_refusal, layers, timeout=60)
    # assert: a clean refusal naming the layer and the cap, in well under a second of work, nothing big
    assert out.error is None, out.message
    msg, seconds = out.value
    assert message in msg
    assert seconds < 5.0 and out.peak_rss_mib < 1024


def test_checking_draws_no_random_numbers_and_counts_what_it_will_build() -> None:
    import torch

    layers = [{"type": "Conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1}, {"type": "ReLU"}, *_HEAD]
    # act
    before = torch.random.get_rng_state()
    budget = check_model(layers, (1, 8, 8), 10)
    after = torch.random.get_rng_state()
    model = build_model(layers, (1, 8, 8), 10)
    # assert
    assert torch.equal(before, after)
    assert budget.params == sum(p.numel() for p in model.parameters())
    assert budget.flops >= 2 * 8 * 8 * 8 * 9  # the convolution's multiply-adds at least


def test_a_model_nested_past_the_layer_cap_is_refused_before_parsing() -> None:
    # 100 residual blocks of 101 layers each: every list is short, the whole is not
    block = {"type": "Residual", "body": [{"type": "ReLU"}] * 101}
    with pytest.raises(ConfigError, match=f"more than {spec_mod.MAX_LAYERS} layers in all"):
        build_model([block] * 100 + _HEAD, (1, 8, 8), 10)


# ------------------------------------------------------------------------------------------------ fuzz
_INT = st.one_of(st.integers(0, 8), st.integers(0, 1 << 20), st.sampled_from([1024, 4096, 9000, 1 << 16]))
_ARG = st.one_of(_INT, st.lists(_INT, min_size=1, max_size=3), st.sampled_from(["same", "valid", "outputs"]),
                 st.booleans(), st.floats(allow_nan=True))
_TYPES = st.sampled_from(["Conv2d", "Conv1d", "Linear", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Flatten",
                          "BatchNorm2d", "GroupNorm", "LayerNorm", "Unflatten", "ReLU", "Residual"])
_KEYS = st.sampled_from(["out_channels", "kernel_size", "padding", "stride", "dilation", "groups", "out_features",
                         "output_size", "num_groups", "start_dim", "dim", "unflattened_size"])
_LAYER = st.builds(lambda t, kw: {"type": t, **kw}, _TYPES, st.dictionaries(_KEYS, _ARG, max_size=4))
_LAYERS = st.lists(_LAYER, min_size=1, max_size=6).map(lambda ls: [
    {"type": "Residual", "body": ls[:2]} if d["type"] == "Residual" else d for d in ls] + _HEAD)


def _fuzz_validator() -> int:
    tried = 0

    # no per-case deadline: the child's 120 s limit bounds the campaign, and a deadline missed on a loaded
    # machine makes Hypothesis replay the case and report a flaky strategy instead of a finding
    @settings(max_examples=150, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(_LAYERS, st.sampled_from([(1, 28, 28), (3, 32, 32), (4, 64), (784,)]))
    def check(layers: list[dict], shape: tuple[int, ...]) -> None:
        nonlocal tried
        tried += 1
        try:
            check_model(layers, shape, 10)
        except ConfigError:
            pass  # the only way a spec may be refused

    check()
    return tried


def test_the_spec_validator_fuzzed_under_a_memory_and_time_limit() -> None:
    # act: 150 hostile-ish specs in a child with 1.5 GiB of address space and 120 s in all
    out = run_bounded(_fuzz_validator, timeout=120)
    # assert: no error other than ConfigError, no MemoryError, every case tried
    assert out.error is None, f"{out.error}: {out.message}"
    assert out.value == 150 and out.peak_rss_mib < 1024


def test_ten_thousand_cheap_layers_validate_in_seconds() -> None:
    check_model(_HEAD, (1, 8, 8), 10)  # warm the meta kernels
    layers = [{"type": "Conv2d", "out_channels": 4, "kernel_size": 1}, {"type": "BatchNorm2d"}, {"type": "ReLU"},
              {"type": "GroupNorm", "num_groups": 2}, {"type": "LayerNorm"}] * 1999 + _HEAD
    t0 = time.perf_counter()
    budget = check_model(layers, (4, 8, 8), 10)
    assert budget.params > 0 and time.perf_counter() - t0 < 20


def _allocate(n: int) -> int:
    return len(bytearray(n))


def test_the_bounded_child_really_is_bounded() -> None:
    # the harness above can fail: 3 GiB is refused under its 1.5 GiB budget, 64 MiB is not
    big, small = run_bounded(_allocate, 3 << 30, timeout=60), run_bounded(_allocate, 64 << 20, timeout=60)
    assert big.error == "MemoryError"
    assert small.error is None and small.value == 64 << 20


def test_a_large_test_process_does_not_leak_into_the_childs_figures() -> None:
    # prepare: the test process holds 1.5 GiB resident, as the full suite's process once did
    held = bytearray(3 << 29)
    held[:: 1 << 12] = b"x" * len(held[:: 1 << 12])
    # act: a child that itself needs 64 MiB
    out = run_bounded(_allocate, 64 << 20, timeout=60)
    # assert: the child runs and reports its own peak, not the test process's
    assert out.error is None and out.peak_rss_mib < 1024, out
    del held
