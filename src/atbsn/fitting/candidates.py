"""Where ``fit`` ends: the fitted student, or a released one the user already has when it does better on their
own photos, by the recorrupted-pair estimate of each one's error (:mod:`atbsn.noref`; no clean image).

A released student was trained for days on thousands of photos; a fit has minutes. On photos like its training
set the released one wins (benchmarks/results/fit_start.md), on others the fit does: so both are scored on the
user's photos, and the output file holds the better, with the teacher trained on the photos inside either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
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


def score(candidate: Candidate, crops: list[tuple[np.ndarray, NoiseEstimate]], device: torch.device) -> float:
    """The candidate's estimated squared error, the mean over ``crops`` (:func:`atbsn.noref.recorrupted_mse`)."""
    fn = as_denoiser(candidate.model, device)
    return float(np.mean([recorrupted_mse(fn, crop, noise, seed=i) for i, (crop, noise) in enumerate(crops)]))


def choose_best(candidates: list[Candidate], sources: list, device: torch.device) -> tuple[Candidate, list[dict]]:
    """The candidate with the least estimated error on the photos, and every candidate's scores (for fit.json).
    The fitted one wins ties: it is the one made for these photos."""
    crops = scored_crops(sources)
    rows = []
    for c in candidates:
        mse = score(c, crops, device)
        recorded = c.model.config.training
        rows.append({"name": c.name, "estimated_mse": round(mse, 3), "estimated_psnr": round(mse_to_psnr(mse), 2),
                     "safeguard": bool(recorded.get("safeguard")), "keep_colour": bool(recorded.get("keep_colour")),
                     "colour_guard": recorded.get("colour_guard", "off")})
    best = min(range(len(candidates)), key=lambda i: (rows[i]["estimated_mse"], candidates[i].name != FITTED))
    for i, row in enumerate(rows):
        row["chosen"] = i == best
        log.info(f"  {row['name']}: estimated {row['estimated_psnr']:.2f} dB on the photos (no clean image)"
                 + ("  <- chosen" if i == best else ""))
    return candidates[best], rows
