"""Blind2Unblind (Wang et al., CVPR 2022): a blind spot during training that is gone at inference.

A global-aware mask mapper makes 16 copies of each image; copy i replaces the pixels at position i of every
4 x 4 cell by the weighted mean of their eight neighbours (weights 1 on the sides, 0.5 on the diagonals,
zero padding at the border). The network denoises all copies, and each pixel's "blind" prediction is taken
from the copy in which it was hidden. The re-visible loss then lets the network's plain output on the
unmasked image take part: ||b - y||^2 + ||b + beta sg(f(y)) - (1 + beta) y||^2, with b the blind prediction,
sg no gradient, and beta rising from 2 to 20 over the last 60% of training. At inference the network runs
on the unmasked image: no blind spot.

Constants from the authors' ``train_sidd_b2u.py`` (zejinwang/Blind2Unblind): mask width 4, interpolation
kernel [[0.5, 1, 0.5], [1, 0, 1], [0.5, 1, 0.5]] / 6, Lambda1 = 1, Lambda2 = 2, increase_ratio = 20,
thresholds 0.4 and 1.0 of training, L2 on 0..1 values, UNet width 48, Adam lr 1e-4, batch 4 of 256 x 256.
Here the network is the plain UNet of student C and the schedule runs over steps. On correlated real sRGB
noise the one-pixel blind spot does not hide the noise: the AT-BSN paper measures 23.10 dB on SIDD.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import Loss, masked_mse
from . import MethodSpec, register
from .common import CPU_BUDGET, unet_method

GRID = 4  # 4 x 4 cells: 16 masked copies
_KERNEL = torch.tensor([[0.5, 1.0, 0.5], [1.0, 0.0, 1.0], [0.5, 1.0, 0.5]]) / 6.0
REG, BETA_START, BETA_END, RISE_FROM, RISE_TO = 1.0, 2.0, 20.0, 0.4, 1.0


def beta_at(progress: float) -> float:
    """The re-visible weight at ``progress`` (0..1] of training: 2 until 40%, then linear to 20 at 100%."""
    if progress <= RISE_FROM:
        return BETA_START
    return BETA_START + (min(progress, RISE_TO) - RISE_FROM) * (BETA_END - BETA_START) / (RISE_TO - RISE_FROM)


def grid_masks(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """16 x 1 x H x W: mask i is 1 at row r, column c with (r mod 4) * 4 + (c mod 4) == i."""
    r = torch.arange(h, device=device)[:, None] % GRID
    c = torch.arange(w, device=device)[None, :] % GRID
    pos = r * GRID + c
    return (pos[None] == torch.arange(GRID * GRID, device=device)[:, None, None]).float()[:, None]


def masked_copies(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N x 16 x C x H x W copies, 16 x 1 x H x W masks): copy i has mask i's pixels interpolated."""
    n, c, h, w = y.shape
    k = _KERNEL.to(y.device, y.dtype)[None, None]
    interp = F.conv2d(y.reshape(n * c, 1, h, w), k, padding=1).reshape(n, c, h, w)
    masks = grid_masks(h, w, y.device).to(y.dtype)
    return y[:, None] * (1 - masks) + interp[:, None] * masks, masks


class Blind2UnblindLoss(Loss):
    """The re-visible loss over the global-aware mask mapper (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.beta = BETA_START

    def at(self, step: int, steps: int) -> None:
        self.beta = beta_at((step + 1) / steps)

    def blind(self, model: nn.Module, y: torch.Tensor) -> torch.Tensor:
        """Each pixel predicted from the copy in which it was hidden (0..255)."""
        n, c, h, w = y.shape
        copies, masks = masked_copies(y)
        out = model(copies.reshape(n * GRID * GRID, c, h, w)).float().reshape(n, GRID * GRID, c, h, w)
        return (out * masks).sum(1)

    def forward(self, model: nn.Module, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h, w = y.shape[-2] // GRID * GRID, y.shape[-1] // GRID * GRID  # whole cells only
        y, mask = y[..., :h, :w].contiguous(), mask[..., :h, :w]
        b = self.blind(model, y) / 255.0
        with torch.no_grad():
            unblind = model(y).float() / 255.0
        x = y.float() / 255.0
        zero = torch.zeros_like(x)
        revisible = b + self.beta * unblind - (1 + self.beta) * x
        return REG * masked_mse(b - x, zero, mask) + masked_mse(revisible, zero, mask)


register(MethodSpec(
    "b2u", "Blind2Unblind", "C",
    lambda config, init=None: unet_method(config, init, Blind2UnblindLoss(), "Blind2Unblind"),
    presets={"sidd": {"steps": 100_000, "batch": 4, "crop": 256, "width": 48, "lr": 1e-4}, "cpu": CPU_BUDGET}))
