"""The recorrupted-pair estimate: a denoiser's squared error from the noisy photo alone."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import uniform_filter

from atbsn.measure import NoiseEstimate, measure_noise
from atbsn.noref import ALPHA, draw_noise, mse_to_psnr, recorrupted_mse


def _scene(h: int = 192, w: int = 224) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([120 + 50 * np.sin(xx / 9.0 + c) * np.cos(yy / 13.0) for c in range(3)], -1)


def test_drawn_noise_has_the_measured_level_correlation_and_channel_mixing():
    clean = np.full((256, 256, 3), 120.0)
    noise = NoiseEstimate(6.0, (0.45, 0.1, 0.0, 0.0, 0.0), 2, 10, (), 0.4)
    z = draw_noise(clean, noise, np.random.default_rng(0))
    assert z.std() == pytest.approx(6.0, rel=0.03)
    got = measure_noise(clean + z, factor=1.0)
    assert got.correlation[0] == pytest.approx(0.45, abs=0.05)
    assert got.channels == pytest.approx(0.4, abs=0.05)


def test_the_estimate_matches_each_denoisers_true_error_at_the_recorrupted_level():
    """Noise exactly as the estimate assumes: its estimate of the identity, of a blur and of an oracle equals
    their true squared error on the recorrupted photo (the photo's noise plus a z), and ranks them so."""
    rng = np.random.default_rng(1)
    clean = _scene()
    noise = NoiseEstimate(6.0, (0.45,), 1, 10, (), 0.3)
    noisy = clean + draw_noise(clean, noise, rng)
    blur = lambda a: uniform_filter(a, size=(3, 3, 1), mode="reflect")  # noqa: E731
    est = {name: recorrupted_mse(fn, noisy, noise, draws=4)
           for name, fn in {"identity": lambda a: a, "blur": blur, "oracle": lambda a: clean}.items()}
    assert est["identity"] == pytest.approx(36 * (1 + ALPHA**2), rel=0.05)
    assert abs(est["oracle"]) < 0.05 * 36
    x1 = noisy + ALPHA * draw_noise(clean, noise, np.random.default_rng(5))
    assert est["blur"] == pytest.approx(np.mean((blur(x1) - clean) ** 2), rel=0.1)
    assert est["oracle"] < est["blur"] < est["identity"]


def test_an_estimate_reads_as_psnr_and_a_perfect_one_stays_finite():
    assert mse_to_psnr(255.0**2 / 1000) == pytest.approx(30.0)
    assert mse_to_psnr(-1.0) == mse_to_psnr(0.0) == 60.0
