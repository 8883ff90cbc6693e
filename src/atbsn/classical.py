"""The denoisers a user would otherwise run, as baselines in the same tables: OpenCV's non-local means, BM3D
(the ``bm3d`` package, ``pip install 'atbsn[baselines]'``) and Zero-Shot Noise2Noise (a tiny network trained on
the one noisy photo it denoises). Each takes and returns H x W x 3 uint8 images."""

from __future__ import annotations

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


def nlm_batch(y: torch.Tensor, h: float) -> torch.Tensor:
    """:func:`nlm_at` on each image of an N x 3 x H x W float batch in 0..255: the distillation's classical
    teacher (``--nlm-h``)."""
    return _each_image(y, lambda a: nlm_at(a, h))


def bm3d_batch(y: torch.Tensor, sigma: float) -> torch.Tensor:
    """:func:`bm3d` at ``sigma`` on each image of an N x 3 x H x W float batch in 0..255: the distillation's
    classical teacher (``--bm3d-sigma``); seconds a photo, so fit uses it where the targets are computed once."""
    _bm3d_package()
    return _each_image(y, lambda a: bm3d(a, sigma))


def _each_image(y: torch.Tensor, fn) -> torch.Tensor:
    """``fn`` (H x W x 3 uint8 to the same) on each image of a float batch in 0..255, rounded to uint8 as the
    classical denoisers take it; returned as float32 on the batch's device."""
    u8 = y.detach().float().clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = np.stack([fn(a) for a in u8])
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(y.device, torch.float32)


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
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    _bm3d_package()  # a missing package fails here, on one line, not in a worker
    workers = min(len(images), workers or os.cpu_count() or 1)
    if workers <= 1:
        return [bm3d(a, s) for a, s in zip(images, sigmas)]
    # spawned, not forked: the parent may hold OpenMP threads (torch) that a forked child would inherit
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(bm3d, images, sigmas))


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
