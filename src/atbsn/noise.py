"""A camera-noise simulator: clean sRGB in, realistic noisy sRGB out, no download needed.

Real sRGB noise is not white: it is added to the raw Bayer mosaic (photon shot noise, signal dependent,
plus read noise) and then spread to neighbouring pixels by demosaicing and the rest of the camera's
processing. This reproduces that chain in reverse and forward:

    sRGB -> linear (inverse gamma) -> camera RGB (inverse colour matrix, inverse white balance)
         -> RGGB mosaic -> Poisson-Gaussian noise -> demosaic -> white balance -> colour matrix
         -> gamma -> 8 bit -> optional JPEG

so the residual is spatially correlated (about 0.55 at one-pixel shift, between heavy SIDD phone noise,
0.45, and mild JPEG DSLR noise, 0.72; see :func:`neighbour_correlation` and
``benchmarks/noise_correlation.py``). Levels run from a quiet daylight phone photo (about 42 dB) to a
night shot (about 24 dB, like SIDD).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

import numpy as np
from scipy.ndimage import convolve

# A typical camera-to-sRGB colour matrix (rows sum to 1) and daylight white-balance gains.
_CCM = np.array([[1.6, -0.45, -0.15], [-0.2, 1.45, -0.25], [0.0, -0.5, 1.5]])
_WB = np.array([2.0, 1.0, 1.6])


@dataclass(frozen=True)
class CameraNoise:
    """Poisson-Gaussian raw noise: variance ``shot * signal + read**2`` on a 0..1 linear raw scale."""

    shot: float = 0.01
    read: float = 0.01
    jpeg_quality: int | None = None


LEVELS = {
    "phone-day": CameraNoise(shot=0.00005, read=0.0005),  # a quiet phone photo in daylight
    "phone-indoor": CameraNoise(shot=0.0003, read=0.0015),
    "phone-low-light": CameraNoise(shot=0.001, read=0.003),
    "phone-night": CameraNoise(shot=0.004, read=0.008),  # a night shot: about SIDD's noisy PSNR (mid 20s dB)
    "dslr-high-iso": CameraNoise(shot=0.0003, read=0.001),  # JPEG on top: with_jpeg("dslr-high-iso", 90)
}


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def _bayer_masks(h: int, w: int) -> np.ndarray:
    """RGGB sampling masks, 3 x H x W."""
    m = np.zeros((3, h, w), dtype=bool)
    m[0, 0::2, 0::2] = True
    m[1, 0::2, 1::2] = True
    m[1, 1::2, 0::2] = True
    m[2, 1::2, 1::2] = True
    return m


_K_G = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], dtype=np.float64) / 4
_K_RB = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float64) / 4


def demosaic_bilinear(raw: np.ndarray) -> np.ndarray:
    """Bilinear demosaicing of an RGGB mosaic (H x W) into H x W x 3."""
    masks = _bayer_masks(*raw.shape)
    out = np.empty((*raw.shape, 3))
    for c, k in enumerate((_K_RB, _K_G, _K_RB)):
        out[..., c] = convolve(np.where(masks[c], raw, 0.0), k, mode="mirror")
    return out


def add_camera_noise(
    clean: np.ndarray, level: str | CameraNoise = "phone-night", rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """Noisy version of a clean sRGB image (H x W x 3, uint8 or float 0..1); same dtype back.

    Gray (H x W or H x W x 1) images are treated as R = G = B and returned gray.
    """
    params = LEVELS[level] if isinstance(level, str) else level
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    a = np.asarray(clean)
    gray = a.ndim == 2 or a.shape[2] == 1
    x = a.astype(np.float64) / (255.0 if a.dtype == np.uint8 else 1.0)
    x = np.repeat(x.reshape(*x.shape[:2], 1), 3, axis=2) if gray else x[..., :3]

    cam = srgb_to_linear(x) @ np.linalg.inv(_CCM).T / _WB  # camera RGB before white balance
    cam = np.clip(cam, 0.0, 1.0)
    h, w = cam.shape[:2]
    masks = _bayer_masks(h, w)
    raw = (cam.transpose(2, 0, 1) * masks).sum(0)
    shot = rng.poisson(raw / params.shot) * params.shot if params.shot > 0 else raw
    raw_noisy = shot + rng.normal(0.0, params.read, raw.shape)

    def develop(r: np.ndarray) -> np.ndarray:
        return linear_to_srgb(demosaic_bilinear(r) * _WB @ _CCM.T)

    # The camera's processing of the noise, added to the given image (so it stays the exact reference,
    # free of the demosaicing artefacts a noise-free raw would get).
    out = x + develop(raw_noisy) - develop(raw)
    out8 = np.round(np.clip(out, 0.0, 1.0) * 255).astype(np.uint8)
    if params.jpeg_quality is not None:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(out8).save(buf, format="JPEG", quality=params.jpeg_quality)
        out8 = np.asarray(Image.open(buf).convert("RGB"))
    if gray:
        out8 = np.round(out8.mean(axis=2)).astype(np.uint8).reshape(a.shape)
    return out8 if a.dtype == np.uint8 else (out8.astype(np.float32) / 255.0).astype(a.dtype)


def neighbour_correlation(noisy: np.ndarray, clean: np.ndarray, shift: int = 1) -> float:
    """Correlation of the residual (noisy - clean) with itself ``shift`` pixels to the right,
    averaged over channels: 0 for white noise, higher for the spatially correlated noise of real sRGB."""
    r = noisy.astype(np.float64) - clean.astype(np.float64)
    r = r.reshape(*r.shape[:2], -1)
    values = []
    for c in range(r.shape[2]):
        a, b = r[:, :-shift, c].ravel(), r[:, shift:, c].ravel()
        a, b = a - a.mean(), b - b.mean()
        denom = np.sqrt((a * a).mean() * (b * b).mean())
        values.append((a * b).mean() / denom if denom > 0 else 0.0)
    return float(np.mean(values))


def with_jpeg(level: str | CameraNoise, quality: int) -> CameraNoise:
    """A level with JPEG compression at ``quality`` added (as a phone or camera would save it)."""
    return replace(LEVELS[level] if isinstance(level, str) else level, jpeg_quality=quality)


def flat_noise_std(image: np.ndarray, block: int = 16, percentile: float = 10.0) -> float:
    """The noise standard deviation (the image's own scale) seen in its flattest areas: the square root of the
    ``percentile``-th percentile of the per-block variances (``block`` x ``block`` blocks, averaged over
    channels). Unlike a wavelet estimate, which sees only the finest scale and so reads correlated sRGB noise
    at a third of its level, a block's variance holds all of it; on the demo's and SIDD's images this gives
    0.8-1.0 of the true level. It reads low where no area is flat or where noise is clipped (dark or
    saturated backgrounds)."""
    a = np.asarray(image, dtype=np.float64)
    a = a[:, :, None] if a.ndim == 2 else a
    h, w = (a.shape[0] // block) * block, (a.shape[1] // block) * block
    if h == 0 or w == 0:
        return float(np.std(a))
    var = a[:h, :w].reshape(h // block, block, w // block, block, -1).var(axis=(1, 3), ddof=1).mean(-1)
    return float(np.sqrt(np.percentile(var, percentile)))
