"""The classical baselines: they denoise (PSNR rises on a noisy flat-and-edge image) and keep shape and dtype."""

from __future__ import annotations

import numpy as np
import pytest

from atbsn import classical
from atbsn.metrics import psnr


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    clean = np.zeros((48, 64, 3), np.uint8)
    clean[:, 32:] = 180
    noisy = np.clip(clean + rng.normal(0, 15, clean.shape), 0, 255).astype(np.uint8)
    return noisy, clean


def test_nlm_and_bm3d_denoise_and_keep_shape(pair):
    noisy, clean = pair
    sigma = classical.noise_sigma(noisy, clean)
    assert 10 < sigma < 16
    assert 8 < classical.noise_sigma(noisy) < 20  # estimated without the clean image
    for out in (classical.nlm(noisy), classical.bm3d(noisy, sigma)):
        assert out.shape == noisy.shape and out.dtype == np.uint8
        assert psnr(out.astype(np.float32), clean.astype(np.float32)) > psnr(noisy.astype(np.float32),
                                                                               clean.astype(np.float32)) + 3


@pytest.mark.slow
def test_bm3d_on_several_images_in_processes_equals_one_call_each():
    pytest.importorskip("bm3d")
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (24, 28, 3), dtype=np.uint8) for _ in range(3)]
    outs = classical.bm3d_many(images, [20.0, 10.0, 5.0], workers=2)
    assert len(outs) == 3
    for a, s, out in zip(images, [20.0, 10.0, 5.0], outs):
        assert np.array_equal(out, classical.bm3d(a, s))


@pytest.mark.slow
def test_zero_shot_noise2noise_learns_from_the_one_photo_and_is_reproducible(pair):
    """ZS-N2N trained on the noisy photo alone removes noise (a short run here), and the same seed gives the same
    output; odd sizes are denoised whole (training uses the even part)."""
    noisy, clean = pair
    out = classical.zsn2n(noisy, steps=150)
    assert out.shape == noisy.shape and out.dtype == np.uint8
    assert psnr(out, clean) > psnr(noisy, clean) + 1.0
    assert np.array_equal(out, classical.zsn2n(noisy, steps=150))
    odd = classical.zsn2n(noisy[:-1, :-3], steps=2)
    assert odd.shape == noisy[:-1, :-3].shape
