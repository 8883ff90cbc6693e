"""The denoisers a user would otherwise run, as baselines in the same tables: OpenCV's non-local means, BM3D
(the ``bm3d`` package, ``pip install 'atbsn[baselines]'``) and Zero-Shot Noise2Noise (a tiny network trained on
the one noisy photo it denoises). Each takes and returns H x W x 3 uint8 images."""

from __future__ import annotations

import numpy as np

from .errors import AtbsnError

NLM_PARAMS = {"h": 10, "hColor": 10, "templateWindowSize": 7, "searchWindowSize": 21}  # OpenCV's usual setting


def nlm(noisy: np.ndarray) -> np.ndarray:
    """OpenCV ``fastNlMeansDenoisingColored`` with h = hColor = 10, 7 x 7 patches, 21 x 21 search."""
    import cv2

    bgr = np.ascontiguousarray(noisy[:, :, ::-1])
    return np.ascontiguousarray(cv2.fastNlMeansDenoisingColored(bgr, None, **NLM_PARAMS)[:, :, ::-1])


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


# ZS-N2N (Mansour and Heckel, CVPR 2023): their published recipe for one image
ZSN2N_WIDTH, ZSN2N_STEPS, ZSN2N_LR, ZSN2N_HALVE_EVERY = 48, 2000, 1e-3, 1000


def zsn2n(noisy: np.ndarray, steps: int = ZSN2N_STEPS, seed: int = 0, device: str = "cpu") -> np.ndarray:
    """Zero-Shot Noise2Noise: a network of two 3 x 3 convolutions (LeakyReLU 0.2) and a 1 x 1 one that predicts
    the noise, trained on this photo alone. Its two half-size images (the means of each 2 x 2 cell's diagonal and
    anti-diagonal pixels) are each other's target (the residual loss), and denoising then halving must agree with
    halving then denoising (the consistency loss); Adam at 1e-3, halved every 1,000 of its 2,000 steps. Costs
    ``steps`` training steps per photo: minutes per megapixel on a CPU."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    c = noisy.shape[2]
    y = torch.from_numpy(np.ascontiguousarray(noisy.transpose(2, 0, 1))).float().div(255.0)[None].to(device)

    def conv(cin: int, cout: int, k: int) -> torch.nn.Conv2d:
        layer = torch.nn.Conv2d(cin, cout, k, padding=k // 2)
        with torch.no_grad():  # PyTorch's default init, drawn from this call's own generator
            bound = 1 / (cin * k * k) ** 0.5
            layer.weight.uniform_(-bound, bound, generator=gen)
            layer.bias.uniform_(-bound, bound, generator=gen)
        return layer

    net = torch.nn.Sequential(conv(c, ZSN2N_WIDTH, 3), torch.nn.LeakyReLU(0.2), conv(ZSN2N_WIDTH, ZSN2N_WIDTH, 3),
                              torch.nn.LeakyReLU(0.2), conv(ZSN2N_WIDTH, c, 1)).to(device)
    diagonal = torch.tensor([[[[0.5, 0.0], [0.0, 0.5]]]], device=device).repeat(c, 1, 1, 1)
    anti = torch.tensor([[[[0.0, 0.5], [0.5, 0.0]]]], device=device).repeat(c, 1, 1, 1)

    def halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.conv2d(x, diagonal, stride=2, groups=c), F.conv2d(x, anti, stride=2, groups=c)

    def denoise(x: torch.Tensor) -> torch.Tensor:
        return x - net(x)

    h, w = y.shape[2] // 2 * 2, y.shape[3] // 2 * 2
    even = y[:, :, :h, :w]
    a, b = halves(even)
    opt = torch.optim.Adam(net.parameters(), lr=ZSN2N_LR)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=ZSN2N_HALVE_EVERY, gamma=0.5)
    for _ in range(steps):
        da, db = denoise(a), denoise(b)
        residual = 0.5 * (F.mse_loss(a, db) + F.mse_loss(b, da))
        fa, fb = halves(denoise(even))
        consistency = 0.5 * (F.mse_loss(da, fa) + F.mse_loss(db, fb))
        opt.zero_grad()
        (residual + consistency).backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        out = denoise(y).clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()
    return np.round(out * 255.0).astype(np.uint8)


def _bm3d_package():
    try:
        import bm3d as package
    except ImportError:
        raise AtbsnError("BM3D needs the bm3d package: pip install 'atbsn[baselines]'") from None
    return package
