"""PSNR and SSIM with the conventions of the benchmarks, each one named.

- ``psnr``: RGB, 0..255, on the output clipped and rounded to uint8 (SIDD benchmark, AP-BSN).
- ``ssim_rgb``: Gaussian window (sigma 1.5), data range 255, averaged over RGB (most papers).
- ``ssim_y``: the same SSIM on the BT.601 luma channel (the AT-BSN authors' code; higher numbers).

And the texture measure (:func:`local_std`) that both partition distillation and the flat/textured groups of
``evaluate`` and ``sweep`` use.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity


def to_uint8(a: np.ndarray) -> np.ndarray:
    """Clip to 0..255 and round (a no-op for uint8 arrays)."""
    return a if a.dtype == np.uint8 else np.round(np.clip(a, 0, 255)).astype(np.uint8)


def psnr(x: np.ndarray, ref: np.ndarray) -> float:
    """PSNR in dB of ``x`` against ``ref`` (both 0..255; ``x`` rounded to uint8 first)."""
    mse = np.mean((to_uint8(x).astype(np.float64) - to_uint8(ref).astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _ssim(a: np.ndarray, b: np.ndarray, channel_axis: int | None) -> float:
    return float(
        structural_similarity(
            a, b, data_range=255.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
            channel_axis=channel_axis,
        )
    )


def luma(a: np.ndarray) -> np.ndarray:
    """BT.601 Y (16..235) of an H x W x 3 RGB image in 0..255, as MATLAB's rgb2ycbcr computes it."""
    a = a.astype(np.float64)
    return 16.0 + (65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]) / 255.0


def ssim_rgb(x: np.ndarray, ref: np.ndarray) -> float:
    a, b = to_uint8(x).astype(np.float64), to_uint8(ref).astype(np.float64)
    if a.ndim == 3 and a.shape[2] == 1:
        a, b = a[..., 0], b[..., 0]
    return _ssim(a, b, 2 if a.ndim == 3 else None)


def ssim_y(x: np.ndarray, ref: np.ndarray) -> float:
    a, b = to_uint8(x), to_uint8(ref)
    if a.ndim == 3 and a.shape[2] == 3:
        return _ssim(luma(a), luma(b), None)
    return _ssim(a.reshape(a.shape[:2]).astype(np.float64), b.reshape(b.shape[:2]).astype(np.float64), None)


def scores(x: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """All three metrics of one image."""
    return {"psnr": psnr(x, ref), "ssim_rgb": ssim_rgb(x, ref), "ssim_y": ssim_y(x, ref)}


def colour_shift(x: np.ndarray, ref: np.ndarray) -> float:
    """How far an image's mean colour sits from the reference's: the largest difference of the channels' means,
    on the images' own scale (0..255 here). A denoiser removes noise, which has zero mean: it must not move this
    further than the noisy input sits (issue 42 bounds the move at 0.5 of 255)."""
    c = x.shape[-1] if x.ndim == 3 else 1
    means = [np.asarray(a, np.float64).reshape(-1, c).mean(0) for a in (x, ref)]
    return float(np.abs(means[0] - means[1]).max())


def colour_excess(x: np.ndarray, noisy: np.ndarray, ref: np.ndarray) -> float:
    """How much further ``x``'s mean colour sits from the reference's than the noisy input's does (of 255;
    :func:`colour_shift`): what a denoiser moved the colour, issue 42's measure (bounded at 0.5)."""
    return colour_shift(x, ref) - colour_shift(noisy, ref)


TEXTURE_WINDOW = 7  # the side of the window of the texture measure


def local_std(x: torch.Tensor, window: int = TEXTURE_WINDOW, gray: str = "luma") -> torch.Tensor:
    """The texture measure: the (population) standard deviation over ``window`` x ``window`` neighbourhoods
    (reflect-padded) of the luma of N x 3 x H x W (or N x 1) images in 0..255 (``gray="mean"``: of the mean of
    the channels, as Spatially-Adaptive SSL measures it), N x 1 x H x W float32. Computed in float64: E[x^2] -
    E[x]^2 in float32 loses the small deviations of flat areas, where the measure matters most."""
    y = x.double()
    if y.shape[1] == 3:
        y = y.mean(1, keepdim=True) if gray == "mean" else 0.299 * y[:, :1] + 0.587 * y[:, 1:2] + 0.114 * y[:, 2:]
    pad = window // 2
    yp = F.pad(y, (pad,) * 4, mode="reflect" if min(y.shape[-2:]) > pad else "replicate")
    mean = F.avg_pool2d(yp, window, stride=1)
    sq = F.avg_pool2d(yp.square(), window, stride=1)
    return (sq - mean.square()).clamp_min(0).sqrt().to(torch.float32)
