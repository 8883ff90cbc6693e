"""Benchmark submissions: SIDD (Kaggle CSV, or the legacy .mat) and DND (the per-image .mat bundle)."""

from __future__ import annotations

import base64
import csv
import time
from pathlib import Path

import numpy as np
from torch import nn

from .datasets import _mat_variable
from .errors import AtbsnError
from .files import atomic_write, check_apart, source_of
from .inference import InferenceOptions, denoise
from .runtime import log, progress_bar


def denoise_sidd_blocks(blocks: np.ndarray, model: nn.Module, progress: bool = True, **kw) -> np.ndarray:
    """Denoise an images x blocks x 256 x 256 x 3 uint8 array block by block (``kw``: inference options)."""
    opts = InferenceOptions.of(**kw).for_model(model)
    out = np.empty_like(blocks)
    n, m = blocks.shape[:2]
    with progress_bar(total=n * m, desc="sidd", unit="block", show=progress) as bar:
        for i in range(n):
            for j in range(m):
                out[i, j] = denoise(blocks[i, j], model, opts)
                bar.update()
    return out


SIDD_SHAPE = (40, 32, 256, 256)  # images x blocks x H x W of the SIDD benchmark


def read_sidd_blocks(path: str | Path) -> np.ndarray:
    path = Path(path)
    arr = _mat_variable(path, ["BenchmarkNoisyBlocksSrgb", "ValidationNoisyBlocksSrgb"])
    if arr.ndim != 5 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise AtbsnError(f"{path}: expected uint8 blocks images x blocks x H x W x 3, got {arr.dtype} {arr.shape}")
    if 0 in arr.shape:
        raise AtbsnError(f"{path}: holds no blocks (shape {arr.shape}); a submission needs all of them")
    if arr.shape[:4] != SIDD_SHAPE:
        log.warning("%s: %d x %d blocks of %d x %d; the SIDD benchmark has 40 x 32 blocks of 256 x 256, so the "
                    "server will not accept this submission", path, *arr.shape[:4])
    return arr


def write_sidd_csv(blocks: np.ndarray, path: str | Path) -> Path:
    """Kaggle format: ID (image-major, 0..N*M-1), BLOCK = base64 of the block's raw uint8 bytes (HWC)."""
    n, m = blocks.shape[:2]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["ID", "BLOCK"])
            for i in range(n):
                for j in range(m):
                    block = np.ascontiguousarray(blocks[i, j], dtype=np.uint8)
                    w.writerow([i * m + j, base64.b64encode(block.tobytes()).decode("ascii")])

    atomic_write(path, write)
    return Path(path)


def read_sidd_csv(path: str | Path, block_shape: tuple[int, ...] = (256, 256, 3)) -> dict[int, np.ndarray]:
    """Decode a submission CSV back into blocks (to check one before uploading it)."""
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 24))  # one block is 256 KiB of base64
    with open(path, newline="") as f:
        return {
            int(r["ID"]): np.frombuffer(base64.b64decode(r["BLOCK"]), np.uint8).reshape(block_shape)
            for r in csv.DictReader(f)
        }


def write_sidd_mat(blocks: np.ndarray, path: str | Path, seconds_per_mp: float = 0.0) -> Path:
    """The legacy ``SubmitSrgb.mat``: a cell array ``DenoisedBlocksSrgb`` of images x blocks uint8 blocks."""
    from scipy.io import savemat

    n, m = blocks.shape[:2]
    cells = np.empty((n, m), dtype=object)
    for i in range(n):
        for j in range(m):
            cells[i, j] = blocks[i, j]
    data = {"DenoisedBlocksSrgb": cells, "TimeMPSrgb": float(seconds_per_mp)}
    atomic_write(path, lambda tmp: savemat(tmp, data, do_compression=True, format="5", appendmat=False))
    return Path(path)


def sidd_protocol(out: str | Path) -> str:
    """Which SIDD benchmark a submission file is for: the two protocols' scores must never be compared (the same
    model scores 0.5 to 1.4 dB higher on the Kaggle re-host than on the original server)."""
    if str(out).lower().endswith(".mat"):
        return ("the original SIDD server's format (the server is closed; papers up to 2024 report its scores, "
                "e.g. AT-BSN(D) 37.77)")
    return ("the Kaggle re-host of the SIDD benchmark (newer papers' protocol, e.g. TM-BSN(D) 38.31; it scores "
            "0.5 to 1.4 dB above the original server: never rank the two together)")


def submit_sidd(
    noisy_mat: str | Path, out: str | Path, model: nn.Module, progress: bool = True, **kw
) -> Path:
    """Denoise ``BenchmarkNoisyBlocksSrgb.mat``; write a CSV, or the legacy .mat if ``out`` ends in .mat."""
    check_apart([out], [noisy_mat, source_of(model)])
    blocks = read_sidd_blocks(noisy_mat)
    t0 = time.perf_counter()
    den = denoise_sidd_blocks(blocks, model, progress=progress, **kw)
    mp = blocks.shape[0] * blocks.shape[1] * blocks.shape[2] * blocks.shape[3] / 1e6
    if str(out).lower().endswith(".mat"):
        return write_sidd_mat(den, out, (time.perf_counter() - t0) / mp)
    return write_sidd_csv(den, out)


def read_dnd_boxes(info_mat: str | Path) -> list[np.ndarray]:
    """Per image, the crops as (row0, row1, col0, col1), 0-based half-open, from DND's ``info.mat``."""
    import h5py

    try:
        with h5py.File(info_mat, "r") as f:
            info = f["info"]
            refs = np.asarray(info["boundingboxes"]).ravel()
            boxes = [np.asarray(f[r]).T.astype(int) for r in refs]
    except (OSError, KeyError) as e:
        raise AtbsnError(f"{info_mat}: not a DND info.mat (MATLAB v7.3 with info.boundingboxes): {e}") from None
    return [np.stack([b[:, 0] - 1, b[:, 2], b[:, 1] - 1, b[:, 3]], axis=1) for b in boxes]


def submit_dnd(dnd_dir: str | Path, out_dir: str | Path, model: nn.Module, progress: bool = True, **kw) -> list[Path]:
    """Denoise every bounding box of DND's sRGB images; write one ``NNNN.mat`` per image (``Idenoised``
    cell array of float crops in 0..1, ``israw`` false, ``eval_version`` "1.0"), as the DND site expects."""
    from scipy.io import savemat

    root = Path(dnd_dir)
    check_apart([out_dir], [root, source_of(model)])
    if not (root / "info.mat").exists() or not (root / "images_srgb").is_dir():
        raise AtbsnError(f"{root}: expected a DND folder with info.mat and images_srgb/")
    opts = InferenceOptions.of(**kw).for_model(model)
    boxes = read_dnd_boxes(root / "info.mat")
    written = []
    with progress_bar(total=sum(len(b) for b in boxes), desc="dnd", unit="block", show=progress) as bar:
        for i, bb in enumerate(boxes):
            src = root / "images_srgb" / f"{i + 1:04d}.mat"
            noisy = _mat_variable(src, ["InoisySRGB"]).astype(np.float32)
            crops = np.empty((len(bb),), dtype=object)
            for j, (r0, r1, c0, c1) in enumerate(bb):
                crops[j] = denoise(np.ascontiguousarray(noisy[r0:r1, c0:c1]), model, opts)
                bar.update()
            dst = Path(out_dir) / f"{i + 1:04d}.mat"
            data = {"Idenoised": crops, "israw": False, "eval_version": "1.0"}
            atomic_write(dst, lambda tmp, data=data: savemat(tmp, data, format="5", appendmat=False))
            written.append(dst)
    return written
