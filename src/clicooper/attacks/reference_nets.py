"""The attack networks of FORA's and SDAR's reference code, rebuilt in torch for any cut shape.

FORA (github.com/X1aoyangXu/FORA, ``model.py``): the critic ``cifar_discriminator_model`` (Conv 128 → Conv 256,
six ResBlocks of 256 channels without batch norm, a strided Conv 256 and a linear read-out) and the inverse
network ``cifar_decoder`` (ConvTranspose 256 → Conv to the image channels, batch norm, LeakyReLU 0.2, tanh).

SDAR (github.com/zhxchd/SDAR_SplitNN, ``src/models/attacker_models.py``, Keras): ``make_simulator_discriminator``,
``make_decoder`` (unconditional, the U-shape's; ``width="standard"``) and ``make_decoder_discriminator``; Keras'
batch norm ``momentum=0.9, epsilon=1e-5`` is torch's ``momentum=0.1, eps=1e-5``.

Both codes were written for 32 × 32 CIFAR images cut at a 16 × 16 (or 8 × 8, 4 × 4) feature map. Here the
stem is chosen by the cut's resolution relative to the image, as the reference chooses it by the cut level:
a cut at half the image's resolution (``fmnist-cnn``'s 14 × 14 of 28 × 28) gets exactly the reference's
half-resolution networks (FORA level ≤ 2, SDAR level 4), and the linear read-outs take whatever the strided
convolutions leave (for 14 × 14: 2 × 2 × 256 = 1,024 inputs, as on CIFAR). A flat cut (a dense layer) has no
reference network: it gets the same widths and depths with linear layers in the critics, and a linear
projection to the half-resolution map in the decoders.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _up_stages(in_shape: tuple[int, ...], out_hw: tuple[int, int]) -> int:
    """How many ×2 upsamplings take a (C, h, w) cut to the image's resolution (0 for a full-resolution cut)."""
    return max(0, round(math.log2(max(1.0, out_hw[0] / in_shape[1]))))


class _Fit(nn.Module):
    """Resize to the image's (H, W) when the stages do not land on it exactly (e.g. 7 → 28 is exact, 5 → 28 is not)."""

    def __init__(self, hw: tuple[int, int]) -> None:
        super().__init__()
        self.hw = hw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.hw:
            return x
        return nn.functional.interpolate(x, size=self.hw, mode="bilinear", align_corners=False)


def _flat_stem(in_shape: tuple[int, ...], channels: int, hw: tuple[int, int]) -> tuple[nn.Module, tuple[int, int, int]]:
    """A flat cut projected linearly to a (channels, H/2, W/2) map: the half-resolution cut the networks expect."""
    h, w = max(1, math.ceil(hw[0] / 2)), max(1, math.ceil(hw[1] / 2))
    stem = nn.Sequential(nn.Flatten(), nn.Linear(int(math.prod(in_shape)), channels * h * w), nn.ReLU(),
                         nn.Unflatten(1, (channels, h, w)))
    return stem, (channels, h, w)


def _read_out(body: nn.Module, in_shape: tuple[int, ...]) -> int:
    """The number of values ``body`` leaves for one sample of ``in_shape`` (sizes the linear read-out)."""
    with torch.no_grad():
        return int(math.prod(body(torch.zeros((2, *in_shape))).shape[1:]))


class _ResBlock(nn.Module):
    """FORA's ``ResBlock`` without batch norm: x + conv(relu(conv(relu(x))))."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(torch.relu(x))))


class _ResLinear(nn.Module):
    """The flat-cut stand-in of :class:`_ResBlock`: x + linear(relu(linear(relu(x))))."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.l2(torch.relu(self.l1(torch.relu(x))))


class ForaCritic(nn.Module):
    """FORA's WGAN critic of cut-layer features (``cifar_discriminator_model``). The stem follows the cut's
    size as the reference's levels do: ≥ 8 rows: Conv 128 s2, ReLU, Conv 256 s2 (levels ≤ 2); 4–7 rows: Conv
    256 s2 (level 3); fewer: Conv 256 s1 (level 4). Then six ResBlocks of 256, Conv 256 s2, a linear read-out."""

    def __init__(self, in_shape: tuple[int, ...]) -> None:
        super().__init__()
        if len(in_shape) == 3:
            c, h = in_shape[0], in_shape[1]
            stem: list[nn.Module] = ([nn.Conv2d(c, 128, 3, 2, 1), nn.ReLU(), nn.Conv2d(128, 256, 3, 2, 1)] if h >= 8
                                     else [nn.Conv2d(c, 256, 3, 2, 1)] if h >= 4 else [nn.Conv2d(c, 256, 3, 1, 1)])
            body = nn.Sequential(*stem, *[_ResBlock(256) for _ in range(6)], nn.Conv2d(256, 256, 3, 2, 1), nn.Flatten())
        else:
            body = nn.Sequential(nn.Flatten(), nn.Linear(int(math.prod(in_shape)), 256),
                                 *[_ResLinear(256) for _ in range(6)], nn.ReLU(), nn.Linear(256, 256))
        self.net = nn.Sequential(body, nn.Linear(_read_out(body, in_shape), 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).flatten()


class ForaDecoder(nn.Module):
    """FORA's inverse network (``cifar_decoder``): per ×2 upsampling a ConvTranspose (256, then 128, 64) with
    batch norm and LeakyReLU 0.2 (a stride-1 Conv 256 for a full-resolution cut), then a Conv to the image's
    channels, batch norm and tanh. The reference's tanh output lives in images normalised to [−1, 1]; here it
    is mapped back to [0, 1] as the reference's ``DeNormalize(0.5, 0.5)`` does."""

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        super().__init__()
        c_out, hw = out_shape[0], (out_shape[1], out_shape[2])
        layers: list[nn.Module] = []
        if len(in_shape) != 3:
            stem, in_shape = _flat_stem(in_shape, 256, hw)
            layers.append(stem)
        c, k = in_shape[0], _up_stages(in_shape, hw)
        if k == 0:
            layers += [nn.Conv2d(c, 256, 3, 1, 1), nn.BatchNorm2d(256), nn.LeakyReLU(0.2)]
            c = 256
        for i in range(k):
            width = max(256 >> i, 64)
            layers += [nn.ConvTranspose2d(c, width, 3, 2, 1, output_padding=1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2)]
            c = width
        layers += [_Fit(hw), nn.Conv2d(c, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (self.net(z) + 1) / 2


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, momentum=0.1, eps=1e-5)  # Keras BatchNormalization(momentum=0.9, epsilon=1e-5)


def _conv_bn_lrelu(c_in: int, c_out: int, stride: int, bn: bool = True) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1), *([_bn(c_out)] if bn else []), nn.LeakyReLU(0.2)]


class SdarSimulatorCritic(nn.Module):
    """SDAR's discriminator of cut-layer features (``make_simulator_discriminator``, standard widths 32, 64,
    128, 256). By the cut's resolution: full (level 3): Conv 32, Conv 64 s2, Conv 128 s2, three Conv 256, Conv
    256 s2; half (levels 4–6): Conv 64, Conv 128 s2, three Conv 256, Conv 256 s2; a quarter or less (levels 7–9):
    Conv 128, three Conv 256, Conv 256 s2. LeakyReLU 0.2, batch norm after all but the first and last; then
    dropout 0.4 and a linear logit. A flat cut: the half-resolution widths as linear layers."""

    def __init__(self, in_shape: tuple[int, ...], image_hw: tuple[int, int]) -> None:
        super().__init__()
        if len(in_shape) == 3:
            c, k = in_shape[0], _up_stages(in_shape, image_hw)
            if k == 0:
                stem = [*_conv_bn_lrelu(c, 32, 1, bn=False), *_conv_bn_lrelu(32, 64, 2), *_conv_bn_lrelu(64, 128, 2)]
                c = 128
            elif k == 1:
                stem, c = [*_conv_bn_lrelu(c, 64, 1, bn=False), *_conv_bn_lrelu(64, 128, 2)], 128
            else:
                stem, c = _conv_bn_lrelu(c, 128, 1, bn=False), 128
            body: nn.Module = nn.Sequential(*stem, *_conv_bn_lrelu(c, 256, 1), *_conv_bn_lrelu(256, 256, 1),
                                            *_conv_bn_lrelu(256, 256, 1), nn.Conv2d(256, 256, 3, 2, 1), nn.Flatten())
        else:
            d = int(math.prod(in_shape))
            body = nn.Sequential(nn.Flatten(), nn.Linear(d, 64), nn.LeakyReLU(0.2), nn.Linear(64, 128),
                                 nn.BatchNorm1d(128), nn.LeakyReLU(0.2),
                                 *[m for _ in range(3) for m in (nn.Linear(256 if _ else 128, 256), nn.BatchNorm1d(256),
                                                                 nn.LeakyReLU(0.2))],
                                 nn.Linear(256, 256))
        self.net = nn.Sequential(body, nn.Dropout(0.4), nn.Linear(_read_out(body.eval(), in_shape), 1))
        body.train()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).flatten()


class SdarImageCritic(nn.Module):
    """SDAR's discriminator of images (``make_decoder_discriminator``): Conv 64, Conv 128 s2 + BN, Conv 128 s2
    + BN, Conv 256 s2, LeakyReLU 0.2 throughout, dropout 0.4, a linear logit."""

    def __init__(self, in_shape: tuple[int, ...]) -> None:
        super().__init__()
        body = nn.Sequential(*_conv_bn_lrelu(in_shape[0], 64, 1, bn=False), *_conv_bn_lrelu(64, 128, 2),
                             *_conv_bn_lrelu(128, 128, 2), *_conv_bn_lrelu(128, 256, 2, bn=False), nn.Flatten())
        self.net = nn.Sequential(body, nn.Dropout(0.4), nn.Linear(_read_out(body.eval(), in_shape), 1))
        body.train()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


class SdarDecoder(nn.Module):
    """SDAR's decoder (``make_decoder``, unconditional as in the U-shape, standard widths 16, 32, 64, ``deep``):
    per ×2 upsampling an Upsample + Conv (64 for the second, 32 for the last) with batch norm and ReLU, then
    three stride-1 ConvTranspose 16 with batch norm and ReLU, and a Conv to the image channels with a sigmoid.
    This is the reference's level 4 (one upsampling), 7 (two) or 3 (none); its deeper levels' extra
    stride-1 layers belong to deeper cuts than any of this library's heads."""

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        super().__init__()
        c_out, hw = out_shape[0], (out_shape[1], out_shape[2])
        layers: list[nn.Module] = []
        if len(in_shape) != 3:
            stem, in_shape = _flat_stem(in_shape, 32, hw)
            layers.append(stem)
        c, k = in_shape[0], _up_stages(in_shape, hw)
        for i in range(k):
            width = 32 if i == k - 1 else 64
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(c, width, 3, 1, 1), _bn(width), nn.ReLU()]
            c = width
        layers.append(_Fit(hw))
        for _ in range(3):
            layers += [nn.ConvTranspose2d(c, 16, 3, 1, 1), _bn(16), nn.ReLU()]
            c = 16
        layers += [nn.Conv2d(c, c_out, 3, 1, 1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
