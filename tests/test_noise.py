from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_path

from atbsn.metrics import psnr
from atbsn.noise import LEVELS, add_camera_noise, flat_noise_std, neighbour_correlation, with_jpeg


def _clean(h=128, w=160):
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([40 + 150 * x / w, 60 + 120 * y / h, 120 + 60 * np.sin(x / 9.0)], axis=2)
    return np.round(img).astype(np.uint8)


def test_levels_run_from_quiet_to_heavy_and_keep_dtype_and_shape():
    clean = _clean()
    scores = [psnr(add_camera_noise(clean, level, rng=0), clean) for level in
              ("phone-day", "phone-indoor", "phone-low-light", "phone-night")]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > 38 and 20 < scores[-1] < 28
    f = add_camera_noise(clean.astype(np.float32) / 255, "phone-night", rng=0)
    assert f.dtype == np.float32 and f.shape == clean.shape and 0 <= f.min() and f.max() <= 1
    gray = add_camera_noise(clean[..., 1], rng=0)
    assert gray.shape == clean.shape[:2] and gray.dtype == np.uint8


def test_noise_is_reproducible_and_signal_dependent():
    clean = _clean()
    assert np.array_equal(add_camera_noise(clean, rng=3), add_camera_noise(clean, rng=3))
    jpeg = add_camera_noise(clean, with_jpeg("phone-indoor", 80), rng=3)
    assert jpeg.shape == clean.shape and not np.array_equal(jpeg, add_camera_noise(clean, "phone-indoor", rng=3))
    dark, bright = np.full((64, 64, 3), 30, np.uint8), np.full((64, 64, 3), 200, np.uint8)
    err = [np.abs(add_camera_noise(c, rng=0).astype(float) - c).mean() for c in (dark, bright)]
    assert err[0] != pytest.approx(err[1], rel=0.1)


def test_noise_is_spatially_correlated_unlike_white_noise():
    clean = _clean()
    rng = np.random.default_rng(0)
    white = np.clip(clean + rng.normal(0, 10, clean.shape), 0, 255)
    assert abs(neighbour_correlation(white, clean)) < 0.05
    assert 0.4 < neighbour_correlation(add_camera_noise(clean, rng=0), clean) < 0.8


def test_simulated_correlation_lies_within_the_real_sets():
    from atbsn.datasets import load_pairs

    real = []
    for name in ("sidd9", "polyu100"):
        pairs = load_pairs(shared_path("data", "real", name), limit=10)
        real.append(np.mean([neighbour_correlation(p.noisy, p.clean) for p in pairs]))
    clean = _clean(256, 256)
    for level in LEVELS:
        sim = neighbour_correlation(add_camera_noise(clean, level, rng=1), clean)
        assert min(real) <= sim <= max(real), (level, sim, real)


def test_flat_noise_std_reads_white_and_correlated_noise_beside_texture():
    """The level in the flattest blocks: texture elsewhere does not raise it, correlation does not hide it
    (a wavelet estimate reads correlated noise far too low)."""
    from scipy.ndimage import uniform_filter

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :128]
    scene = np.where(xx < 64, 100.0, 100 + 60 * np.sin(xx / 1.5) * np.cos(yy / 2.0))[:, :, None].repeat(3, 2)
    white = rng.normal(0, 8.0, scene.shape)
    correlated = uniform_filter(rng.normal(0, 1.0, scene.shape), size=(2, 2, 1))
    correlated *= 8.0 / correlated.std()
    for noise in (white, correlated):
        assert 0.85 * 8.0 < flat_noise_std(scene + noise) < 1.05 * 8.0
    assert flat_noise_std(scene + white) < 0.5 * np.std(scene + white)  # the texture half is not read as noise
    assert flat_noise_std(np.full((4, 4), 3.0)) == 0.0  # smaller than a block: the plain std
