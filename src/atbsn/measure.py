"""Measuring a photo's own noise, without a clean image: its level and how far it reaches in pixels.

Real sRGB noise is spatially correlated (demosaicing, sharpening, JPEG), and how far that correlation reaches
decides the blind spot a network needs: a blind spot smaller than the reach lets the network copy the noise
from the pixels beside the one it predicts. Both are read in the photo's flattest areas, where what varies is
noise: the image is cut into ``block`` x ``block`` blocks, a plane is fitted to each block and channel and
taken away (a smooth gradient is not noise), and the blocks with the lowest residual variance (without clipped
pixels, whose noise is cut off) are kept. Their residual gives the level (standard deviation on 0..255) and
the correlation of the residual with itself shifted by 1, 2, ... pixels (rows and columns averaged, pooled
over the kept blocks and channels).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .ranges import to_model_range

BLOCK = 16
FLAT_SHARE = 0.1  # the flattest tenth of the blocks
SHIFTS = 5  # correlations measured at 1..SHIFTS pixels
REACH_LEVEL = 0.05  # the correlation below which noise is taken to have stopped reaching
MAX_SIDE = 2048  # a larger photo is measured on its centre crop of this side
BRIGHTNESS_BINS = 8  # brightness groups for the noise level at each brightness
SURFACE = 6  # parameters of the smooth surface taken away from each block (quadratic)
FLAT_LEVEL = 1e-3  # a residual below this (of 255) is round-off, not noise: 8-bit quantization alone is 0.29


@dataclass(frozen=True)
class NoiseEstimate:
    """The noise of one photo (or the median over a set): ``sigma`` on 0..255, ``correlation[i]`` at a
    shift of i + 1 pixels, ``reach`` the largest shift whose correlation (and every shorter one's) is at least
    :data:`REACH_LEVEL`, from ``blocks`` flat blocks; ``levels`` the level at each brightness."""

    sigma: float
    correlation: tuple[float, ...]
    reach: int
    blocks: int
    levels: tuple[tuple[float, float], ...] = ()  # (brightness, sigma) from dark to bright, :func:`noise_variance`
    channels: float = 0.0  # the mean correlation between the colour channels' noise (0 for gray)

    def as_dict(self) -> dict:
        return {**asdict(self), "correlation": [round(c, 4) for c in self.correlation],
                "sigma": round(self.sigma, 3), "levels": [list(v) for v in self.levels],
                "channels": round(self.channels, 4)}

    @property
    def measured(self) -> bool:
        """Whether there was anything to measure (at least one flat block)."""
        return self.blocks > 0

    def describe(self) -> str:
        if not self.measured:
            return f"too small to measure its noise (not one {BLOCK} x {BLOCK} block)"
        if self.sigma == 0:
            return f"no noise measured: its flattest areas are exactly flat (from {self.blocks} blocks)"
        corr = ", ".join(f"{c:.2f}" for c in self.correlation[:3])
        return (f"noise sigma {self.sigma:.2f} of 255, correlation {corr} at 1, 2, 3 pixels, reaching "
                f"{self.reach} pixel(s) (from {self.blocks} flat {BLOCK} x {BLOCK} blocks)")


def reach_of(correlation: tuple[float, ...] | list[float]) -> int:
    """How many shifts in a row, from one pixel, keep a correlation of at least :data:`REACH_LEVEL`."""
    n = 0
    for c in correlation:
        if c < REACH_LEVEL:
            break
        n += 1
    return n


def _design(block: int) -> np.ndarray:
    """The smooth surfaces taken away from each block: constant, linear and quadratic in y and x
    (B^2 x SURFACE)."""
    yy, xx = np.divmod(np.arange(block * block, dtype=np.float64), block)
    y, x = (yy - yy.mean()) / block, (xx - xx.mean()) / block
    return np.stack([np.ones_like(y), y, x, y * y, x * x, x * y], 1)


def _planes_removed(blocks: np.ndarray) -> np.ndarray:
    """``blocks`` (N x B x B x C) minus each block's and channel's least-squares plane."""
    b = blocks.shape[1]
    design = _design(b)
    flat = blocks.transpose(0, 3, 1, 2).reshape(-1, b * b)  # (N C) x B^2
    coef, *_ = np.linalg.lstsq(design, flat.T, rcond=None)
    resid = flat - (design @ coef).T
    return resid.reshape(blocks.shape[0], blocks.shape[3], b, b).transpose(0, 2, 3, 1)


def _around(var: np.ndarray, gh: int, gw: int) -> np.ndarray:
    """Each block's flatness judged by the blocks around it (the mean variance of its up to 8 neighbours; its
    own when it has none). A block chosen for its own low variance is one whose noise happened to come out
    low and smooth, which biases both the level and the correlation at larger shifts low; flat areas are
    wider than a block, so the neighbours tell flat from textured without that bias."""
    v = var.reshape(gh, gw)
    total, count = np.zeros_like(v), np.zeros_like(v)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == dx == 0:
                continue
            ys, yd = slice(max(dy, 0), gh + min(dy, 0)), slice(max(-dy, 0), gh + min(-dy, 0))
            xs, xd = slice(max(dx, 0), gw + min(dx, 0)), slice(max(-dx, 0), gw + min(-dx, 0))
            total[yd, xd] += v[ys, xs]
            count[yd, xd] += 1
    return np.where(count > 0, total / np.maximum(count, 1), v).ravel()


def measure_noise(image: np.ndarray, factor: float | None = None, block: int = BLOCK,
                  flat_share: float = FLAT_SHARE) -> NoiseEstimate:
    """The noise of one image (any dtype this package reads; gray or colour, an alpha channel ignored);
    ``factor`` brings its samples to 0..255 (default: from its dtype and values)."""
    a = np.asarray(image)
    a = a[:, :, None] if a.ndim == 2 else a
    if a.shape[2] in (2, 4):
        a = a[:, :, :-1]
    y0, x0 = max(0, (a.shape[0] - MAX_SIDE) // 2), max(0, (a.shape[1] - MAX_SIDE) // 2)
    a = a[y0 : y0 + MAX_SIDE, x0 : x0 + MAX_SIDE]  # a big photo: its centre (bounded time and memory)
    x = a.astype(np.float64) * factor if factor is not None else to_model_range(a)[0].astype(np.float64)
    h, w = (x.shape[0] // block) * block, (x.shape[1] // block) * block
    if h == 0 or w == 0:  # not one block: nothing to tell noise from content by
        return NoiseEstimate(0.0, (0.0,) * SHIFTS, 0, 0)
    blocks = x[:h, :w].reshape(h // block, block, w // block, block, -1).transpose(0, 2, 1, 3, 4)
    blocks = blocks.reshape(-1, block, block, x.shape[2])
    clipped = ((blocks <= 0.5) | (blocks >= 254.5)).mean(axis=(1, 2, 3)) > 0.02
    resid = _planes_removed(blocks)
    var = (resid ** 2).mean(axis=(1, 2)).mean(-1) * (block * block) / (block * block - SURFACE)
    usable = np.flatnonzero(~clipped) if (~clipped).any() else np.arange(len(blocks))
    n = max(1, int(round(len(usable) * flat_share)))
    flatness = _around(var, h // block, w // block)
    keep = usable[np.argsort(flatness[usable], kind="stable")[:n]]
    r = resid[keep]
    if float(np.sqrt((r * r).mean())) < FLAT_LEVEL:  # exactly flat (a fit's round-off is not noise to correlate)
        return NoiseEstimate(0.0, (0.0,) * SHIFTS, 0, int(n))
    seen = np.array([(_corr(r, s, 2) + _corr(r, s, 1)) / 2 for s in range(1, SHIFTS + 1)])
    corr, keeps = _unbiased(seen, block)
    levels = _levels(blocks.mean(axis=(1, 2, 3))[usable], var[usable] / keeps, flatness[usable], flat_share)
    return NoiseEstimate(float(np.sqrt(var[keep].mean() / keeps)), tuple(float(c) for c in corr), reach_of(corr),
                         int(n), levels, _between_channels(r))


def _between_channels(r: np.ndarray) -> float:
    """The mean correlation between every two channels of the residuals ``r`` (N x B x B x C); 0 for one channel.
    Demosaicing and the colour matrix mix a sensor's noise across an sRGB photo's channels."""
    c = r.shape[-1]
    if c < 2:
        return 0.0
    flat = r.reshape(-1, c)
    corr = np.corrcoef(flat, rowvar=False)
    return float(np.nan_to_num(corr[np.triu_indices(c, 1)]).mean())


def _levels(brightness: np.ndarray, var: np.ndarray, flatness: np.ndarray,
            flat_share: float) -> tuple[tuple[float, float], ...]:
    """The noise level at each brightness (camera noise grows with the signal): blocks cut into
    :data:`BRIGHTNESS_BINS` groups by their mean, and in each the level of its flattest share, as
    (brightness, sigma) pairs."""
    order = np.argsort(brightness, kind="stable")
    out = []
    for group in np.array_split(order, min(BRIGHTNESS_BINS, len(order))):
        m = max(1, int(round(len(group) * flat_share)))
        flat = group[np.argsort(flatness[group], kind="stable")[:m]]
        out.append((round(float(brightness[group].mean()), 2), round(float(np.sqrt(var[flat].mean())), 3)))
    return tuple(out)


def noise_variance(noise: NoiseEstimate, image: np.ndarray) -> float:
    """The mean noise variance over an image of that noise (``image`` on 0..255, e.g. a denoised one, gives each
    pixel's brightness): each pixel's level read from the measured levels by brightness (linear between them,
    the nearest beyond them); the flat-area level when no levels were measured."""
    if not noise.levels:
        return noise.sigma ** 2
    b, s = np.array(noise.levels).T
    a = np.asarray(image, dtype=np.float64)
    brightness = a.mean(-1) if a.ndim == 3 else a
    return float(np.mean(np.interp(brightness, b, s * s)))


def _corr(r: np.ndarray, s: int, axis: int) -> float:
    """Pooled correlation of blocks ``r`` (N x B x B x C) with themselves shifted ``s`` along ``axis``."""
    a, b = np.moveaxis(r, axis, 1)[:, :-s], np.moveaxis(r, axis, 1)[:, s:]
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _seen(c: np.ndarray, block: int) -> tuple[np.ndarray, float]:
    """What :func:`measure_noise` sees of noise with correlation ``c`` at shifts 1..S along rows and columns
    (separable: c(dx) c(dy)), once each block's plane is taken away: its correlations, and the share of the
    variance the planes leave (times (B^2 - 3) / B^2, the correction already applied)."""
    lags = np.arange(block)
    c1 = np.zeros(block)
    c1[0], c1[1 : len(c) + 1] = 1.0, c[: block - 1]
    cov = np.kron(*(2 * [c1[np.abs(lags[:, None] - lags[None, :])]]))  # pixel (y, x) at index y B + x
    design = _design(block)
    keep = np.eye(block * block) - design @ np.linalg.pinv(design)
    res = keep @ cov @ keep
    r4, diag = res.reshape(block, block, block, block), np.diag(res).reshape(block, block)
    y = np.arange(block)[:, None]
    out = []
    for s in range(1, len(c) + 1):
        x = np.arange(block - s)[None, :]
        pairs = r4[y, x, y, x + s].sum()  # pixel (y, x) with (y, x + s); by symmetry the same down columns
        out.append(pairs / np.sqrt(diag[:, : block - s].sum() * diag[:, s:].sum()))
    return np.array(out), float(np.trace(res)) / (block * block - SURFACE)


def _unbiased(seen: np.ndarray, block: int, rounds: int = 30) -> tuple[np.ndarray, float]:
    """The correlations whose plane-removed view is ``seen`` (taking away a plane takes away low frequencies,
    which lowers every correlation, the more so at larger shifts), by fixed-point iteration; and the share of
    the variance the planes leave at that correlation."""
    c = seen.copy()
    for _ in range(rounds):
        got, _ = _seen(c, block)
        c = np.clip(c + (seen - got), -1.0, 1.0)
        if np.abs(seen - got).max() < 1e-4:
            break
    return c, _seen(c, block)[1]


def measure_set(images) -> tuple[NoiseEstimate, list[NoiseEstimate]]:
    """The set's estimate (the median level and correlation over the images) and each image's. ``images``:
    arrays, or (array, factor to 0..255) pairs as :meth:`atbsn.datasets.Source.load` gives them."""
    each = [measure_noise(*a) if isinstance(a, tuple) else measure_noise(a) for a in images]
    if not each:
        raise ValueError("no images to measure")
    seen = [e for e in each if e.measured]  # an image too small to measure says nothing of the set
    if not seen:
        return NoiseEstimate(0.0, (0.0,) * SHIFTS, 0, 0), each
    corr = tuple(float(np.median([e.correlation[i] for e in seen])) for i in range(SHIFTS))
    whole = NoiseEstimate(float(np.median([e.sigma for e in seen])), corr, reach_of(corr),
                          sum(e.blocks for e in seen))
    return whole, each
