"""What a fit can measure without a clean image: how much a network removes against the photos' noise, on centre
crops, and whether a fine-tuned network ended better than it started (held-out losses)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..adapt import safeguard
from ..config import RunConfig
from ..engine import heldout_batch, heldout_loss
from ..inference import denoise_tensor
from ..measure import measure_noise
from ..noise import flat_noise_std
from ..runtime import log

# A fitted model that removes more than this times the flat-area noise level gets a warning. Measured
# (benchmarks/removal.py): medians 1.0-1.2 for every fit that improved the demo photos and sidd9, 1.9-2.9 for
# every fit that made polyu100's mild noise worse.
REMOVAL_LIMIT = 1.5


def _keep_better(label: str, start: torch.nn.Module, result: torch.nn.Module, loss, batch, device,
                 precision: str) -> tuple[torch.nn.Module, dict]:
    """The one of ``start`` and ``result`` with the lower held-out ``loss``, and the numbers behind the choice."""
    before = heldout_loss(start.to(device), loss, batch, device, precision)
    after = heldout_loss(result.to(device), loss, batch, device, precision)
    kept = "result" if after <= before else "start"
    log.info(f"  {label}: held-out loss {before:.4f} at the start, {after:.4f} after; kept the "
             + ("fine-tuned one" if kept == "result" else "starting one (fine-tuning did not improve it)"))
    return (result if kept == "result" else start), {"start_loss": before, "result_loss": after, "kept": kept}


TARGET_PHOTOS, TARGET_SIDE = 4, 256  # the crops the stop looks at


def centre_crops(sources: list, limit: int, side: int) -> list[tuple[torch.Tensor, float]]:
    """The centre ``side`` crops of up to ``limit`` photos (1 x C x H x W, 0..255), each with its flat-area noise
    level (:func:`atbsn.noise.flat_noise_std`): read once, looked at many times."""
    out = []
    for src in sources[:limit]:
        crop = _centre(src, side)
        out.append((torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None], flat_noise_std(crop)))
    return out


def target_ratio(teacher: nn.Module, ks: list[int], crops: list[tuple[torch.Tensor, float]],
                 device: torch.device) -> float:
    """What the student will learn to remove, over the noise there is: the median over ``crops``
    (:func:`centre_crops`) of the standard deviation of input minus the teacher's mean output over ``ks`` (its own
    k_b when empty), over the crop's flat-area noise level."""
    ratios = []
    for noisy, level in crops:
        outs = [denoise_tensor(noisy, teacher, k=k, device=device).cpu() for k in (ks or [None])]
        ratios.append(float((noisy - sum(outs) / len(outs)).std()) / max(level, 1e-3))
    return float(np.median(ratios))


def _centre(src, side: int) -> np.ndarray:
    """The centre ``side`` x ``side`` crop of a photo source (smaller photos whole), float32 on 0..255."""
    a, factor = src.load()
    return centre_crop(a, side) * factor


def centre_crop(a: np.ndarray, side: int) -> np.ndarray:
    """The centre ``side`` x ``side`` crop of an H x W x C array (smaller arrays whole), as float32."""
    y, x = max(0, (a.shape[0] - side) // 2), max(0, (a.shape[1] - side) // 2)
    return np.asarray(a[y : y + side, x : x + side], dtype=np.float32)


def _better(report: dict, label: str, start: nn.Module | None, result: nn.Module, loss, config: RunConfig,
            device: torch.device, precision: str) -> nn.Module:
    """``result``, or with a starting network the better of the two by held-out ``loss()`` (recorded in ``report``)."""
    if start is None:
        return result
    kept, report[label] = _keep_better(label, start, result, loss(), heldout_batch(config, 3, 32), device, precision)
    return kept


def removal_ratio(model: torch.nn.Module, sources: list, device: torch.device, limit: int = 8,
                  side: int = 512) -> float:
    """How much a denoiser takes away, against the noise it could take: the median over up to ``limit`` photos
    (centre crops of ``side``) of the standard deviation of input minus output over the noise level of the
    photo's flattest areas (:func:`atbsn.noise.flat_noise_std`). Near 1 for a denoiser that removes noise;
    far above it, the output has lost signal as well (no clean image is needed to see it)."""
    return output_check(model, sources, device, limit, side)[0]


CHECKED = 8  # the photos whose output fit checks at the end


def output_check(model: torch.nn.Module, sources: list, device: torch.device, limit: int = CHECKED,
                 side: int = 512) -> tuple[float, list[dict]]:
    """:func:`removal_ratio`, and per photo its ratio and what ``--safeguard`` would do to the output
    (:func:`atbsn.adapt.safeguard`: keep it, or blend it toward the input)."""
    ratios, photos = [], []
    for src in sources[:limit]:
        crop = _centre(src, side)
        noisy = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None]
        out = denoise_tensor(noisy, model, device=device).cpu()
        ratios.append(float((noisy - out).std()) / max(flat_noise_std(crop), 1e-3))
        guarded = safeguard(crop, out[0].permute(1, 2, 0).numpy(), measure_noise(crop, factor=1.0))[1]
        photos.append({"photo": str(src.path), "removed_over_noise": round(ratios[-1], 3),
                       "safeguard": "keeps the output" if guarded >= 1 else f"blends {guarded:.2f} of the change"})
    return float(np.median(ratios)), photos
