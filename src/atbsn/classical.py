"""The denoisers a user would otherwise run, as baselines in the same tables: OpenCV's non-local means, BM3D
(the ``bm3d`` package, ``pip install 'atbsn[baselines]'``) and Zero-Shot Noise2Noise (a tiny network trained on
the one noisy photo it denoises). Each takes and returns H x W x 3 uint8 images."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .errors import AtbsnError
from .methods import zsn2n as zsn2n_method

NLM_PARAMS = {"h": 10, "hColor": 10, "templateWindowSize": 7, "searchWindowSize": 21}  # OpenCV's usual setting


def nlm(noisy: np.ndarray) -> np.ndarray:
    """OpenCV ``fastNlMeansDenoisingColored`` with h = hColor = 10, 7 x 7 patches, 21 x 21 search."""
    return nlm_at(noisy, NLM_PARAMS["h"])


def nlm_at(noisy: np.ndarray, h: float) -> np.ndarray:
    """:func:`nlm` with the filter strength ``h`` = hColor (0..255) set from a noise level instead of OpenCV's
    usual 10; the same windows."""
    import cv2

    bgr = np.ascontiguousarray(noisy[:, :, ::-1])
    params = {**NLM_PARAMS, "h": h, "hColor": h}
    return np.ascontiguousarray(cv2.fastNlMeansDenoisingColored(bgr, None, **params)[:, :, ::-1])


@dataclass(frozen=True)
class ClassicalTeacher:
    """A classical denoiser as the distillation's teacher beside the blind-spot ones (``distill --nlm-h`` or
    ``--bm3d-sigma``): ``denoise`` (H x W x 3 uint8 and a strength, to the same) at ``strength``. ``processes``:
    whether several photos run side by side, one process per core (BM3D keeps a core busy for a minute a photo;
    OpenCV's NLM threads itself)."""

    name: str
    denoise: Callable[[np.ndarray, float], np.ndarray]
    strength: float
    processes: bool = False

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        """On each image of an N x 3 x H x W float batch in 0..255 (rounded to uint8 as the classical denoisers
        take it); float32 on the batch's device."""
        u8 = _u8(y.detach().float().permute(0, 2, 3, 1).cpu().numpy())
        out = np.stack([self.denoise(a, self.strength) for a in u8])
        return torch.from_numpy(out).permute(0, 3, 1, 2).to(y.device, torch.float32)

    def many(self, photos: list[np.ndarray]) -> list[np.ndarray]:
        """On several H x W x 3 photos (any dtype, 0..255): uint8 outputs, in order."""
        photos = [_u8(a) for a in photos]
        strengths = [self.strength] * len(photos)
        if self.processes:
            return in_processes(self.denoise, photos, strengths)
        return [self.denoise(a, s) for a, s in zip(photos, strengths)]


def nlm_teacher(h: float) -> ClassicalTeacher:
    """Non-local means at strength ``h`` (:func:`nlm_at`) as a teacher."""
    return ClassicalTeacher("NLM", nlm_at, h)


def bm3d_teacher(sigma: float) -> ClassicalTeacher:
    """BM3D at noise std ``sigma`` (:func:`bm3d`) as a teacher; the bm3d package is checked here, on one line."""
    _bm3d_package()
    return ClassicalTeacher("BM3D", bm3d, sigma, processes=True)


def _u8(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == np.uint8 else np.clip(np.round(a), 0, 255).astype(np.uint8)


def noise_sigma(noisy: np.ndarray, clean: np.ndarray | None = None) -> float:
    """The noise standard deviation on the 0..255 scale: measured against ``clean`` when given (the oracle a
    simulation knows), else estimated from the noisy image alone (wavelet MAD, scikit-image)."""
    if clean is not None:
        return float(np.std(noisy.astype(np.float64) - clean.astype(np.float64)))
    from skimage.restoration import estimate_sigma

    return 255.0 * float(estimate_sigma(noisy.astype(np.float64) / 255.0, channel_axis=-1, average_sigmas=True))


def bm3d(noisy: np.ndarray, sigma: float) -> np.ndarray:
    """BM3D for colour images (``bm3d.bm3d_rgb``) at noise std ``sigma`` (0..255 scale)."""
    out = _bm3d_package().bm3d_rgb(noisy.astype(np.float64) / 255.0, sigma_psd=sigma / 255.0)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def bm3d_many(images: list[np.ndarray], sigmas: list[float], workers: int | None = None) -> list[np.ndarray]:
    """:func:`bm3d` on several images, one process per core: the outputs of one call per image, in order.
    bm3d keeps a core only partly busy, so images side by side finish sooner than one after the other, though
    each takes longer (the demo reports the wall time over its photos)."""
    _bm3d_package()  # a missing package fails here, on one line, not in a worker
    return in_processes(bm3d, images, sigmas, workers)


def in_processes(fn: Callable[[np.ndarray, float], np.ndarray], images: list[np.ndarray], strengths: list[float],
                 workers: int | None = None) -> list[np.ndarray]:
    """``fn(image, strength)`` for each image, one process per core (at most ``workers``), in order."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    workers = min(len(images), workers or os.cpu_count() or 1)
    if workers <= 1:
        return [fn(a, s) for a, s in zip(images, strengths)]
    # spawned, not forked: the parent may hold OpenMP threads (torch) that a forked child would inherit
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, images, strengths))


def zsn2n(noisy: np.ndarray, steps: int | None = None, seed: int = 0, device: str = "cpu",
          precision: str = "fp32") -> np.ndarray:
    """Zero-Shot Noise2Noise as its authors run it: a tiny network trained on this photo alone, then applied
    (:func:`atbsn.methods.zsn2n.zero_shot`; ``steps`` defaults to their 2,000)."""
    return zsn2n_method.zero_shot(noisy, zsn2n_method.STEPS if steps is None else steps, seed, device, precision)


def _bm3d_package():
    try:
        import bm3d as package
    except ImportError:
        raise AtbsnError("BM3D needs the bm3d package: pip install 'atbsn[baselines]'") from None
    return package
