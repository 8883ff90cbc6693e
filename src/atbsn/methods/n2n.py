"""Neighbor2Neighbor (Huang et al., CVPR 2021): two sub-images of one noisy image train each other.

Each 2 x 2 cell gives one pixel to each sub-image, two adjacent pixels chosen at random among the eight
ordered neighbour pairs; the network maps the first sub-image to the second (their noise is independent if
the noise is pixel-wise independent), and a regulariser asks that the network's output on the whole image,
sub-sampled the same way, differ between the sub-images as the prediction and its target do.

Constants from the authors' ``train.py`` (TaoHuang2018/Neighbor2Neighbor): the eight pairs
(0,1) (0,2) (1,3) (2,3) (1,0) (2,0) (3,1) (3,2) of cell positions numbered row-major; L2 on 0..1 values;
Lambda1 = Lambda2 = 1 and the regulariser weight gamma growing linearly to ``increase_ratio`` = 2 over
training; the UNet of width 48 with Adam lr 3e-4, batch 4 of 256 x 256 crops. Here the network is the plain
UNet of student C (the same five-level UNet family), and the schedule runs over steps instead of epochs.
On spatially correlated real sRGB noise the premise fails: the AT-BSN paper measures 25.98 dB on SIDD.
"""

from __future__ import annotations

import torch
from torch import nn

from ..losses import Loss, masked_mse
from . import MethodSpec, register
from .common import CPU_BUDGET, unet_method

# ordered pairs of positions in a 2 x 2 cell (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right)
PAIRS = torch.tensor([[0, 1], [0, 2], [1, 3], [2, 3], [1, 0], [2, 0], [3, 1], [3, 2]])
GAMMA_END = 2.0  # the authors' increase_ratio: the regulariser's weight at the end of training


def _cells(x: torch.Tensor) -> torch.Tensor:
    """N x C x H x W -> N x C x H/2 x W/2 x 4, the four pixels of each 2 x 2 cell (odd edges dropped)."""
    n, c, h, w = x.shape
    h2, w2 = h // 2, w // 2
    return x[..., : 2 * h2, : 2 * w2].reshape(n, c, h2, 2, w2, 2).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h2, w2, 4)


def draw_pairs(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random neighbour pair per cell of ``x`` (same for every channel): N x H/2 x W/2 x 2 indices."""
    n, _, h, w = x.shape
    choice = torch.randint(0, len(PAIRS), (n, h // 2, w // 2), generator=generator)
    return PAIRS[choice].to(x.device)


def subsample(x: torch.Tensor, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two neighbour sub-images of ``x`` (N x C x H/2 x W/2 each) for the drawn ``pairs``."""
    cells = _cells(x)
    idx = pairs[:, None].expand(-1, x.shape[1], -1, -1, -1)  # N x C x H/2 x W/2 x 2
    picked = torch.gather(cells, -1, idx)
    return picked[..., 0], picked[..., 1]


class Neighbor2NeighborLoss(Loss):
    """||f(g1(y)) - g2(y)||^2 + gamma ||f(g1(y)) - g2(y) - (g1(f(y)) - g2(f(y)))||^2, f(y) without gradient."""

    def __init__(self, seed: int = 0, gamma_end: float = GAMMA_END) -> None:
        super().__init__()
        self.seed, self.gamma_end = seed, gamma_end
        self.generator = torch.Generator()
        self.gamma = 0.0
        self.at(0, 1)

    def at(self, step: int, steps: int) -> None:
        self.generator.manual_seed(self.seed * 1_000_003 + step)  # the pairs are a function of (seed, step)
        self.gamma = (step + 1) / steps * self.gamma_end

    def forward(self, model: nn.Module, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pairs = draw_pairs(y, self.generator)
        sub1, sub2 = subsample(y, pairs)
        m1, m2 = subsample(mask.expand(-1, 1, -1, -1).to(y.dtype), pairs)
        m = m1 * m2
        with torch.no_grad():
            f1, f2 = subsample(model(y).float(), pairs)
        diff = (model(sub1.contiguous()).float() - sub2) / 255.0  # the authors' loss is on 0..1 values
        return masked_mse(diff, torch.zeros_like(diff), m) + self.gamma * masked_mse(diff, (f1 - f2) / 255.0, m)


register(MethodSpec(
    "n2n", "Neighbor2Neighbor", "C",
    lambda config, init=None: unet_method(config, init, Neighbor2NeighborLoss(config.seed), "Neighbor2Neighbor"),
    presets={"sidd": {"steps": 100_000, "batch": 4, "crop": 256, "width": 48, "lr": 3e-4}, "cpu": CPU_BUDGET}))
