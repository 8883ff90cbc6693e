"""The straightforward, layer-by-layer AT-BSN of DESIGN.md, kept as the executable specification.

Every step is written the way the method is described: pad a zero row on top, convolve, drop the last row;
stack the four rotations on the batch axis; shift each map down by (k + 1) // 2 rows; rotate back and
concatenate; three 1x1 convolutions. Square inputs with sides divisible by 32 only, as in the authors'
code. The fast networks of :mod:`atbsn.teacher` and :mod:`atbsn.students` load the same state dicts and
must match these outputs (tests) and beat their speed (``benchmarks/speed.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blindspot import validate_k


def _blind_conv(conv: nn.Conv2d, x: torch.Tensor, blind: bool, replicate: bool = False) -> torch.Tensor:
    if blind:
        x = F.pad(x, (0, 0, 1, 0))  # one zero row on top
    x = F.pad(x, (1, 1, 1, 1), mode="replicate" if replicate else "constant")
    x = F.conv2d(x, conv.weight, conv.bias)
    if blind:
        x = x[:, :, :-1, :]  # drop the last row
    return F.leaky_relu(x, 0.1)


def _pool(x: torch.Tensor, blind: bool) -> torch.Tensor:
    if blind:
        x = F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]
    return F.max_pool2d(x, 2)


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


def unet_reference(unet: nn.Module, inp: torch.Tensor, blind: bool) -> torch.Tensor:
    """The five-level UNet of DESIGN.md, one layer at a time (weights taken from ``unet``)."""
    def conv(name: str, x: torch.Tensor) -> torch.Tensor:
        return _blind_conv(unet.get_submodule(name).conv, x, blind)

    x = conv("intro", inp)
    skips = []
    for i in range(1, 6):
        x = _pool(conv(f"enc{i}.conv1", x), blind)
        skips.append(x)
    x = _up(conv("enc6.conv1", x))
    for i, skip in zip((5, 4, 3, 2), (skips[3], skips[2], skips[1], skips[0])):
        x = _up(conv(f"dec{i}.conv2", conv(f"dec{i}.conv1", torch.cat((x, skip), 1))))
    return conv("dec1.conv2", conv("dec1.conv1", torch.cat((x, inp), 1)))


def teacher_reference(net: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """AT-BSN forward as the authors wrote it: rotations stacked on the batch axis."""
    s = (validate_k(k) + 1) // 2
    n = x.shape[0]
    rotated = torch.cat((x, x.transpose(2, 3).flip(3), x.flip(2).flip(3), x.transpose(2, 3).flip(2)), 0)
    f = unet_reference(net.unet, rotated, blind=True)
    if s:
        f = F.pad(f, (0, 0, s, 0))[:, :, : f.shape[2], :]
    f0, f90, f180, f270 = torch.split(f, n, 0)
    f = torch.cat((f0, f90.transpose(2, 3).flip(2), f180.flip(2).flip(3), f270.transpose(2, 3).flip(3)), 1)
    f = F.leaky_relu(F.conv2d(f, net.nin_A.weight, net.nin_A.bias), 0.1)
    f = F.leaky_relu(F.conv2d(f, net.nin_B.weight, net.nin_B.bias), 0.1)
    return F.conv2d(f, net.nin_C.weight, net.nin_C.bias)


def student_reference(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Students A, B (replicate padding, no bias) and C, layer by layer."""
    if net.config.arch == "C":
        return unet_reference(net.unet, x, blind=False)

    def stage(seq: nn.Sequential, y: torch.Tensor) -> torch.Tensor:
        for layer in seq:
            y = _blind_conv(layer.conv, y, blind=False, replicate=True)
        return y

    x1 = _pool(stage(net.enc1, x), False)
    x2 = _pool(stage(net.enc2, x1), False)
    y = stage(net.dec2, torch.cat((_up(stage(net.enc3, x2)), x1), 1))
    return stage(net.dec1, torch.cat((_up(y), x), 1))
