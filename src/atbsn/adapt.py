"""Denoising fitted to each photo's own noise, without a clean image: k_b per image (``--k auto``), k_b per
region (``--k adaptive``) and a final blend toward the input (``--safeguard``).

All three start from what a blind-spot teacher gives in one pass (its output at every k, ``denoise_ks``) and
from the photo's measured noise (:mod:`atbsn.measure`), and work on 0..255 float arrays.

- **safeguard**: a denoiser's output y of the noisy x = clean + n leaves an error e. When e does not depend on n
  (a blind-spot network's output at a pixel does not see that pixel's noise), the removed part r = x - y = n - e
  has variance sigma^2 + |e|^2, and the blend x - a r has the least squared error at a = sigma^2 / var(r) (then
  below both sigma^2, the input's, and |e|^2, the output's). sigma^2 is the measured noise level; a is kept in
  [0, 1]. Where the network removes little besides noise a is near 1; where it takes away detail as well, the
  result moves toward the input.
- **auto**: the k whose removed part matches the noise best by the same measure (see :func:`choose_k`).
- **adaptive**: the paper's S5.1: flat regions favour a larger k_b, textured ones a smaller one. Each pixel
  mixes the outputs at a large and a small k by how textured the output is around it, measured against the
  noise level (see :func:`fuse`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from .measure import NoiseEstimate, noise_variance
from .metrics import local_std

# The rules' constants, from benchmarks/adapt.py (results/adapt.md): ADAPTIVE as its tuning half of sidd9 chose;
# SAFE_REACH by its one-rule criterion (least regret in the worse set, on the tuning halves of sidd9 and polyu100):
# 0 wins with and without the safeguard (alone, both sets' tuning halves prefer it: the noise's measured reach does
# not tell which k leaks); KEEP after seeing both halves (the criterion could not separate 0.5 to 1), so
# provisional: keep from 0.7 kept every sidd9 output whole, always blending cost 0.37 dB there.
ADAPTIVE = (3, 0, 0.5)  # --k adaptive: k for flat areas, k for textured ones, the texture scale (x sigma)
KEEP = 0.7  # the safeguard keeps an output whose blend weight is at least this (estimated clearly better)
SAFE_REACH = 0.0  # --k auto considers k > SAFE_REACH x the noise's reach (0: every k but 0)


@dataclass(frozen=True)
class Choice:
    """What was done to one image: the k used (None: fused), the blend toward the input (1: none)."""

    k: int | None
    blend: float = 1.0
    note: str = ""


COLOUR_SCALE = 16.0  # keep_colour's Gaussian, in pixels (results/colour.md)


def keep_colour(noisy: np.ndarray, out: np.ndarray, scale: float = COLOUR_SCALE) -> np.ndarray:
    """``out`` plus the smooth part (a Gaussian of ``scale`` pixels) of what it removed from ``noisy`` (both H x W x C
    on 0..255): noise has zero mean, so over tens of pixels what a denoiser removed should average to nothing, and
    where it does not the denoiser moved the colour or brightness. Put back, the output keeps the input's local
    means. Right for mild noise; heavy noise through a camera's tone curve biases the input's own mean (sidd9's
    sit below their references; on sidd9 it cost a released student 2.4 dB), so ``fit`` asks for it only on mild
    noise."""
    removed = np.asarray(noisy, np.float64) - out
    return out + gaussian_filter(removed, (scale, scale, 0)[: removed.ndim], mode="reflect")


COLOUR_BOUND = 0.4  # how far (of 255) colour_guard lets each channel's mean move (issue 42 bounds the move at 0.5)
COLOUR_GUARDS = ("off", "darkening", "any")


def guard_colour(noisy: np.ndarray, out: np.ndarray, guard: str, bound: float = COLOUR_BOUND) -> np.ndarray:
    """``out`` (H x W x C on 0..255) shifted per channel so that its whole-image mean, clipped to 0..255 as it is
    written, sits at most ``bound`` from ``noisy``'s: below it only (``guard="darkening"``), or either way
    (``"any"``; ``"off"``: unchanged). With "any" no output's mean can sit further from a clean reference than the
    input's by more than ``bound``. A camera's noise through its tone curve darkens the sRGB mean (most of
    sidd9's references sit 1 to 9 of 255 above their noisy inputs), so a brighter output can be right and "darkening"
    bounds only the other way (results/colour_guard.md)."""
    if guard == "off":
        return out
    c = out.shape[-1] if out.ndim == 3 else 1
    flat = np.asarray(out).reshape(-1, c)  # no float64 copy of a large photo: the means accumulate in float64
    target = np.asarray(noisy).reshape(-1, c).mean(0, dtype=np.float64)
    written = np.clip(flat, 0.0, 255.0).mean(0, dtype=np.float64)  # the mean as written (clipped to 0..255)
    goal = np.clip(written, target - bound, target + bound if guard == "any" else np.inf)
    shift = [_shift_to(flat[:, i], goal[i], written[i]) if goal[i] != written[i] else 0.0 for i in range(c)]
    return out + np.asarray(shift, dtype=out.dtype)


def _shift_to(values: np.ndarray, goal: float, now: float) -> float:
    """The s for which clip(values + s, 0, 255) has mean ``goal`` (``now`` at s = 0; it rises with s): Newton,
    whose slope is the unclipped share (one step where nothing clips), else bisection."""
    def mean(s: float) -> float:
        return float(np.clip(values + s, 0.0, 255.0).mean(dtype=np.float64))

    s = goal - now
    for _ in range(4):
        z = values + s
        err = float(np.clip(z, 0.0, 255.0).mean(dtype=np.float64)) - goal
        if abs(err) < 1e-6:
            return s
        inside = float(((z > 0) & (z < 255)).mean())
        if inside < 0.5:
            break
        s -= err / inside
    lo, hi = -float(values.max()), 255.0 - float(values.min())
    for _ in range(60):
        s = (lo + hi) / 2
        lo, hi = (s, hi) if mean(s) < goal else (lo, s)
    return (lo + hi) / 2


def blend_weight(noisy: np.ndarray, out: np.ndarray, variance: float, trust: float = 1.0) -> float:
    """The safeguard's a = trust x sigma^2 / var(noisy - out), in [0, 1], ``variance`` the noise's sigma^2
    (``trust`` < 1 hedges an estimate that reads high: a smaller a errs toward the input)."""
    removed = float(np.var(noisy.astype(np.float64) - out))
    return 1.0 if removed <= 0 else float(min(1.0, trust * variance / removed))


def safeguard(noisy: np.ndarray, out: np.ndarray, noise: NoiseEstimate, trust: float = 1.0,
              keep: float = KEEP) -> tuple[np.ndarray, float]:
    """``out`` when it is estimated clearly better than the input, else the blend ``noisy - a (noisy - out)``
    with the least expected squared error; and the a used (1: kept). With a = sigma^2 / var(r), the output's
    error is estimated as var(r) - sigma^2, so a >= ``keep`` means an output error below (1 / keep - 1)
    sigma^2 (0.43 sigma^2 at the default 0.7; the input's is sigma^2). sigma^2 is the mean noise variance over
    the image, each pixel's read at its brightness in ``out`` (:func:`noise_variance`). Keeping a good output
    whole matters: there the best a is near 1, and an estimate of sigma^2 a tenth low would leave a tenth of
    the noise in (the blend alone lost 0.4 dB on sidd9)."""
    a = blend_weight(noisy, out, noise_variance(noise, out), trust)
    a = 1.0 if a >= keep else a
    return (out if a >= 1.0 else noisy + a * (out - noisy)), a


def choose_k(noisy: np.ndarray, outputs: dict[int, np.ndarray], noise: NoiseEstimate,
             reach_factor: float = SAFE_REACH) -> int:
    """The k with the least expected error after the safeguard: with a_k = sigma^2 / var(r_k) that error is
    sigma^2 (1 - a_k), least where the removed part r_k varies least, i.e. the k with the least blind-spot loss
    (the squared distance to the noisy input). Only k the noise cannot leak through qualify (k > reach_factor x
    reach, or every k when none does): there the output at a pixel does not see its noise, and the loss
    estimates the error; a blind spot the noise leaks through keeps noise and only looks better."""
    ks = sorted(outputs)
    safe = [k for k in ks if k > reach_factor * noise.reach] or ks
    x = noisy.astype(np.float64)
    return min(safe, key=lambda k: (float(np.mean((x - outputs[k]) ** 2)), k))


def texture(image: np.ndarray) -> np.ndarray:
    """The package's texture measure (:func:`atbsn.metrics.local_std`, channel mean) of an H x W (x C) image."""
    a = np.asarray(image, dtype=np.float64)
    a = a[:, :, None] if a.ndim == 2 else a
    return local_std(torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None], gray="mean")[0, 0].numpy()


def fuse(outputs: dict[int, np.ndarray], noise: NoiseEstimate, flat_k: int, textured_k: int,
         scale: float = 1.0) -> np.ndarray:
    """Per pixel, ``outputs[flat_k]`` where the output around it is flat and ``outputs[textured_k]`` where it
    is textured: the weight of the flat one falls from 1 to 0 as the local standard deviation of the textured
    output rises from ``scale`` x sigma to twice that."""
    t = texture(outputs[textured_k])
    lo = max(scale * noise.sigma, 1e-3)
    w = np.clip(2.0 - t / lo, 0.0, 1.0)[..., None]
    a, b = outputs[flat_k].astype(np.float64), outputs[textured_k].astype(np.float64)
    a = a[:, :, None] if a.ndim == 2 else a
    b = b[:, :, None] if b.ndim == 2 else b
    out = w * a + (1 - w) * b
    return out.reshape(outputs[textured_k].shape)


def nearest(ks: list[int], k: int) -> int:
    """The value of ``ks`` closest to ``k`` (the smaller on a tie): a rule's k where the network offers others."""
    return min(ks, key=lambda v: (abs(v - k), v))


def describe(report: dict) -> str:
    """One line for what was done to an image (a report of :func:`atbsn.inference.denoise`)."""
    parts = []
    if "k" in report:
        parts.append(f"k = {report['k']}")
    if "blend" in report:
        parts.append(f"safeguard kept {100 * report['blend']:.0f}% of the change")
    noise = report.get("noise")
    if noise:
        parts.append(f"noise sigma {noise['sigma']:.1f}, reach {noise['reach']}")
    return ", ".join(parts)
