"""The no-reference noise measurement: level and reach on noise of known level and correlation, and on real
camera noise against its clean reference."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_path
from scipy.ndimage import uniform_filter

from atbsn.measure import measure_noise, measure_set, reach_of
from atbsn.noise import add_camera_noise, neighbour_correlation


def _smooth(h: int = 256, w: int = 320) -> np.ndarray:
    """A clean image with broad flat areas, soft gradients and a textured band (where nothing is measured)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([90 + 0.2 * xx + c * 20 for c in range(3)], -1) + 0.1 * yy[..., None]
    img[:, w // 2 : w // 2 + 40] += 40 * np.sin(xx[:, w // 2 : w // 2 + 40, None] * 1.3)
    return img


def test_white_noise_has_its_level_and_no_reach():
    rng = np.random.default_rng(0)
    for sigma in (2.0, 8.0, 20.0):
        noisy = np.clip(_smooth() + rng.normal(0, sigma, (256, 320, 3)), 0, 255)
        e = measure_noise(noisy.astype(np.float32) / 255.0)  # a float image in 0..1: measured on 0..255
        assert e.sigma == pytest.approx(sigma, rel=0.06) and e.reach == 0
        assert max(abs(c) for c in e.correlation) < 0.05


@pytest.mark.parametrize("width, expected", [(3, (2 / 3, 1 / 3, 0.0)), (5, (0.8, 0.6, 0.4))])
def test_box_filtered_noise_has_the_correlation_and_reach_of_its_filter(width, expected):
    """Noise averaged over ``width`` pixels along rows and columns: correlation 1 - s / width at shift s."""
    rng = np.random.default_rng(1)
    n = uniform_filter(rng.normal(0, 1, (256, 320, 3)), size=(width, width, 1), mode="wrap")
    n *= 6.0 / n.std()
    e = measure_noise(_smooth() + n)
    assert e.sigma == pytest.approx(6.0, rel=0.1)
    assert np.allclose(e.correlation[:3], expected, atol=0.06)
    assert e.reach == width - 1


def test_simulated_camera_noise_is_read_near_its_true_level_and_correlation():
    clean = np.clip(_smooth(), 0, 255).astype(np.uint8)
    noisy = add_camera_noise(clean, "phone-night", rng=0)
    r = noisy.astype(np.float64) - clean
    e = measure_noise(noisy)
    assert e.sigma == pytest.approx(r.std(), rel=0.2)
    assert e.correlation[0] == pytest.approx(neighbour_correlation(noisy, clean), abs=0.08)
    assert e.reach >= 1  # demosaicing spreads the noise: a one-pixel blind spot would let it through


def test_alpha_gray_clipped_and_tiny_images():
    rng = np.random.default_rng(2)
    rgba = np.concatenate([_smooth() + rng.normal(0, 5, (256, 320, 3)), np.full((256, 320, 1), 255.0)], -1)
    e = measure_noise(np.clip(rgba, 0, 255).astype(np.uint8))
    assert e.sigma == pytest.approx(5.0, rel=0.1)  # the alpha channel is not measured
    gray = measure_noise(np.clip(_smooth()[..., 0] + rng.normal(0, 5, (256, 320)), 0, 255).astype(np.uint8))
    assert gray.sigma == pytest.approx(5.0, rel=0.1)
    black = np.zeros((64, 64, 3), np.uint8)
    black[:32] = np.clip(100 + rng.normal(0, 5, (32, 64, 3)), 0, 255).astype(np.uint8)
    assert measure_noise(black).sigma == pytest.approx(5.0, rel=0.25)  # clipped blocks are not flat areas
    tiny = measure_noise(np.full((8, 8, 3), 7, np.uint8))
    assert tiny.blocks == 0 and tiny.reach == 0


def test_reach_counts_consecutive_shifts():
    assert reach_of([0.5, 0.2, 0.01, 0.3]) == 2 and reach_of([0.01, 0.5]) == 0 and reach_of([0.4] * 5) == 5


def test_real_smartphone_noise_against_its_clean_reference():
    from atbsn.datasets import load_pairs

    pairs = load_pairs(shared_path("data", "real", "sidd9"))
    whole, each = measure_set([p.noisy for p in pairs])
    true = []
    for p, e in zip(pairs, each):
        r = p.noisy.astype(np.float64) - p.clean
        assert e.sigma == pytest.approx(r.std(), rel=0.25)
        true.append([neighbour_correlation(p.noisy, p.clean, s) for s in (1, 2)])
    assert np.allclose(whole.correlation[:2], np.median(true, axis=0), atol=0.06)
    assert whole.reach == 2


def test_info_prints_the_noise_of_photos_and_folders(tmp_path, capsys):
    from atbsn.cli import main
    from atbsn.images import write_image

    clean = np.clip(_smooth(), 0, 255).astype(np.uint8)
    for i in range(2):
        write_image(tmp_path / "photos" / f"p{i}.png", add_camera_noise(clean, "phone-night", rng=i))
    (tmp_path / "notes.txt").write_text("not a photo")
    assert main(["info", str(tmp_path / "photos")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith(str(tmp_path / "photos" / "p0.png"))
    assert lines[-2].startswith("all 2 photo(s), median: noise sigma") and "reaching 2 pixel(s)" in lines[-2]
    assert lines[-1].startswith("fit would train k_a = 9 (k_b = 3): heavy noise")  # what fit chooses from it
    assert main(["info", str(tmp_path / "photos"), str(tmp_path / "notes.txt")]) == 2
    assert "notes.txt: not a photo" in capsys.readouterr().err
