"""Tiles with context: any image size through a network in bounded memory, with untiled results.

Large images are cut into tiles on a 32-pixel grid; each tile is denoised inside a window that adds
context around it (so every window sees the same pooling grid as the whole image would) and only the
tile is kept. No blending: each output pixel comes from exactly one window.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .errors import AtbsnError
from .runtime import available_memory, log

GRID = 32
MIN_TILE = GRID  # a smaller tile costs many times its area in context (and breaks the 32-pixel pooling grid)


def plan_tiles(
    model: nn.Module, device: torch.device, tile: int | None = None, margin: int | None = None,
    budget: int | None = None,
) -> tuple[int, int]:
    """Tile side and context margin for ``model``.

    A model that records its training crop (short CPU runs generalise badly to larger inputs) is run on
    windows of that crop: tile = crop / 2 with crop / 4 of context. Otherwise the tile is the largest
    multiple of 32 whose window (tile plus context) has an estimated peak within a quarter of free
    memory (at most 4 GiB on CPU). The per-family constants (peak bytes per pixel, context) come from the
    method registry (:class:`atbsn.methods.Arch`).
    """
    cfg, family = model.config, model.config.family
    if tile is None and cfg.train_crop and family.tile_at_train_crop:
        crop = int(cfg.train_crop)
        return max(crop // 2, 1), crop // 4 if margin is None else margin
    if tile is None:
        if budget is None:
            budget = available_memory(device) // 4
            if device.type == "cpu":
                budget = min(budget, 4 << 30)
        per_pixel = family.bytes_per_pixel * cfg.width / 48
        window = int((budget / per_pixel) ** 0.5)
        tile = int(min(max((window - 2 * family.margin) // GRID * GRID, 128), 2048))
    if tile < MIN_TILE:
        raise AtbsnError(f"--tile {tile}: tiles must be at least {MIN_TILE} pixels (each needs "
                         f"{family.margin} pixels of context on every side)")
    margin = family.margin if margin is None else margin
    if (tile + 2 * margin) ** 2 > 16 * tile**2:
        log.info(f"--tile {tile}: each tile needs {margin} pixels of context on every side, "
                 f"{((tile + 2 * margin) / tile) ** 2:.0f}x the work of untiled inference; a larger tile is faster")
    return tile, margin


def windows(length: int, tile: int, margin: int) -> list[tuple[int, int, int, int]]:
    """Cores of ``tile`` px covering [0, length), each with ``margin`` px of context on both sides.

    Returns (window start, window end, core start, core end). With tile and margin multiples of 32,
    every window starts on the 32-grid, so it sees the same pooling grid as the whole image.
    """
    out = []
    for c0 in range(0, length, tile):
        c1 = min(c0 + tile, length)
        out.append((max(c0 - margin, 0), min(c1 + margin, length), c0, c1))
    return out


def run_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    margin: int,
    device: torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Apply ``fn`` to windows of ``x`` (N x C x H x W) and keep each window's core.

    Each output pixel comes from exactly one window in which it has ``margin`` pixels of context on every
    side (or the image border): no averaging of two different predictions, and memory bounded by
    (tile + 2 margin)^2. Returns float32 on ``x``'s device.
    """
    n, _, h, w = x.shape
    if margin < 0:
        raise AtbsnError(f"tile margin must be >= 0, got {margin}")
    if h <= tile and w <= tile:
        return fn(x.to(device) if device is not None else x).float().to(x.device)
    out = None  # allocated from the first window: ``fn`` may return any number of channels
    rows, cols = windows(h, tile, margin), windows(w, tile, margin)
    total, done = len(rows) * len(cols), 0
    for y0, y1, cy0, cy1 in rows:
        for x0, x1, cx0, cx1 in cols:
            patch = x[:, :, y0:y1, x0:x1]
            y = fn(patch.to(device) if device is not None else patch)
            if out is None:
                out = torch.empty(n, y.shape[1], h, w, dtype=torch.float32, device=x.device)
            out[:, :, cy0:cy1, cx0:cx1] = y[:, :, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0].float().to(x.device)
            done += 1
            if progress is not None:
                progress(done, total)
    return out
