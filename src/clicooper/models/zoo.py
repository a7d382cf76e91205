"""Built-in models, each an ordered list of layers (an ``nn.Sequential``).

``fmnist-cnn`` is exactly the reference model of docs/design/protocol.md#reference-model; the attack figures are anchored on it, so it
must not change. Privacy-oriented architectures get their own names. Where it reads well a built-in is
written as a spec, the form of a model file (:mod:`clicooper.models.spec`), so it doubles as an example:
``fmnist-cnn``, ``digits-mlp``, ``digits-cnn``, ``fmnist-resnet`` and ``cifar-resnet``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from clicooper.errors import ConfigError
from clicooper.models import private, spec

Builder = Callable[[tuple[int, ...], int], nn.Sequential]
_REGISTRY: dict[str, tuple[Builder, str]] = dict(private.MODELS)  # the privacy-oriented models
_SPECS: dict[str, list[dict[str, Any]]] = {}  # the built-ins written as specs


def register(name: str, doc: str) -> Callable[[Builder], Builder]:
    """Register a model builder ``f(input_shape, num_outputs) -> nn.Sequential``."""

    def deco(f: Builder) -> Builder:
        _REGISTRY[name] = (f, doc)
        return f

    return deco


def register_spec(name: str, doc: str, layers: list[dict[str, Any]], *, hw: tuple[int, int] | None = None) -> None:
    """Register a built-in written as a spec (``hw``: the only input height×width it accepts, if any)."""

    def builder(input_shape: tuple[int, ...], num_outputs: int) -> nn.Sequential:
        if hw is not None and len(input_shape) != 3:
            raise ConfigError(private.image_model_problem(name, input_shape, f"(C, {hw[0]}, {hw[1]})"))
        if hw is not None and tuple(input_shape[1:]) != hw:
            raise ConfigError(f"{name} expects {hw[0]}×{hw[1]} inputs, got "
                              f"{'×'.join(str(s) for s in input_shape[1:])}; use another --model")
        return spec.build_model(layers, input_shape, num_outputs)

    _SPECS[name] = layers
    _REGISTRY[name] = (builder, doc)


def spec_of(name: str) -> list[dict[str, Any]] | None:
    """The spec of built-in ``name`` (the content of its model file), or ``None`` for a code-built one."""
    return _SPECS.get(name)


def names() -> list[str]:
    """Names of the built-in models."""
    return sorted(_REGISTRY)


def describe(name: str) -> str:
    """One-line description of a built-in model."""
    return _REGISTRY[name][1]


def build(name: str, input_shape: tuple[int, ...], num_outputs: int, *, seed: int) -> nn.Sequential:
    """Build model ``name`` with weights initialised from ``seed`` (public: weights are not secret)."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(names())} (or --model-file)")
    return _seeded(seed, lambda: _REGISTRY[name][0](tuple(input_shape), num_outputs))


def build_spec(layers: Any, input_shape: tuple[int, ...], num_outputs: int, *, seed: int) -> nn.Sequential:
    """Build a model file's spec with weights initialised from ``seed`` (validated first)."""
    return _seeded(seed, lambda: spec.build_model(layers, tuple(input_shape), num_outputs))


def build_model(name: str, model_spec: Any, input_shape: tuple[int, ...], num_outputs: int, *,
                seed: int) -> nn.Sequential:
    """A run's model: its ``model_spec`` (a model file's layers) when given, else the built-in ``name``."""
    if model_spec is not None:
        return build_spec(model_spec, input_shape, num_outputs, seed=seed)
    return build(name, input_shape, num_outputs, seed=seed)


def _seeded(seed: int, make: Callable[[], nn.Sequential]) -> nn.Sequential:
    """``make()`` under ``torch.manual_seed(seed)``, the global RNG restored afterwards."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return make()
    finally:
        torch.random.set_rng_state(gen_state)


register_spec("fmnist-cnn", "reference CNN (docs/design/protocol.md#reference-model): conv32-pool | conv64-pool | fc128 | fc10", [
    # head conv(1→32) | T1 conv(32→64) | T2 flatten+fc128 | tail fc(→classes)
    {"type": "Conv2d", "out_channels": 32, "kernel_size": 3, "padding": 1}, {"type": "ReLU"},
    {"type": "MaxPool2d", "kernel_size": 2},  # (32, 14, 14)
    {"type": "Conv2d", "out_channels": 64, "kernel_size": 3, "padding": 1}, {"type": "ReLU"},
    {"type": "MaxPool2d", "kernel_size": 2},  # (64, 7, 7)
    {"type": "Flatten"}, {"type": "Linear", "out_features": 128}, {"type": "ReLU"},  # (128,)
    {"type": "Linear", "out_features": "outputs"},  # (classes,)
], hw=(28, 28))

# Small MLP used in fast tests; deep enough for K ≤ 3 (U-shape) or 4 (open tail).
register_spec("digits-mlp", "MLP for 8×8 digits: fc256 | fc256 | fc256 | fc64 | fc(classes)", [
    {"type": "Flatten"}, {"type": "Linear", "out_features": 256}, {"type": "ReLU"},
    {"type": "Linear", "out_features": 256}, {"type": "ReLU"},
    {"type": "Linear", "out_features": 256}, {"type": "ReLU"},
    {"type": "Linear", "out_features": 64}, {"type": "ReLU"},
    {"type": "Linear", "out_features": "outputs"},
])


@register("tabular-mlp", "MLP for tabular features (F,): fc128 | fc128 | fc128 | fc64 | fc(classes)")
def tabular_mlp(input_shape: tuple[int, ...], num_outputs: int) -> nn.Sequential:
    """MLP for ``csv:`` tables (input ``(F,)``); deep enough for K ≤ 3 (U-shape) or 4 (open tail)."""
    f = 1
    for s in input_shape:
        f *= s
    return nn.Sequential(
        nn.Flatten(), nn.Linear(f, 128), nn.ReLU(),  # (B, 128)
        nn.Linear(128, 128), nn.ReLU(),
        nn.Linear(128, 128), nn.ReLU(),
        nn.Linear(128, 64), nn.ReLU(),  # (B, 64)
        nn.Linear(64, num_outputs),
    )


# Small CNN for fast inversion/attack tests on digits.
register_spec("digits-cnn", "small CNN for 8×8 digits: conv16 | conv32-pool | fc64 | fc(classes)", [
    {"type": "Conv2d", "out_channels": 16, "kernel_size": 3, "padding": 1}, {"type": "ReLU"},  # (16, 8, 8)
    {"type": "Conv2d", "out_channels": 32, "kernel_size": 3, "padding": 1}, {"type": "ReLU"},
    {"type": "MaxPool2d", "kernel_size": 2},  # (32, 4, 4)
    {"type": "Flatten"}, {"type": "Linear", "out_features": 64}, {"type": "ReLU"},
    {"type": "Linear", "out_features": "outputs"},
])


# ---------------------------------------------------------------------------------------- residual networks
def _conv(out: int, k: int = 3, stride: int = 1) -> dict[str, Any]:
    """A bias-free k×k convolution with "same" padding (a BatchNorm follows it)."""
    return {"type": "Conv2d", "out_channels": out, "kernel_size": k, "stride": stride, "padding": k // 2,
            "bias": False}


_BN, _RELU = {"type": "BatchNorm2d"}, {"type": "ReLU"}


def _block(out: int, stride: int = 1, project: bool = False) -> list[dict[str, Any]]:
    """A basic residual block (two 3×3 convolutions) and the ReLU after the sum; ``project``: a 1×1
    convolution on the shortcut where the width or the resolution changes."""
    block: dict[str, Any] = {"type": "Residual", "body": [_conv(out, stride=stride), _BN, _RELU, _conv(out), _BN]}
    if project:
        block["shortcut"] = [_conv(out, k=1, stride=stride), _BN]
    return [block, _RELU]


def _resnet(stem: int, width: int) -> list[dict[str, Any]]:
    """Stem | block(width) | block(2·width, stride 2) | block(2·width) | global average pool | fc.

    The DO's head is the stem alone: ONE strided 3×3 convolution (a linear map, no bias: a BatchNorm
    follows; its unit has no parameter-free layer after it, the BatchNorm starts the next unit), so the
    DO-alone model (head + a linear layer) is a linear classifier and the trainers' blocks carry the
    accuracy. The DO's tail is the final Linear (with the Flatten before it); the three residual blocks,
    with every BatchNorm, go to the trainers (none is in the DO's head or tail, so DP defenses accept it).
    """
    return [
        {"type": "Conv2d", "out_channels": stem, "kernel_size": 3, "stride": 2, "padding": 1, "bias": False},  # DO
        _BN, _RELU,
        *_block(width, project=True),
        *_block(2 * width, stride=2, project=True),
        *_block(2 * width),
        {"type": "AdaptiveAvgPool2d", "output_size": 1},
        {"type": "Flatten"}, {"type": "Linear", "out_features": "outputs"},  # DO tail
    ]


def _resnet_stages(stem: int, widths: tuple[int, ...], blocks: int) -> list[dict[str, Any]]:
    """ResNet-20-style (He et al. 2016, §4.2): a stride-1 stem, then ``blocks`` residual blocks per width,
    each stage after the first halving the resolution. The DO's head is the stem alone (one bias-free
    3×3 convolution, as in :func:`_resnet`), its tail the final Linear."""
    layers: list[dict[str, Any]] = [
        {"type": "Conv2d", "out_channels": stem, "kernel_size": 3, "stride": 1, "padding": 1, "bias": False},  # DO
        _BN, _RELU,
    ]
    prev = stem
    for s, w in enumerate(widths):
        for b in range(blocks):
            first = b == 0
            layers += _block(w, stride=2 if first and s > 0 else 1, project=first and (w != prev or s > 0))
        prev = w
    return [*layers, {"type": "AdaptiveAvgPool2d", "output_size": 1},
            {"type": "Flatten"}, {"type": "Linear", "out_features": "outputs"}]  # DO tail


register_spec("fmnist-resnet", "residual CNN for 28×28: conv32/2 (DO) | res48 | res96/2 | res96 | avgpool fc",
              _resnet(32, 48), hw=(28, 28))
register_spec("cifar-resnet", "residual CNN for 32×32×3: conv32/2 (DO) | res64 | res128/2 | res128 | avgpool fc",
              _resnet(32, 64), hw=(32, 32))
register_spec("fmnist-resnet20", "ResNet-20-style for 28×28: conv16 (DO) | 3×res16 | 3×res32/2 | 3×res64/2 | "
              "avgpool fc", _resnet_stages(16, (16, 32, 64), 3), hw=(28, 28))


# ------------------------------------------------------------- residual trainers behind a private cut (issue 14)
def _resnet_trainers(width: int) -> list[dict[str, Any]]:
    """What follows the DO's head in :func:`_resnet`: BatchNorm + ReLU on the received cut, the three residual
    blocks, pooling and the DO's final Linear."""
    return _resnet(1, width)[1:]


def _private_resnet(k: int, *, width: int = 48, channels: int = 32) -> Builder:
    """Head = :class:`~clicooper.models.private.SpatialBottleneckHead` (conv ``channels`` 5×5/2 + ReLU + 1×1 to
    ``k`` channels + 2×2 average pool + L2 norm: a unit-norm k×H/4×W/4 cut, so the clip of docs/design/mechanisms.md#activation-protection is exact)
    | the residual trainers of ``fmnist-resnet`` | the DO's Linear tail."""

    def build(input_shape: tuple[int, ...], num_outputs: int) -> nn.Sequential:
        if len(input_shape) != 3:
            raise ConfigError(private.image_model_problem("this model", input_shape))
        c, h, w = input_shape
        head = private.SpatialBottleneckHead(c, (h, w), k, channels=channels)
        rest = spec.build_model(_resnet_trainers(width), (k, h // 4, w // 4), num_outputs)
        return nn.Sequential(head, *rest)

    return build


#: the residual models with a private (spatial bottleneck, unit-norm) cut: name → cut channels
PRIVATE_RESNETS = {"fmnist-resnet-s4": 4, "fmnist-resnet-s8": 8, "fmnist-resnet-s16": 16}
for _name, _k in PRIVATE_RESNETS.items():
    register(_name, f"private residual: conv32 5×5/2 + 1×1→{_k} + avgpool, unit norm ({_k}×7×7 cut, DO) | "
                    "res48 | res96/2 | res96 | avgpool fc")(_private_resnet(_k))


# ------------------------------------------------------------------------- the depth axis of fmnist-resnet20
_GN = {"type": "GroupNorm", "num_groups": 8}  # the DO's norm: BatchNorm mixes the samples a DP release protects


def _do_block(out: int) -> list[dict[str, Any]]:
    """:func:`_block` with GroupNorm instead of BatchNorm, for a residual block the DO computes (a release made
    from batch statistics is refused under DP defenses: :func:`clicooper.models.blueprint.check_batch_norm`)."""
    return [{"type": "Residual", "body": [_conv(out), _GN, _RELU, _conv(out), _GN]}, _RELU]


#: The tails of the depth axis: the final Linear (as ``fmnist-resnet20``), a small MLP (two hidden layers of
#: 128 on the pooled 64-d features), or the last residual block with the pooling and the Linear.
RESNET20_TAILS = ("linear", "mlp", "block")
#: The DO's head blocks of the depth axis: the stem alone (as ``fmnist-resnet20``), + one or + two blocks.
RESNET20_HEADS = (0, 1, 2)


def resnet20_depth_name(head_blocks: int, tail: str) -> str:
    """The built-in name of a depth-axis variant: ``fmnist-resnet20`` with ``-hN`` for N residual blocks in
    the DO's head and ``-tmlp`` / ``-tblock`` for a thicker DO tail (the stem alone and the Linear tail
    are ``fmnist-resnet20`` itself)."""
    if head_blocks not in RESNET20_HEADS or tail not in RESNET20_TAILS:
        raise ConfigError(f"no depth variant with {head_blocks} head blocks and tail {tail!r}; head blocks "
                          f"{RESNET20_HEADS}, tails {RESNET20_TAILS}")
    return "fmnist-resnet20" + (f"-h{head_blocks}" if head_blocks else "") + ("" if tail == "linear" else f"-t{tail}")


def _resnet20_depth(head_blocks: int, tail: str) -> Builder:
    """``fmnist-resnet20`` with ``head_blocks`` of its first stage's residual blocks moved into the DO's head
    and its tail as ``tail`` (:data:`RESNET20_TAILS`). The layers the DO computes use GroupNorm (8 groups);
    the trainers' blocks keep BatchNorm. The DO's head and tail are each ONE layer of the ``nn.Sequential``
    (a nested ``nn.Sequential``), so the partitioner puts all of it at the DO (a head or tail is one unit);
    the cut is 16×28×28 for every head, as for ``fmnist-resnet20``."""

    def build(input_shape: tuple[int, ...], num_outputs: int) -> nn.Sequential:
        name = resnet20_depth_name(head_blocks, tail)
        if len(input_shape) != 3:
            raise ConfigError(private.image_model_problem(name, input_shape, "(C, 28, 28)"))
        if tuple(input_shape[1:]) != (28, 28):
            raise ConfigError(f"{name} expects 28×28 inputs, got "
                              f"{'×'.join(str(s) for s in input_shape[1:])}; use another --model")
        base = _resnet_stages(16, (16, 32, 64), 3)
        stem, trainers = base[0], base[1:-3]  # trainers: BN + ReLU, then 9 × (block, ReLU), then the pool
        if head_blocks:
            # the stem's BatchNorm + ReLU and the first head_blocks blocks move to the DO, with GroupNorm
            head = [stem, _GN, _RELU, *[x for _ in range(head_blocks) for x in _do_block(16)]]
            trainers = trainers[2 + 2 * head_blocks:]
        else:
            head = [stem]
        if tail == "block":  # the last block (64 → 64, stride 1, no projection) moves to the DO
            trainers = trainers[:-2]
            tail_spec = [*_do_block(64), {"type": "AdaptiveAvgPool2d", "output_size": 1}, {"type": "Flatten"},
                         {"type": "Linear", "out_features": "outputs"}]
        else:
            trainers = [*trainers, {"type": "AdaptiveAvgPool2d", "output_size": 1}]  # the pool stays with them
            hidden = [{"type": "Linear", "out_features": 128}, _RELU] * 2 if tail == "mlp" else []
            tail_spec = [{"type": "Flatten"}, *hidden, {"type": "Linear", "out_features": "outputs"}]
        # built (and validated) as one flat spec, then grouped: grouping moves no weight
        flat = list(spec.build_model([*head, *trainers, *tail_spec], input_shape, num_outputs))
        nh, nt = len(head), len(tail_spec)
        grouped = [nn.Sequential(*flat[:nh]) if nh > 1 else flat[0], *flat[nh:len(flat) - nt],
                   nn.Sequential(*flat[len(flat) - nt:])]
        return nn.Sequential(*grouped)

    return build


for _h in RESNET20_HEADS:
    for _t in RESNET20_TAILS:
        if (_h, _t) != (0, "linear"):
            register(resnet20_depth_name(_h, _t),
                     f"fmnist-resnet20, DO head conv16{' + ' + str(_h) + '×res16 (GroupNorm)' if _h else ''} | "
                     f"{9 - _h - (_t == 'block')} residual blocks{'' if _t == 'block' else ', avgpool'} | DO tail "
                     + {"linear": "fc", "mlp": "fc128 fc128 fc", "block": "res64 (GroupNorm) avgpool fc"}[_t]
                     )(_resnet20_depth(_h, _t))
