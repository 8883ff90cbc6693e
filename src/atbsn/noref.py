"""A denoiser's error on noisy photos alone, without a clean image: the recorrupted-pair estimate.

Recorrupted-to-Recorrupted (Pang et al., CVPR 2021) as a score: for a photo x = c + n and a draw z of noise with
the covariance of n, the pair x1 = x + a z and x2 = x - z / a has noise whose covariance between the two is
cov(n) - cov(z) = 0 (independent for Gaussian noise). So for any denoiser f, E|f(x1) - x2|^2 =
E|f(x1) - c|^2 + E|n - z / a|^2: the mean squared difference, less x2's noise variance sigma^2 (1 + 1 / a^2),
estimates f's squared error on the photo at a slightly higher noise (sigma^2 (1 + a^2)), with nothing but the
photo. It works for networks with or without a blind spot, classical filters and the identity alike, so the
released models, a fitted student and the input itself can be ranked on the user's own photos.

z is drawn as the photo's noise is measured (:mod:`atbsn.measure`): the flat-area level, the correlation between
neighbours (Gaussian noise blurred by a Gaussian whose sampled correlation at one pixel is the measured one) and
between colour channels (a shared component). A z whose covariance differs from the noise's biases the estimate
toward denoisers that pass less noise (z too strong) or more (too weak), so how it is drawn was chosen by how
well the estimate ranks real denoisers on sets with clean references (``benchmarks/fit_start.py``,
results/fit_start.md, tuned on sidd9 and polyu100's tuning half): without the channels' correlation it ranked
non-local means above every network on mild noise; with the level read at each brightness (``levels``, which
reads textured blocks where a brightness has no flat ones) it put a weaker released student first on polyu100.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.ndimage import convolve1d

from .measure import NoiseEstimate

ALPHA = 0.5  # the recorruption's a (the R2R paper's training value): a smaller one scores nearer the photo's own
# noise but doubles x2's noise, and with it the estimate's spread
DRAWS = 2  # noise draws per photo, averaged


def _gaussian(s: float) -> np.ndarray:
    k = np.exp(-0.5 * (np.arange(-int(np.ceil(4 * s)), int(np.ceil(4 * s)) + 1) / s) ** 2)
    return k / np.sqrt((k * k).sum())


def _blur_kernel(rho: float) -> np.ndarray:
    """A 1-D Gaussian kernel of unit energy whose blur of white noise correlates neighbours by ``rho`` (its width
    found by bisection: the sampled kernel's correlation at one pixel grows with it)."""
    if rho <= 0.02:
        return np.ones(1)
    rho, lo, hi = min(rho, 0.95), 0.05, 8.0
    for _ in range(40):
        mid = (lo + hi) / 2
        k = _gaussian(mid)
        lo, hi = (mid, hi) if float((k[1:] * k[:-1]).sum()) < rho else (lo, mid)
    return _gaussian((lo + hi) / 2)


def draw_noise(image: np.ndarray, noise: NoiseEstimate, rng: np.random.Generator) -> np.ndarray:
    """Noise for ``image`` (H x W x C) shaped as ``noise`` describes it: the flat-area level, the correlation
    between neighbours and between channels."""
    h, w, c = image.shape
    rho_c = float(np.clip(noise.channels, 0.0, 0.99)) if c > 1 else 0.0
    e = rng.standard_normal((h, w, c))
    if rho_c > 0:
        e = np.sqrt(1 - rho_c) * e + np.sqrt(rho_c) * rng.standard_normal((h, w, 1))
    kernel = _blur_kernel(noise.correlation[0] if noise.correlation else 0.0)
    if len(kernel) > 1:
        e = convolve1d(convolve1d(e, kernel, axis=0, mode="wrap"), kernel, axis=1, mode="wrap")
    return e * noise.sigma


def recorrupted_mse(denoiser: Callable[[np.ndarray], np.ndarray], image: np.ndarray, noise: NoiseEstimate,
                    alpha: float = ALPHA, draws: int = DRAWS, seed: int = 0) -> float:
    """The estimated mean squared error (0..255 units) of ``denoiser`` on ``image`` (H x W x C, 0..255, float),
    from ``draws`` recorrupted pairs. ``denoiser`` maps an H x W x C float array on 0..255 (unclipped) to its
    output on the same scale. Comparable between denoisers on the same image, seed and noise estimate."""
    x = np.asarray(image, dtype=np.float64)
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(draws):
        z = draw_noise(x, noise, rng)
        x1, x2 = x + alpha * z, x - z / alpha
        y = np.asarray(denoiser(x1.astype(np.float32)), dtype=np.float64)
        # less x2's noise variance: the photo's own (its expectation) and the drawn z's (as drawn: its realised
        # energy, which takes the largest share of the estimate's spread away)
        total += float(np.mean((y - x2) ** 2) - noise.sigma**2 - np.mean(z * z) / alpha**2)
    return total / draws


def mse_to_psnr(mse: float) -> float:
    """An estimated squared error (0..255 units) as PSNR; a non-positive estimate (within the estimate's
    spread of a perfect output) reads as 60 dB."""
    return float(10 * np.log10(255.0**2 / mse)) if mse > 255.0**2 * 1e-6 else 60.0
