"""Inference: device and precision, tiled denoising with context margins, numpy and torch entry points.

Any model of this package takes N x C x H x W in 0..255. Large images are cut into tiles on a 32-pixel
grid; each tile is denoised inside a window that adds context around it (so every window sees the same
pooling grid as the whole image would) and only the tile is kept: memory stays bounded by the window.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .blindspot import validate_k
from .errors import AtbsnError

PRECISIONS = ("fp32", "bf16", "fp16")
GRID = 32
# Peak bytes per input pixel under no_grad, fp32, CPU, measured on one 512 x 512 window (teacher 2,700 since
# its head runs in bands; C 1,400, kept at the earlier 2,400; A 1,170; B 2,300), rounded up.
# benchmarks/memory.py checks the whole tiled path on a 24 MP photo.
_BYTES_PER_PIXEL = {"atbsn": 3000, "A": 1200, "B": 2400, "C": 2400}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise AtbsnError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AtbsnError(f"device {device!r} requested but CUDA is not available here")
    return dev


def autocast(device: torch.device, precision: str = "fp32"):
    """A context that runs the forward in the requested precision (fp32: no-op)."""
    if precision not in PRECISIONS:
        raise AtbsnError(f"unknown precision {precision!r} (use {', '.join(PRECISIONS)})")
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise AtbsnError("fp16 needs a CUDA device; use bf16 on the CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def model_fn(model: nn.Module, k: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function ``x -> denoised x`` for a teacher at blind spot k (default k_b) or a student."""
    if model.config.is_teacher:
        kk = validate_k(model.config.k_infer if k is None else k)
        return lambda x: model(x, kk)
    if k is not None:
        raise AtbsnError(
            f"k={k} applies only to an AT-BSN teacher; student {model.config.arch} is non-blind and has no blind spot"
        )
    return model


def available_memory(device: torch.device) -> int:
    """Free memory in bytes on the device (for CPU: available RAM)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def plan_tiles(
    model: nn.Module, device: torch.device, tile: int | None = None, margin: int | None = None,
    budget: int | None = None,
) -> tuple[int, int]:
    """Tile side and context margin for ``model``.

    A model that records its training crop (short CPU runs generalise badly to larger inputs) is run on
    windows of that crop: tile = crop / 2 with crop / 4 of context. Otherwise the tile is the largest
    multiple of 32 whose window (tile plus context) has an estimated peak within a quarter of free
    memory (at most 4 GiB on CPU).
    """
    cfg = model.config
    if tile is None and cfg.train_crop:
        crop = int(cfg.train_crop)
        return max(crop // 2, 1), crop // 4 if margin is None else margin
    if tile is None:
        if budget is None:
            budget = available_memory(device) // 4
            if device.type == "cpu":
                budget = min(budget, 4 << 30)
        per_pixel = _BYTES_PER_PIXEL[cfg.arch] * cfg.width / 48
        window = int((budget / per_pixel) ** 0.5)
        tile = int(min(max((window - 2 * _MARGIN[cfg.arch]) // GRID * GRID, 128), 2048))
    if tile < 1:
        raise AtbsnError(f"tile must be a positive number of pixels, got {tile}")
    return tile, default_margin(tile, cfg.arch) if margin is None else margin


def _windows(length: int, tile: int, margin: int) -> list[tuple[int, int, int, int]]:
    """Cores of ``tile`` px covering [0, length), each with ``margin`` px of context on both sides.

    Returns (window start, window end, core start, core end). With tile and margin multiples of 32,
    every window starts on the 32-grid, so it sees the same pooling grid as the whole image.
    """
    out = []
    for c0 in range(0, length, tile):
        c1 = min(c0 + tile, length)
        out.append((max(c0 - margin, 0), min(c1 + margin, length), c0, c1))
    return out


def run_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    margin: int | None = None,
    device: torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Apply ``fn`` to windows of ``x`` (N x C x H x W) and keep each window's core.

    Each output pixel comes from exactly one window in which it has ``margin`` pixels of context on every
    side (or the image border): no blending, so no averaging of two different predictions, and memory
    bounded by (tile + 2 margin)^2. Returns float32 on ``x``'s device.
    """
    n, _, h, w = x.shape
    if margin is None:
        margin = default_margin(tile)
    if margin < 0:
        raise AtbsnError(f"tile margin must be >= 0, got {margin}")
    if h <= tile and w <= tile:
        return fn(x.to(device) if device is not None else x).float().to(x.device)
    out = None  # allocated from the first window: ``fn`` may return any number of channels
    rows, cols = _windows(h, tile, margin), _windows(w, tile, margin)
    total, done = len(rows) * len(cols), 0
    for y0, y1, cy0, cy1 in rows:
        for x0, x1, cx0, cx1 in cols:
            patch = x[:, :, y0:y1, x0:x1]
            y = fn(patch.to(device) if device is not None else patch)
            if out is None:
                out = torch.empty(n, y.shape[1], h, w, dtype=torch.float32, device=x.device)
            out[:, :, cy0:cy1, cx0:cx1] = y[:, :, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0].float().to(x.device)
            done += 1
            if progress is not None:
                progress(done, total)
    return out


# Context each tile needs so that tiled and untiled outputs agree (measured on the released SIDD student C:
# 96 px gives 0.05/255 max difference; the teacher's half-plane backbone reaches about twice as far
# vertically; students A and B see +-16 px).
_MARGIN = {"atbsn": 128, "A": 32, "B": 32, "C": 96}


def default_margin(tile: int, arch: str = "C") -> int:
    """Context around each tile for ``arch``, at most half the tile, on the 32-grid when possible."""
    m = min(_MARGIN[arch], tile // 2)
    return m // GRID * GRID if m >= GRID else m


def prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a model for inference: eval mode, the device, channels-last (faster convolutions on CPU)."""
    return model.eval().to(device=device, memory_format=torch.channels_last)


@torch.no_grad()
def denoise_tensor(
    x: torch.Tensor,
    model: nn.Module,
    k: int | None = None,
    tile: int | None = None,
    margin: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """Denoise a batch N x C x H x W of 0..255 values; returns float32 0..255 (unclipped) on x's device."""
    dev = resolve_device(device)
    fn = model_fn(prepare(model, dev), k)
    cin = model.config.in_channels
    if x.ndim != 4:
        raise AtbsnError(f"expected an N x C x H x W batch, got shape {tuple(x.shape)}")
    c = x.shape[1]
    if c != cin:
        if cin == 3 and c == 1:
            return denoise_tensor(x.expand(-1, 3, -1, -1), model, k, tile, margin, dev, precision).mean(
                1, keepdim=True
            )
        if cin == 1:
            n = x.shape[0]
            y = denoise_tensor(x.reshape(n * c, 1, *x.shape[2:]), model, k, tile, margin, dev, precision)
            return y.reshape(x.shape)
        raise AtbsnError(f"the model takes {cin} channels, the image has {c}")
    tile, margin = plan_tiles(model, dev, tile, margin)
    ctx = autocast(dev, precision)

    def run(t: torch.Tensor) -> torch.Tensor:
        with ctx:
            return fn(t.float().contiguous(memory_format=torch.channels_last))

    return run_tiled(run, x, tile, margin, device=dev)


_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def to_model_range(image: np.ndarray) -> tuple[np.ndarray, float]:
    """A float32 copy of an image in 0..255, and the factor that maps 0..255 back to its own range."""
    scale = _SCALE.get(image.dtype, 1.0)
    if scale == 1.0 and not np.issubdtype(image.dtype, np.floating):
        raise AtbsnError(f"unsupported image dtype {image.dtype} (use uint8, uint16 or float 0..1)")
    return image.astype(np.float32) * (255.0 / scale), scale / 255.0


def from_model_range(y: np.ndarray, factor: float, dtype: np.dtype) -> np.ndarray:
    """Back to the image's own range and dtype: clip, and round for integer types."""
    out = np.clip(y * factor, 0.0, factor * 255.0)
    return np.round(out).astype(dtype) if np.issubdtype(dtype, np.integer) else out.astype(dtype)


def denoise(
    image: np.ndarray,
    model: nn.Module,
    k: int | None = None,
    tile: int | None = None,
    margin: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
) -> np.ndarray:
    """Denoise one H x W (x C) image in its own dtype (uint8, uint16, float 0..1); same dtype back.

    Gray and RGB are denoised; an alpha channel (the last of 2 or 4) is passed through untouched.
    """
    a = np.asarray(image)
    squeeze = a.ndim == 2
    if squeeze:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise AtbsnError(f"expected an H x W x C image with C in 1..4, got shape {a.shape}")
    colour, alpha = (a[:, :, :-1], a[:, :, -1:]) if a.shape[2] in (2, 4) else (a, None)
    x, factor = to_model_range(colour)
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
    y = denoise_tensor(t, model, k, tile, margin, device, precision)[0].permute(1, 2, 0).numpy()
    out = from_model_range(y, factor, a.dtype)
    if alpha is not None:
        out = np.concatenate([out, alpha], axis=2)
    return out[:, :, 0] if squeeze else out


def denoise_files(
    inputs: list[str | Path],
    out_dir: str | Path,
    model: nn.Module,
    k: int | None = None,
    tile: int | None = None,
    margin: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    overwrite: bool = False,
    progress: bool = True,
    on_error: Callable[[str], None] | None = None,
) -> tuple[list[Path], list[str]]:
    """Denoise files, folders (recursively, keeping their layout) and globs into ``out_dir``.

    Outputs keep name, format, size, bit depth and alpha. An output that would replace its own input is
    refused; existing outputs are skipped unless ``overwrite``. A file that fails is reported (one line
    naming it) and the rest go on. Returns (written files, error lines).
    """
    from tqdm import tqdm

    from .datasets import expand_inputs
    from .images import read_image, write_image

    out_root = Path(out_dir)
    if out_root.exists() and not out_root.is_dir():
        raise AtbsnError(f"{out_root}: output path exists and is not a folder")
    try:
        out_root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AtbsnError(f"{out_root}: cannot create the output folder ({e.strerror})") from None
    if not os.access(out_root, os.W_OK):
        raise AtbsnError(f"{out_root}: output folder is not writable")
    if model.config.is_teacher and k is not None:
        validate_k(k)
    model_fn(model, k)  # refuse k for a student before any work
    dev = resolve_device(device)
    written, errors = [], []
    for src, rel in tqdm(expand_inputs(inputs), desc="denoise", unit="img", disable=not progress):
        dst = out_root / rel
        try:
            if dst.resolve() == src.resolve():
                raise AtbsnError(f"{src}: output would overwrite the input; choose another output folder")
            if dst.exists() and not overwrite:
                if progress:
                    tqdm.write(f"skip {dst} (exists; --overwrite to replace)")
                continue
            image = read_image(src)
            write_image(dst, denoise(image, model, k, tile, margin, dev, precision))
            written.append(dst)
        except AtbsnError as e:
            errors.append(str(e))
            if on_error is not None:
                on_error(str(e))
    return written, errors
