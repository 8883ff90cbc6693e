"""Scoring against clean references: ``evaluate`` (one model) and ``sweep`` (a teacher over many k)."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn

from .checkpoint import atomic_write
from .datasets import Pair, load_pairs
from .inference import denoise, to_model_range
from .metrics import scores

METRICS = ("psnr", "ssim_rgb", "ssim_y")


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def evaluate(
    model: nn.Module,
    data: str | Path | list[Pair],
    k: int | None = None,
    tile: int | None = None,
    device: str | None = None,
    precision: str = "fp32",
    limit: int | None = None,
    save_dir: str | Path | None = None,
    progress: bool = False,
) -> tuple[list[dict], dict]:
    """Denoise every noisy image of ``data`` and score it and the noisy input against the clean one.

    Returns per-image rows and a summary of means. PSNR is on uint8-rounded output; SSIM is given on
    RGB and on Y. With ``save_dir``, the denoised images are written there as PNG.
    """
    from tqdm import tqdm

    from .images import write_image

    pairs = data if isinstance(data, list) else load_pairs(data, limit)
    rows = []
    seconds = 0.0
    for p in tqdm(pairs, desc="evaluate", unit="img", disable=not progress):
        t0 = time.perf_counter()
        out = denoise(p.noisy, model, k=k, tile=tile, device=device, precision=precision)
        seconds += time.perf_counter() - t0
        noisy, _ = to_model_range(p.noisy)
        clean, _ = to_model_range(p.clean)
        den, _ = to_model_range(out)
        row = {"name": p.name, **scores(den, clean), **{f"noisy_{m}": v for m, v in scores(noisy, clean).items()}}
        rows.append(row)
        if save_dir is not None:
            write_image(Path(save_dir) / f"{p.name}.png", out)
    summary = {
        "images": len(rows),
        **{m: _mean(rows, m) for m in METRICS},
        **{f"noisy_{m}": _mean(rows, f"noisy_{m}") for m in METRICS},
        "seconds_per_image": seconds / max(len(rows), 1),
        "k": k if k is not None else (model.config.k_infer if model.config.is_teacher else None),
        "conventions": "psnr: RGB 0..255 on uint8-rounded output; ssim_rgb: Gaussian sigma 1.5 on RGB; "
        "ssim_y: the same on BT.601 luma (AT-BSN authors' convention)",
    }
    return rows, summary


def write_report(rows: list[dict], summary: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """``per_image.csv`` and ``summary.json`` in ``out_dir``, written atomically."""
    out = Path(out_dir)
    csv_path, json_path = out / "per_image.csv", out / "summary.json"

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)

    atomic_write(csv_path, write_csv)
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2) + "\n"))
    return csv_path, json_path


def format_summary(summary: dict) -> str:
    return (
        f"{summary['images']} images   PSNR {summary['psnr']:.2f} dB (noisy {summary['noisy_psnr']:.2f})   "
        f"SSIM-RGB {summary['ssim_rgb']:.4f} (noisy {summary['noisy_ssim_rgb']:.4f})   "
        f"SSIM-Y {summary['ssim_y']:.4f} (noisy {summary['noisy_ssim_y']:.4f})"
    )


def sweep(
    teachers: Sequence[nn.Module],
    data: str | Path | list[Pair],
    ks: Sequence[int] = (0, 1, 3, 5, 7, 9, 11),
    tile: int | None = None,
    device: str | None = None,
    limit: int | None = None,
) -> list[dict]:
    """PSNR/SSIM of each teacher at each inference blind-spot size k_b (one row per teacher and k)."""
    pairs = data if isinstance(data, list) else load_pairs(data, limit)
    rows = []
    for i, t in enumerate(teachers):
        for k in ks:
            _, s = evaluate(t, pairs, k=k, tile=tile, device=device)
            rows.append({"teacher": i, "k_a": t.config.k_train, "k_b": k, **{m: s[m] for m in METRICS}})
    return rows


def crops_by_k(
    teacher: nn.Module, image: np.ndarray, box: tuple[int, int, int, int], ks: Sequence[int], tile: int | None = None,
    device: str | None = None,
) -> list[np.ndarray]:
    """The same crop (y, x, height, width) of ``image`` denoised at each k: the supplementary's Figure S4.

    The whole image is denoised (so the crop has its real context), then cropped.
    """
    y, x, h, w = box
    return [denoise(image, teacher, k=k, tile=tile, device=device)[y : y + h, x : x + w] for k in ks]
