"""The allowlist of layer types a model file may use: name → ``torch.nn`` class, its keyword arguments
(typed, validated by pydantic) and which of them are filled in from the input's shape when left out.

Nothing outside this table can be built from a model file: a party never imports, evaluates or unpickles
anything it received, it only calls one of these constructors with checked numbers, booleans and words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from torch import nn

#: the value of ``out_features`` / ``out_channels`` that stands for the run's output width
#: (the number of classes, times ``labels.expansion`` under label obfuscation)
OUTPUTS = "outputs"

_I1 = Annotated[int, Field(ge=1)]
_Free = Annotated[int, Field(ge=1, le=1 << 16)]  # a width a file chooses (not one checked against the input)
_K = Annotated[int, Field(ge=1, le=1 << 12)]
_Size = _K | list[_K]
#: the most zero padding a layer may add on a side: more only adds border that is all zeros (or copies), and
#: padding is what lets a one-tap convolution ask for an output of any size
MAX_PADDING = 1 << 10
_P = Annotated[int, Field(ge=0, le=MAX_PADDING)]
_Pad = _P | list[_P] | Literal["same", "valid"]
_Eps = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
_Unit = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
_Float = Annotated[float, Field(allow_inf_nan=False)]
_Width = _Free | Literal["outputs"]

_CONV = {"in_channels": _I1, "out_channels": _Width, "kernel_size": _Size, "stride": _Size, "padding": _Pad,
         "dilation": _Size, "groups": _I1, "bias": bool,
         "padding_mode": Literal["zeros", "reflect", "replicate", "circular"]}
_BN = {"num_features": _I1, "eps": _Eps, "momentum": _Unit | None, "affine": bool, "track_running_stats": bool}
_MAXPOOL = {"kernel_size": _Size, "stride": _Size, "padding": _P | list[_P], "dilation": _Size, "ceil_mode": bool}
_AVGPOOL = {"kernel_size": _Size, "stride": _Size, "padding": _P | list[_P], "ceil_mode": bool,
            "count_include_pad": bool}


@dataclass(frozen=True)
class LayerType:
    """One allowlisted layer type.

    ``infer`` maps an argument to what fills it in when a model file leaves it out: ``"channels"`` (the
    input's first per-sample dimension), ``"features"`` (its last) or ``"shape"`` (the whole per-sample
    shape). ``ranks`` are the per-sample input ranks the layer accepts (``None``: any).
    """

    cls: type[nn.Module]
    args: dict[str, Any] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    infer: dict[str, str] = field(default_factory=dict)
    ranks: tuple[int, ...] | None = None

    def schema(self, name: str) -> type[BaseModel]:
        """The pydantic model of this type's keyword arguments (strict: ``3.0`` is not an int)."""
        fields: dict[str, Any] = {k: (v, None) for k, v in self.args.items()}  # left out: torch's default
        return create_model(name, __config__=ConfigDict(extra="forbid", strict=True, frozen=True), **fields)


def _conv(cls: type[nn.Module], rank: int) -> LayerType:
    return LayerType(cls, _CONV, ("out_channels", "kernel_size"), {"in_channels": "channels"}, (rank,))


def _bn(cls: type[nn.Module], ranks: tuple[int, ...]) -> LayerType:
    return LayerType(cls, _BN, (), {"num_features": "channels"}, ranks)


_PLAIN = {"ReLU": nn.ReLU, "Tanh": nn.Tanh, "Sigmoid": nn.Sigmoid, "SiLU": nn.SiLU, "Identity": nn.Identity}

#: name in a model file → its type; "Residual" is built by :mod:`clicooper.models.spec` (body + shortcut)
LAYERS: dict[str, LayerType] = {
    "Linear": LayerType(nn.Linear, {"in_features": _I1, "out_features": _Width, "bias": bool}, ("out_features",),
                        {"in_features": "features"}),
    "Conv1d": _conv(nn.Conv1d, 2),
    "Conv2d": _conv(nn.Conv2d, 3),
    "BatchNorm1d": _bn(nn.BatchNorm1d, (1, 2)),
    "BatchNorm2d": _bn(nn.BatchNorm2d, (3,)),
    "GroupNorm": LayerType(nn.GroupNorm, {"num_groups": _Free, "num_channels": _I1, "eps": _Eps, "affine": bool},
                           ("num_groups",), {"num_channels": "channels"}),
    "LayerNorm": LayerType(nn.LayerNorm, {"normalized_shape": _Size, "eps": _Eps, "elementwise_affine": bool,
                                          "bias": bool}, (), {"normalized_shape": "shape"}),
    **{n: LayerType(c) for n, c in _PLAIN.items()},
    "LeakyReLU": LayerType(nn.LeakyReLU, {"negative_slope": _Float}),
    "ELU": LayerType(nn.ELU, {"alpha": _Float}),
    "GELU": LayerType(nn.GELU, {"approximate": Literal["none", "tanh"]}),
    "MaxPool1d": LayerType(nn.MaxPool1d, _MAXPOOL, ("kernel_size",), ranks=(2,)),
    "MaxPool2d": LayerType(nn.MaxPool2d, _MAXPOOL, ("kernel_size",), ranks=(3,)),
    "AvgPool1d": LayerType(nn.AvgPool1d, _AVGPOOL, ("kernel_size",), ranks=(2,)),
    "AvgPool2d": LayerType(nn.AvgPool2d, _AVGPOOL, ("kernel_size",), ranks=(3,)),
    "AdaptiveAvgPool1d": LayerType(nn.AdaptiveAvgPool1d, {"output_size": _Size}, ("output_size",), ranks=(2,)),
    "AdaptiveAvgPool2d": LayerType(nn.AdaptiveAvgPool2d, {"output_size": _Size}, ("output_size",), ranks=(3,)),
    "AdaptiveMaxPool2d": LayerType(nn.AdaptiveMaxPool2d, {"output_size": _Size}, ("output_size",), ranks=(3,)),
    "Flatten": LayerType(nn.Flatten, {"start_dim": int, "end_dim": int}),
    "Unflatten": LayerType(nn.Unflatten, {"dim": int, "unflattened_size": list[_I1]}, ("dim", "unflattened_size")),
    "Dropout": LayerType(nn.Dropout, {"p": _Unit}),
    "Dropout2d": LayerType(nn.Dropout2d, {"p": _Unit}, ranks=(3,)),
}

#: the residual block's own keys besides ``type``
RESIDUAL = "Residual"
RESIDUAL_KEYS = ("body", "shortcut")

_SCHEMAS: dict[str, type[BaseModel]] = {}


def schema_of(name: str) -> type[BaseModel]:
    """The (cached) argument schema of allowlisted type ``name``."""
    if name not in _SCHEMAS:
        _SCHEMAS[name] = LAYERS[name].schema(name)
    return _SCHEMAS[name]


def allowed_types() -> list[str]:
    """Every type name a model file may use."""
    return sorted([*LAYERS, RESIDUAL])
