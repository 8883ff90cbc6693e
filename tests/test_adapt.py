"""Denoising fitted to each photo's noise: the safeguard's blend, --k auto, --k adaptive, through the API and CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atbsn import ATBSN, Student, denoise, denoise_tensor, save
from atbsn.adapt import (
    COLOUR_BOUND,
    blend_weight,
    choose_k,
    fuse,
    guard_colour,
    keep_colour,
    nearest,
    safeguard,
    texture,
)
from atbsn.cli import main
from atbsn.errors import AtbsnError
from atbsn.images import write_image
from atbsn.measure import NoiseEstimate, measure_noise


def _scene(rng, h=96, w=128):
    """A clean image: a flat left half and a textured right half."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    clean = np.full((h, w, 3), 120.0)
    clean[:, w // 2 :] += 50 * np.sin(xx[:, w // 2 :, None] * 1.1) * np.cos(yy[:, w // 2 :, None] * 0.9)
    return clean


def test_keep_colour_puts_back_a_colour_the_denoiser_moved_and_leaves_a_clean_output_as_it_is():
    """A denoiser that removes the noise but shifts red by 3 of 255: its smooth removed part is put back, so the
    output's mean colour sits where the input's does; a perfect output moves by no more than the noise's own
    smooth part."""
    rng = np.random.default_rng(0)
    clean = _scene(rng)
    noisy = clean + rng.normal(0, 5, clean.shape)
    shifted = clean + np.array([3.0, 0.0, 0.0])
    kept = keep_colour(noisy, shifted)
    assert np.abs((kept - noisy).mean((0, 1))).max() < 0.1 < 2.9 < np.abs((shifted - noisy).mean((0, 1))).max()
    assert np.abs(kept - clean).mean() < 0.3 * np.abs(shifted - clean).mean()
    assert np.abs(keep_colour(noisy, clean) - clean).max() < 2.0  # only the noise's smooth part, a fraction of 5


def test_the_colour_guard_bounds_each_channels_mean_move_and_with_any_keeps_issue_42s_bound():
    """Per channel, the output's whole-image mean moves at most COLOUR_BOUND from the input's: downward only with
    "darkening" (a brighter output is left as it is), both ways with "any", whence (triangle inequality) no mean
    sits further from any reference than the input's by more than the bound; the texture is untouched."""
    rng = np.random.default_rng(1)
    clean = _scene(rng, 33, 47)
    noisy = clean + rng.normal(0, 5, clean.shape)
    out = clean + np.array([-3.0, 2.0, 0.1])  # red darkened, green brightened, blue within the bound
    move = lambda y: (y - noisy).reshape(-1, 3).mean(0)  # noqa: E731
    dark, both = guard_colour(noisy, out, "darkening"), guard_colour(noisy, out, "any")
    assert np.allclose(move(dark), [-COLOUR_BOUND, move(out)[1], move(out)[2]])
    assert np.allclose(move(both), np.clip(move(out), -COLOUR_BOUND, COLOUR_BOUND))
    assert np.allclose(both - out, (both - out)[:1, :1])  # one shift per channel: every detail kept
    assert guard_colour(noisy, out, "off") is out
    for ref in (clean, clean + 4.0, clean - 4.0):  # wherever the reference sits
        shift = lambda y, ref=ref: np.abs((y - ref).reshape(-1, 3).mean(0))  # noqa: E731
        assert (shift(both) - shift(noisy)).max() <= COLOUR_BOUND + 1e-9
        assert (shift(out) - shift(noisy)).max() > 1.0  # unguarded, the output moved further
    over = noisy + np.linspace(0, 400, noisy.size).reshape(noisy.shape)  # far past white: measured as written
    written = np.clip(guard_colour(noisy, over, "any"), 0, 255)
    assert np.allclose(move(written), COLOUR_BOUND, atol=1e-6)
    gray = guard_colour(noisy[..., 0], out[..., 0], "any")
    assert np.isclose((gray - noisy[..., 0]).mean(), -COLOUR_BOUND)


def test_the_safeguard_blend_is_the_least_squares_one_and_never_worse_than_the_input():
    rng = np.random.default_rng(0)
    clean = _scene(rng)
    sigma = 10.0
    noisy = clean + rng.normal(0, sigma, clean.shape)
    mse = lambda a: float(np.mean((a - clean) ** 2))  # noqa: E731
    for lost in (2.0, 15.0, 30.0):  # an output whose error does not depend on the noise
        out = clean + rng.normal(0, lost, clean.shape)
        noise = NoiseEstimate(sigma, (0.0,) * 5, 0, 1)
        _, a = safeguard(noisy, out, noise, keep=1.0)  # always the blend
        assert a == pytest.approx(sigma**2 / (sigma**2 + lost**2), rel=0.05)  # the least-squares blend
        best = min(mse(noisy + b * (out - noisy)) for b in np.linspace(0, 1, 101))
        guarded, used = safeguard(noisy, out, noise)
        if lost < sigma:  # estimated better than the input: kept whole
            assert used == 1.0 and np.array_equal(guarded, out)
        else:
            assert mse(guarded) == pytest.approx(best, rel=0.02) and mse(guarded) < min(mse(noisy), mse(out))
    assert blend_weight(noisy, noisy, sigma**2) == 1.0  # nothing removed: nothing to blend


def test_auto_takes_the_least_loss_among_the_ks_the_noise_cannot_leak_through():
    rng = np.random.default_rng(1)
    noisy = rng.normal(100, 5, (32, 32, 3))
    outs = {k: noisy + rng.normal(0, 1 + abs(k - 1), noisy.shape) for k in (0, 1, 3, 5, 7, 9)}
    reach2 = NoiseEstimate(5.0, (0.5, 0.2, 0.0, 0.0, 0.0), 2, 4)
    assert choose_k(noisy, outs, reach2, reach_factor=1.0) == 3  # k = 1 is closest to the input but sees the noise
    assert choose_k(noisy, outs, reach2, reach_factor=2.0) == 5
    assert choose_k(noisy, outs, NoiseEstimate(5.0, (0.0,) * 5, 0, 4)) == 1
    assert choose_k(noisy, {0: outs[0], 1: outs[1]}, reach2, reach_factor=1.0) == 1  # none is safe: every k may
    # the default (the study's rule): every k but 0, whatever the reach
    assert choose_k(noisy, outs, reach2) == 1 and choose_k(noisy, {0: outs[1], 3: outs[3]}, reach2) == 3
    assert nearest([0, 1, 3, 5], 4) == 3 and nearest([0, 1, 3, 5], 2) == 1


def test_adaptive_takes_the_flat_k_in_flat_areas_and_the_textured_k_in_texture():
    clean = _scene(np.random.default_rng(2))
    outs = {5: clean + 1.0, 1: clean - 1.0}
    fused = fuse(outs, NoiseEstimate(4.0, (0.0,) * 5, 0, 1), flat_k=5, textured_k=1)
    assert np.allclose(fused[:, :50], clean[:, :50] + 1.0) and np.allclose(fused[:, 70:], clean[:, 70:] - 1.0)
    assert texture(clean)[:, :50].max() < 1e-6 < texture(clean)[:, 70:].min()


def test_rules_and_the_safeguard_through_denoise_keep_dtype_alpha_and_say_what_they_did():
    torch.manual_seed(0)
    teacher = ATBSN(width=4)
    rng = np.random.default_rng(3)
    noisy = np.clip(_scene(rng) + rng.normal(0, 12, (96, 128, 3)), 0, 65535).astype(np.uint16) * 257
    rgba = np.concatenate([noisy, np.full((96, 128, 1), 7, np.uint16)], -1)
    for k in ("auto", "adaptive"):
        report = {}
        out = denoise(rgba, teacher, k=k, safeguard=True, report=report)
        assert out.dtype == np.uint16 and out.shape == rgba.shape and (out[:, :, 3] == 7).all()
        assert report["noise"]["sigma"] == pytest.approx(measure_noise(noisy).sigma, abs=1e-3)
        assert 0 <= report["blend"] <= 1 and ("k" in report)
    report = {}
    plain = denoise(noisy, teacher, k=3)
    assert np.array_equal(denoise(noisy, teacher, k=3, report=report), plain) and report == {}
    student = Student("A", width=4)
    guarded = denoise(noisy, student, safeguard=True, report=report)  # the safeguard works for any network
    assert guarded.shape == noisy.shape and "blend" in report


def test_rules_are_refused_where_they_cannot_apply():
    teacher, student = ATBSN(width=4), Student("A", width=4)
    with pytest.raises(AtbsnError, match="non-blind"):
        denoise(np.zeros((32, 32, 3), np.uint8), student, k="auto")
    with pytest.raises(AtbsnError, match="not on tensors"):
        denoise_tensor(torch.zeros(1, 3, 32, 32), teacher, k="auto")
    with pytest.raises(AtbsnError, match="give a number or one of auto, adaptive"):
        denoise(np.zeros((32, 32, 3), np.uint8), teacher, k="best")


def test_the_cli_takes_k_auto_and_the_safeguard_and_logs_each_file(tmp_path, capsys):
    torch.manual_seed(0)
    save(ATBSN(width=4), tmp_path / "t.safetensors")
    rng = np.random.default_rng(4)
    noisy = np.clip(_scene(rng) + rng.normal(0, 12, (96, 128, 3)), 0, 255).astype(np.uint8)
    write_image(tmp_path / "in" / "a.png", noisy)
    model = str(tmp_path / "t.safetensors")
    assert main(["denoise", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", model,
                 "--k", "auto", "--safeguard", "-q"]) == 0
    out = capsys.readouterr().out
    assert "a.png: k = " in out and "safeguard kept" in out and (tmp_path / "out" / "a.png").exists()
    assert main(["export", "--model", model, "--k", "auto", "-o", str(tmp_path / "m.onnx")]) == 2
    assert "needs one value" in capsys.readouterr().err
    assert main(["denoise", str(tmp_path / "in"), "-o", str(tmp_path / "o2"), "--model", model, "--k", "best"]) == 2
    assert "not an integer >= 0 or one of auto, adaptive" in capsys.readouterr().err
