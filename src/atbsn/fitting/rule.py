"""The blind spot from the photos' own noise: heavy noise takes the paper's k_a = 9, mild noise a small one, a
short fit, the stop at the noise and the safeguard (the study: benchmarks/fit_rule.py, results/fit_rule.md)."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import replace
from typing import Any

from ..config import SIDD_KS
from ..datasets import collect_sources
from ..measure import NoiseEstimate, measure_set
from ..runtime import log
from .config import FitConfig

# A teacher trained for minutes loses texture with every pixel of blind spot, so from scratch the student learns
# from small k: its flat areas from the teacher at its own k_b and its textured ones from k = 0 (the partition
# loss, :func:`partition_ks`); a released teacher is converged, so it teaches at the paper's k with its loss.
# The partition against the mean of k = 0 and 1 everywhere (the default before), fit --minutes 5, three seeds
# each, paired (benchmarks/fit_targets.py, results/fit_targets.md): +0.30 dB on sidd9, +0.38 +- 0.21 on polyu100's
# tuning half (within noise), then +0.23 on the held-out half and +0.22 on the demo's photos (SSIM-Y +0.011).
FROM_SCRATCH = {"loss": "partition"}
SCRATCH_KS = [0, 1]  # the k of the mean and multi losses from scratch (--loss mean or multi without --ks)


FROM_RELEASED = {"ks": list(SIDD_KS), "loss": "multi"}


# The blind spot from the photos' own noise (issue 27; the study: benchmarks/fit_rule.py, results/fit_rule.md).
# A blind spot trades noise let through against texture lost. Heavy noise (sidd9, the demo's, DND's: median flat-
# area sigma 8.5 to 14.5 of 255) needs the paper's k_a = 9: with k_a = 1 or 3 a minutes-long teacher copies the
# noise (sidd9: 26.0 and 29.0 dB against 33.6, ablations_sidd9.md). Mild noise (polyu100's DSLR photos: sigma 2.0
# to 2.7) is the opposite: on its tuning half (input 36.16 dB) a 2-minute fit with k_a = 1 gave 35.4 dB against
# 32.2 for k_a = 9, 36.6 with the safeguard. Trained longer, k_a = 1 learns to copy the correlated noise: 768,
# 1762 teacher steps gave 36.5, 36.0 dB, its student removing 1.15x, then 0.73x the noise level; hence the stop
# at 1x (the discrepancy principle). MILD_SIGMA sits between the two groups seen (the log midpoint of 2.7, 8.5).
MILD_SIGMA = 4.8


# The cap (stop_curve.md, fit_rule.md): on polyu100's tuning half, students with the safeguard from k_a = 1
# teachers of 359, 768 and 1762 steps gave 36.61 / 36.66, 36.65 / 36.82 and 36.25 / 36.05 dB (300 / 700 to 1200
# student steps): a longer teacher loses, a longer student from a short one does not. 800 teacher steps, first
# chosen, fell below NLM on the held-out half (36.08 in one seed), the 2-minute fits (about 385) did not.
MILD_STEP_CAP = [400, 700]


# keep_colour (results/colour.md): on mild noise every output of polyu100's tuning half had moved its mean colour
# further from the clean one than the input's (by up to 1.4 of 255 for the fit, 2.3 for a released student) and
# putting back the smooth part of what was removed gained 0.15 dB; on heavy noise the input's own mean is biased
# (sidd9's sit below their references: the tone curve, as clipping would bias them the other way), and it cost up to
# 2.4 dB.
# colour_guard (benchmarks/colour_guard.py, results/colour_guard.md): on heavy noise fit's students darkened one of
# sidd9's photos by up to 1.35 of 255 beyond its input's distance from the reference, and no bound on darkening moved
# their PSNR by more than 0.02 dB; bounding both ways cost them 0.4 to 0.5 dB (a camera's noise darkens the noisy
# mean: sidd9's references sit above their inputs, and the students rightly brighten).
HEAVY = {"k_train": 9, "k_infer": 3, **FROM_SCRATCH, "safeguard": False, "keep_colour": False,
         "colour_guard": "darkening", "stop_at_noise": False, "step_cap": None}


MILD = {"k_train": 1, "k_infer": 1, **FROM_SCRATCH, "safeguard": True, "keep_colour": True, "colour_guard": "off",
        "stop_at_noise": True, "step_cap": MILD_STEP_CAP}


# The classical teacher's strength (--nlm-weight, off by default): OpenCV NLM's h as a multiple of the measured
# sigma (benchmarks/fit_targets.py, results/fit_targets.md): the best multiple was 2 on polyu100's tuning half and
# sidd9, 1 on the demo's photos; 1.5 is within 0.12 dB of the best on each.
NLM_STRENGTH = 1.5
# BM3D's noise std as a multiple of the measured sigma (--bm3d-weight, off by default; the same study): on
# polyu100's tuning half (its first 8 photos) BM3D gained up to 6 x (37.27 dB; 4 x: 37.15; 1 x: 35.84; noisy 35.44)
BM3D_STRENGTH = 4.0
# fit adds it by itself (bm3d_teacher_for) on mild noise where its pass fits BM3D_SHARE of the budget: on polyu100's
# first four photos of each half (results/fit_targets_bm3d.md) --bm3d-weight 0.5 gained +0.46 +- 0.23 and
# +0.56 +- 0.24 dB in 5-minute fits (3 seeds each, every seed above), SSIM-Y unchanged
BM3D_WEIGHT = 0.5
BM3D_SECONDS_PER_MP = 256.0  # one core of the study's machine: 67 s a 512 x 512 photo
BM3D_SHARE = 0.5


CHOSEN = ("k_train", "k_infer", "ks", "loss", "safeguard", "keep_colour", "colour_guard", "stop_at_noise", "step_cap",
          "nlm_weight", "bm3d_weight")
GUARDS = ("safeguard", "keep_colour", "colour_guard")  # what a fine-tuned released teacher's fit still chooses


def blind_spot_for(noise: NoiseEstimate) -> tuple[dict[str, Any], str]:
    """The teacher's k_a and k_b and the student's k set and loss for photos whose (set-level) noise is ``noise``,
    and why, in words."""
    if not noise.measured:
        return dict(HEAVY), "photos too small to measure their noise: the paper's large blind spot"
    if noise.sigma < MILD_SIGMA:
        return dict(MILD), f"mild noise (sigma {noise.sigma:.1f} < {MILD_SIGMA:g}): a small blind spot keeps texture"
    return dict(HEAVY), f"heavy noise (sigma {noise.sigma:.1f} >= {MILD_SIGMA:g}): the paper's large blind spot"


def choose(cfg: FitConfig, noise: NoiseEstimate, fine_tune: bool = False) -> tuple[FitConfig, dict[str, Any]]:
    """``cfg`` with what it leaves open (k_a, k_b, the k set, the loss, the safeguard, the colour kept, the stop
    and the cap) chosen from the photos' noise by :func:`blind_spot_for`; what the user gave wins. Fine-tuning a
    released teacher (``fine_tune``), only the safeguard and the colour are chosen: it keeps its own blind spot."""
    rule, why = blind_spot_for(noise)
    if fine_tune:
        rule, why = ({k: rule[k] for k in GUARDS},
                     f"{why}; from a released model: its own blind spot")
    given = {f: getattr(cfg, f) for f in CHOSEN if getattr(cfg, f) is not None}
    chosen = {f: v for f, v in rule.items() if f not in given and v is not None}
    if "ks" in given and "loss" not in given and not fine_tune:  # a k set given alone: the student learns from its mean
        chosen["loss"] = "mean"
    if "ks" not in given and not fine_tune:
        partition = given.get("loss", chosen.get("loss")) == "partition"
        chosen["ks"] = partition_ks(given.get("k_infer", chosen.get("k_infer"))) if partition else list(SCRATCH_KS)
    return replace(cfg, **chosen), {"rule": why, "chosen": chosen, "given": given}


def partition_ks(k_infer: int | None) -> list[int]:
    """``--loss partition``'s k without ``--ks``: flat areas from the teacher at its own k_b, textured ones from
    k = 0 (the demo's study, results/recipe_steps.md: sharper than k = 0 and 1 averaged everywhere)."""
    return [HEAVY["k_infer"] if k_infer is None else k_infer, 0]


MEASURED = 32  # photos whose noise fit measures and records (the first ones)


def _noise(data: list[str]) -> tuple[NoiseEstimate, dict]:
    """The photos' own noise (level, correlation, reach; :mod:`atbsn.measure`), printed; and as kept in fit.json,
    with the photos' pixels (None beyond the first :data:`MEASURED` photos)."""
    every = collect_sources(data)
    sources, pixels = every[:MEASURED], [0]

    def loaded():
        for src in sources:
            image = src.load()
            pixels[0] += image[0].shape[0] * image[0].shape[1]
            yield image

    whole, each = measure_set(loaded())
    log.info(f"  the photos' noise: {whole.describe()}")
    return whole, {"set": whole.as_dict(), "images": {str(src.path): e.as_dict() for src, e in zip(sources, each)},
                   "pixels": pixels[0] if len(every) <= MEASURED else None}


def bm3d_teacher_for(noise: NoiseEstimate, pixels: int | None, minutes: float | None) -> tuple[bool, str | None]:
    """Whether fit adds BM3D as the student's classical teacher by itself (``--bm3d-weight`` not given), and why:
    on mild noise, where the bm3d package is installed and its pass over the photos (:data:`BM3D_SECONDS_PER_MP`
    a megapixel on one core, photos side by side) takes at most :data:`BM3D_SHARE` of ``minutes``. No reason
    (None) on heavy noise, where BM3D is well below the blind-spot teachers."""
    if not noise.measured or noise.sigma >= MILD_SIGMA:
        return False, None
    if importlib.util.find_spec("bm3d") is None:
        return False, "mild noise, but the bm3d package is missing (pip install 'atbsn[baselines]')"
    if minutes is None or pixels is None:
        return False, "mild noise, but no budget in minutes or more than a few photos"
    seconds = pixels / 1e6 * BM3D_SECONDS_PER_MP / (os.cpu_count() or 1)
    if seconds > BM3D_SHARE * minutes * 60:
        return False, f"mild noise, but BM3D on these photos would take about {seconds / 60:.1f} min"
    return True, f"mild noise and BM3D over these photos in about {seconds / 60:.1f} min"
