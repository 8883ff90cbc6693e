"""Where ``fit`` ends: the fitted student, or a released one the user already has when it does better on their
own photos, by the recorrupted-pair estimate of each one's error (:mod:`atbsn.noref`; no clean image).

A released student was trained for days on thousands of photos; a fit has minutes. On photos like its training
set the released one wins (benchmarks/results/fit_start.md), on others the fit does: so both are scored on the
user's photos, and the output file holds the better, with the teacher trained on the photos inside either way.
The fitted student is the one made for the photos, so a released one replaces it only on evidence (:func:`pick`):
the estimate (at 1.25x the noise variance) favours a network trained on many noise levels over one fitted to exactly
the photos' level, and on the demo's photos it put a released student ahead on average though the fit is truly 0.6
to 0.9 dB better there, and better on every photo.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import wilcoxon
from torch import nn

from .. import released
from ..checkpoint import load
from ..errors import AtbsnError
from ..inference import denoise_255
from ..measure import NoiseEstimate, measure_noise
from ..noref import mse_to_psnr, recorrupted_mse
from ..runtime import log
from .checks import _centre

# The centre crops each candidate is scored on (a 1M-parameter student scores 16 of them in seconds). On the study's
# tuning sets (sidd9, polyu100's tuning half) 8 to 32 photos chose alike; 16 was chosen with the held-out half in
# view, where 8 chose a student 0.6 dB below the best and 16 to 50 the best (results/fit_start.md).
SCORED_PHOTOS, SCORED_SIDE = 16, 256
# The evidence a released student needs to replace the fitted one: the one-sided Wilcoxon signed-rank test that its
# estimated errors are lower, photo by photo (one centre crop each), at EVIDENCE, on at least MIN_PHOTOS photos (the
# fewest at which it can pass). Rank-based, so neither a noisy photo nor one whose estimate falls below zero (a near
# exact network: sidd9) outweighs the rest. On sidd9 and polyu100's held-out half the released students passed it
# (p 0.017 or less, every seed), and they are 1.0 to 3.5 dB better there.
# Photos, not crops: the estimate errs photo by photo. On the demo's photos (simulated noise) crops of the same
# photo agreed with each other and were wrong together: four crops of each put every released student ahead at
# p <= 0.007, where the fitted one is truly 0.6 to 1.5 dB better, and better on every photo (results/fit_start.md).
EVIDENCE, MIN_PHOTOS = 0.05, 5
FITTED = "fitted"  # the candidate trained by this fit
BEST = "best"  # --from best: every released student, downloaded where it is not in the cache yet


@dataclass
class Candidate:
    """A network ``fit`` may write, under its name (a released model's, or :data:`FITTED`)."""

    name: str
    model: nn.Module


def as_denoiser(model: nn.Module, device: torch.device, guard: bool | None = None,
                colour: bool | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """``model`` as ``denoise`` runs it (:func:`atbsn.inference.denoise_255`), on an H x W x C float array on
    0..255 (values beyond it allowed), clipped to 0..255; ``guard`` and ``colour`` override the safeguard and
    the colour kept that the model records (None: as recorded)."""
    return lambda a: np.clip(denoise_255(a, model, device=device, safeguard=guard, keep_colour=colour), 0.0, 255.0)


def released_students(download: bool = False) -> list[Candidate]:
    """Every released student (or AT-BSN(D) bundle's student) in the cache; with ``download``, every one in the
    registry, fetched where needed (one that cannot be fetched is left out with a line saying why)."""
    out = []
    for name, entry in released.entries().items():
        if entry.kind not in ("student", "bundle") or not (download or released.is_cached(name)):
            continue
        try:
            out.append(Candidate(name, load(name, part="student", progress=download)))
        except AtbsnError as e:
            log.warning(f"  {name}: left out of the candidates ({e})")
    return out


def gather(from_model: str | None, parts: dict[str, nn.Module]) -> list[Candidate]:
    """The released students a fit weighs its own against: those in the cache, every one with ``--from best``
    (downloaded), and ``--from`` a student alone (``parts``: what ``--from`` holds)."""
    out = released_students(download=from_model == BEST)
    if "teacher" not in parts and "student" in parts:
        out = [c for c in out if c.name != from_model] + [Candidate(str(from_model), parts["student"])]
    return out


def scored_crops(sources: list, limit: int = SCORED_PHOTOS, side: int = SCORED_SIDE
                 ) -> list[tuple[np.ndarray, NoiseEstimate]]:
    """The centre crops the candidates are scored on (float64 on 0..255), each with its own measured noise."""
    crops = [_centre(src, side).astype(np.float64) for src in sources[:limit]]
    return [(crop, measure_noise(crop, factor=1.0)) for crop in crops]


def score(candidate: Candidate, crops: list[tuple[np.ndarray, NoiseEstimate]], device: torch.device) -> list[float]:
    """The candidate's estimated squared error on each of ``crops`` (:func:`atbsn.noref.recorrupted_mse`), one per
    photo."""
    fn = as_denoiser(candidate.model, device)
    return [recorrupted_mse(fn, crop, noise, seed=i) for i, (crop, noise) in enumerate(crops)]


def evidence(own: list[float], other: list[float]) -> float:
    """The p-value of ``other``'s estimated errors (one per photo) being lower than ``own``'s (the one-sided
    Wilcoxon signed-rank test; 1 with fewer than :data:`MIN_PHOTOS` photos or no difference)."""
    d = np.asarray(own, dtype=np.float64) - np.asarray(other, dtype=np.float64)
    if len(d) < MIN_PHOTOS or not d.any():
        return 1.0
    return float(wilcoxon(d, alternative="greater").pvalue)


def pick(errors: dict[str, list[float]]) -> str:
    """The name ``fit`` writes, from each candidate's estimated errors (one per photo): :data:`FITTED` unless another is
    ahead of it with :data:`EVIDENCE`; then, of those, the least mean error (the least overall without a fitted one)."""
    mean = {k: float(np.mean(v)) for k, v in errors.items()}
    if FITTED not in errors:
        return min(mean, key=mean.get)
    clear = [k for k in errors if k != FITTED and evidence(errors[FITTED], errors[k]) < EVIDENCE]
    return min(clear, key=mean.get) if clear else FITTED


def choose_best(candidates: list[Candidate], sources: list, device: torch.device) -> tuple[Candidate, list[dict]]:
    """The candidate ``fit`` writes (:func:`pick`) and every candidate's scores (for fit.json)."""
    crops = scored_crops(sources)
    per = [score(c, crops, device) for c in candidates]
    own = next((i for i, c in enumerate(candidates) if c.name == FITTED), None)
    rows = []
    for c, errors in zip(candidates, per):
        mse = float(np.mean(errors))
        recorded = c.model.config.training
        rows.append({"name": c.name, "estimated_mse": round(mse, 3), "estimated_psnr": round(mse_to_psnr(mse), 2),
                     "safeguard": bool(recorded.get("safeguard")), "keep_colour": bool(recorded.get("keep_colour")),
                     "colour_guard": recorded.get("colour_guard", "off")})
        if own is not None and c.name != FITTED:
            rows[-1]["p_better"] = round(evidence(per[own], errors), 4)
    best = [c.name for c in candidates].index(pick({c.name: e for c, e in zip(candidates, per)}))
    for i, row in enumerate(rows):
        row["chosen"] = i == best
        clear = f"; better than the fitted one at p = {row['p_better']:.3f}" if "p_better" in row else ""
        log.info(f"  {row['name']}: estimated {row['estimated_psnr']:.2f} dB on the photos (no clean image{clear})"
                 + ("  <- chosen" if i == best else ""))
    return candidates[best], rows
