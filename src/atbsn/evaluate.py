"""Scoring against clean references: ``evaluate`` (one model), ``sweep`` (teachers over many k) and its report."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn

from .config import SIDD_KS
from .datasets import Pair, load_pairs
from .files import atomic_write, write_text
from .inference import InferenceOptions, denoise, to_model_range
from .metrics import psnr, scores
from .runtime import progress_bar

METRICS = ("psnr", "ssim_rgb", "ssim_y")


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def evaluate(
    model: nn.Module,
    data: str | Path | list[Pair],
    options: InferenceOptions | None = None,
    *,
    limit: int | None = None,
    save_dir: str | Path | None = None,
    progress: bool = False,
    **kw,
) -> tuple[list[dict], dict]:
    """Denoise every noisy image of ``data`` and score it and the noisy input against the clean one.

    Returns per-image rows and a summary of means. PSNR is on uint8-rounded output; SSIM is given on
    RGB and on Y. With ``save_dir``, the denoised images are written there as PNG. Keyword arguments are
    :class:`~atbsn.inference.InferenceOptions` fields (``k``, ``tile``, ``device``, ``precision``).
    """
    from .images import write_image

    opts = InferenceOptions.of(options, **kw).for_model(model)
    pairs = data if isinstance(data, list) else load_pairs(data, limit)
    rows = []
    seconds = 0.0
    for p in progress_bar(pairs, desc="evaluate", unit="img", show=progress):
        t0 = time.perf_counter()
        out = denoise(p.noisy, model, opts)
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
        "k": opts.k,
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
    write_text(json_path, json.dumps(summary, indent=2) + "\n")
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
    ks: Sequence[int] = SIDD_KS,
    options: InferenceOptions | None = None,
    *,
    labels: Sequence[str] | None = None,
    limit: int | None = None,
    **kw,
) -> list[dict]:
    """PSNR/SSIM of each teacher at each inference blind-spot size k_b (one row per teacher and k).

    Each row names its teacher by ``labels[i]`` (default ``k_a = <k_train>``, or ``teacher <i>`` when the
    checkpoint does not record k_a).
    """
    pairs = data if isinstance(data, list) else load_pairs(data, limit)
    rows = []
    for i, t in enumerate(teachers):
        label = labels[i] if labels else (f"{t.config.knob}_a = {t.config.k_train}" if t.config.k_train
                                          else f"teacher {i}")
        for k in ks:
            _, s = evaluate(t, pairs, InferenceOptions.of(options, **kw, k=k))
            rows.append({"teacher": i, "label": label, "k_a": t.config.k_train, "k_b": k, **{m: s[m] for m in METRICS}})
    return rows


def crops_by_k(
    teacher: nn.Module, image: np.ndarray, box: tuple[int, int, int, int], ks: Sequence[int],
    options: InferenceOptions | None = None, **kw,
) -> list[np.ndarray]:
    """The same crop (y, x, height, width) of ``image`` denoised at each k: the supplementary's Figure S4.

    The whole image is denoised (so the crop has its real context), then cropped.
    """
    y, x, h, w = box
    return [denoise(image, teacher, InferenceOptions.of(options, **kw, k=k))[y : y + h, x : x + w] for k in ks]


def sweep_report(
    teachers: Sequence[nn.Module], data: str | Path | list[Pair], out_dir: str | Path, ks: Sequence[int] = SIDD_KS,
    options: InferenceOptions | None = None, *, labels: Sequence[str] | None = None, limit: int | None = None,
    crop_size: int | None = None,
) -> dict:
    """``sweep`` written out: ``sweep.json``, the PSNR-over-k_b plot, the k_a x k_b heatmap for several
    teachers, and with ``crop_size`` the centre crop of the first pair at every k (``crops.png``).

    Returns the rows, the noisy input's mean PSNR and the paths written.
    """
    from .plots import image_strip, plot_heatmap, plot_sweep

    pairs = data if isinstance(data, list) else load_pairs(data, limit)
    rows = sweep(teachers, pairs, ks, options, labels=labels)
    out = Path(out_dir)
    noisy = float(np.mean([psnr(*(to_model_range(x)[0] for x in (p.noisy, p.clean))) for p in pairs]))
    paths = {"json": write_text(out / "sweep.json", json.dumps(rows, indent=2) + "\n"),
             "plot": plot_sweep(rows, out / "sweep.png", noisy)}
    if len(teachers) > 1:
        paths["heatmap"] = plot_heatmap(rows, out / "heatmap.png")
    if crop_size:
        p = pairs[0]
        h, w = p.noisy.shape[:2]
        size = min(crop_size, h, w)
        y, x = h // 2 - size // 2, w // 2 - size // 2
        crops = crops_by_k(teachers[0], p.noisy, (y, x, size, size), ks, options)
        images = [p.noisy[y : y + size, x : x + size], *crops, p.clean[y : y + size, x : x + size]]
        paths["crops"] = image_strip(images, ["noisy", *[f"k_b = {k}" for k in ks], "clean"], out / "crops.png")
    return {"rows": rows, "noisy_psnr": noisy, "paths": paths}


def format_sweep(rows: Sequence[dict], noisy_psnr: float) -> str:
    """The sweep as a text table."""
    lines = [f"{'teacher':>12} {'k_b':>4} {'PSNR':>7} {'SSIM-RGB':>9} {'SSIM-Y':>7}   (noisy {noisy_psnr:.2f} dB)"]
    lines += [f"{r['label'][-12:]:>12} {r['k_b']:>4} {r['psnr']:7.2f} {r['ssim_rgb']:9.4f} {r['ssim_y']:7.4f}"
              for r in rows]
    return "\n".join(lines)
