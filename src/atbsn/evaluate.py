"""Scoring against clean references: ``evaluate`` (one model), ``sweep`` (teachers over many k) and its report."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from .datasets import Pair, load_pairs
from .errors import AtbsnError
from .files import atomic_write, check_apart, source_of, write_text
from .images import write_image
from .inference import InferenceOptions, denoise, denoise_ks
from .metrics import TEXTURE_WINDOW, colour_shift, local_std, psnr, scores
from .plots import image_strip, plot_heatmap, plot_sweep
from .ranges import as_batch, to_model_range
from .runtime import progress_bar

METRICS = ("psnr", "ssim_rgb", "ssim_y")


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


@dataclass
class TextureSplit:
    """Regions of a paired set grouped into "flat" and "textured" (the supplementary's Fig. S4 split).

    The measure: the mean, over a region, of the local standard deviation of the clean image's luma in 7 x 7
    windows (0..255 scale; the same measure the partition loss applies to a denoised image). A region is a
    whole image, or with ``crop`` each non-overlapping crop x crop square (edges that do not fill one are
    left out). ``threshold`` defaults to the median region score: two halves of equal size.
    Each region is (pair index, y, x, height, width).
    """

    groups: dict[str, list[tuple[int, int, int, int, int]]]
    threshold: float
    crop: int | None

    @classmethod
    def of(cls, pairs: Sequence[Pair], crop: int | None = None, threshold: float | None = None) -> TextureSplit:
        regions, measures = [], []
        for i, p in enumerate(pairs):
            clean = as_batch(p.clean)[0]
            texture = local_std(clean, TEXTURE_WINDOW)[0, 0].numpy()
            h, w = texture.shape
            boxes = [(0, 0, h, w)] if not crop else [(y, x, crop, crop) for y in range(0, h - crop + 1, crop)
                                                     for x in range(0, w - crop + 1, crop)]
            for y, x, bh, bw in boxes:
                regions.append((i, y, x, bh, bw))
                measures.append(float(texture[y : y + bh, x : x + bw].mean()))
        if not regions:
            raise AtbsnError(f"no region of {crop} x {crop} pixels fits in these images; use a smaller crop")
        thr = float(np.median(measures)) if threshold is None else float(threshold)
        groups = {"flat": [r for r, m in zip(regions, measures) if m <= thr],
                  "textured": [r for r, m in zip(regions, measures) if m > thr]}
        return cls(groups, thr, crop)

    def scores(self, outputs: Sequence[np.ndarray], pairs: Sequence[Pair]) -> dict[str, dict[str, float]]:
        """Mean PSNR/SSIM per group of denoised ``outputs`` (one per pair, in the pairs' own dtype)."""
        result = {}
        for name, regions in self.groups.items():
            rows = []
            for i, y, x, h, w in regions:
                den = to_model_range(outputs[i][y : y + h, x : x + w])[0]
                rows.append(scores(den, to_model_range(pairs[i].clean[y : y + h, x : x + w])[0]))
            result[name] = {"regions": len(rows), **({m: _mean(rows, m) for m in METRICS} if rows else {})}
        return result


def evaluate(
    model: nn.Module,
    data: str | Path | list[Pair],
    options: InferenceOptions | None = None,
    *,
    limit: int | None = None,
    save_dir: str | Path | None = None,
    progress: bool = False,
    split: TextureSplit | bool | None = None,
    **kw,
) -> tuple[list[dict], dict]:
    """Denoise every noisy image of ``data`` and score it and the noisy input against the clean one.

    Returns per-image rows and a summary of means. PSNR is on uint8-rounded output; SSIM is given on
    RGB and on Y. With ``save_dir``, the denoised images are written there as PNG. With ``split`` (a
    :class:`TextureSplit`, or True for whole images split at the median), the summary also scores the flat
    and the textured group. Keyword arguments are :class:`~atbsn.inference.InferenceOptions` fields (``k``,
    ``tile``, ``device``, ``precision``).
    """
    check_apart([save_dir], [None if isinstance(data, list) else data, source_of(model)])
    opts = InferenceOptions.of(options, **kw).for_model(model)
    pairs = data if isinstance(data, list) else load_pairs(data, limit)
    outputs, seconds = [], 0.0
    for p in progress_bar(pairs, desc="evaluate", unit="img", show=progress):
        t0 = time.perf_counter()
        outputs.append(denoise(p.noisy, model, opts))
        seconds += time.perf_counter() - t0
        if save_dir is not None:
            write_image(Path(save_dir) / f"{p.name}.png", outputs[-1])
    rows, summary = score_outputs(outputs, pairs, TextureSplit.of(pairs) if split is True else split)
    summary.update(seconds_per_image=seconds / max(len(rows), 1), k=opts.k)
    return rows, summary


def score_outputs(outputs: Sequence[np.ndarray], pairs: Sequence[Pair], split: TextureSplit | None = None
                  ) -> tuple[list[dict], dict]:
    """Per-image rows and the summary of denoised ``outputs`` (one per pair, in the pairs' dtype)."""
    rows = []
    for out, p in zip(outputs, pairs):
        noisy, clean, den = (to_model_range(a)[0] for a in (p.noisy, p.clean, out))
        noisy_scores = {f"noisy_{m}": v for m, v in scores(noisy, clean).items()}
        colour = {"colour_shift": colour_shift(den, clean), "noisy_colour_shift": colour_shift(noisy, clean)}
        rows.append({"name": p.name, **scores(den, clean), **noisy_scores, **colour})
    summary = {
        "images": len(rows),
        **{m: _mean(rows, m) for m in METRICS},
        **{f"noisy_{m}": _mean(rows, f"noisy_{m}") for m in METRICS},
        "colour_shift": _mean(rows, "colour_shift"), "noisy_colour_shift": _mean(rows, "noisy_colour_shift"),
        # how much further from the reference's mean colour an output sits than its input did, at worst
        "colour_moved": max((r["colour_shift"] - r["noisy_colour_shift"] for r in rows), default=0.0),
        "conventions": "psnr: RGB 0..255 on uint8-rounded output; ssim_rgb: Gaussian sigma 1.5 on RGB; "
        "ssim_y: the same on BT.601 luma (AT-BSN authors' convention); colour_shift: the largest difference of "
        "the channels' means from the reference's, 0..255",
    }
    if split:
        summary["groups"] = split.scores(outputs, pairs)
        summary["texture_threshold"], summary["group_crop"] = split.threshold, split.crop
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


def sweep_values(teachers: Sequence[nn.Module]) -> tuple[int, ...]:
    """What a sweep tries by default: the teachers' blind-spot control's own sweep (AT-BSN's k 0..11, AP-BSN's PD
    strides 1..5); teachers with different controls cannot share one axis."""
    knobs = {t.config.family.knob for t in teachers}
    if None in knobs:
        bad = next(t for t in teachers if t.config.family.knob is None)
        raise AtbsnError(f"a sweep scores blind-spot networks over their blind spot; {bad.config.arch} is non-blind")
    if len(knobs) > 1:
        names = ", ".join(sorted(k.name for k in knobs))
        raise AtbsnError(f"these networks have different blind-spot controls ({names}); sweep them separately")
    return knobs.pop().sweep


def sweep(
    teachers: Sequence[nn.Module],
    data: str | Path | list[Pair],
    ks: Sequence[int] | None = None,
    options: InferenceOptions | None = None,
    *,
    labels: Sequence[str] | None = None,
    limit: int | None = None,
    split: TextureSplit | None = None,
    **kw,
) -> list[dict]:
    """PSNR/SSIM of each teacher at each inference blind-spot size k_b (one row per teacher and k).

    Each row names its teacher by ``labels[i]`` (default ``k_a = <k_train>``, or ``teacher <i>`` when the
    checkpoint does not record k_a). With ``split``, each row also holds the flat and textured groups'
    scores under ``groups`` (every image is denoised once, whole, and scored per region). ``ks`` None: the
    teachers' own sweep values (:func:`sweep_values`).
    """
    pairs = data if isinstance(data, list) else load_pairs(data, limit)
    ks = sweep_values(teachers) if ks is None else ks
    rows = []
    for i, t in enumerate(teachers):
        label = labels[i] if labels else (f"{t.config.knob}_a = {t.config.k_train}" if t.config.k_train
                                          else f"teacher {i}")
        opts = InferenceOptions.of(options, **kw)
        per_image = [denoise_ks(p.noisy, t, list(ks), opts) for p in pairs]  # one backbone pass for all k
        for k in ks:
            _, s = score_outputs([outs[k] for outs in per_image], pairs, split)
            rows.append({"teacher": i, "label": label, "k_a": t.config.k_train, "k_b": k, **{m: s[m] for m in METRICS},
                         **({"groups": s["groups"]} if split else {})})
    return rows


def crops_by_k(
    teacher: nn.Module, image: np.ndarray, box: tuple[int, int, int, int], ks: Sequence[int],
    options: InferenceOptions | None = None, **kw,
) -> list[np.ndarray]:
    """The same crop (y, x, height, width) of ``image`` denoised at each k: the supplementary's Figure S4.

    The whole image is denoised (so the crop has its real context), then cropped; the backbone runs once for
    all k (:func:`~atbsn.inference.denoise_ks`).
    """
    y, x, h, w = box
    outs = denoise_ks(image, teacher, list(ks), InferenceOptions.of(options, **kw))
    return [outs[k][y : y + h, x : x + w] for k in ks]


def crop_strip(teacher: nn.Module, pair: Pair, box: tuple[int, int, int, int], ks: Sequence[int], path: str | Path,
               options: InferenceOptions | None = None) -> Path:
    """The picture of :func:`crops_by_k`: noisy | one crop per k | clean, labelled, written to ``path``."""
    y, x, h, w = box
    crops = crops_by_k(teacher, pair.noisy, box, ks, options)
    images = [pair.noisy[y : y + h, x : x + w], *crops, pair.clean[y : y + h, x : x + w]]
    return image_strip(images, ["noisy", *[f"k_b = {k}" for k in ks], "clean"], path)


def sweep_report(
    teachers: Sequence[nn.Module], data: str | Path | list[Pair], out_dir: str | Path, ks: Sequence[int] | None = None,
    options: InferenceOptions | None = None, *, labels: Sequence[str] | None = None, limit: int | None = None,
    crop_size: int | None = None, split: TextureSplit | None = None,
) -> dict:
    """``sweep`` written out: ``sweep.json``, the PSNR-over-k_b plot, the k_a x k_b heatmap for several
    teachers, and with ``crop_size`` the centre crop of the first pair at every k (``crops.png``). With
    ``split``, the plot and the heatmap again per texture group (``sweep_flat.png``, ``heatmap_textured.png``,
    ...) and, with ``crop_size``, one crop per group across k_b (``crops_flat.png``, ``crops_textured.png``).

    Returns the rows, the noisy input's mean PSNR and the paths written.
    """
    check_apart([out_dir], [None if isinstance(data, list) else data, *map(source_of, teachers)])
    pairs = data if isinstance(data, list) else load_pairs(data, limit)
    ks = sweep_values(teachers) if ks is None else ks
    rows = sweep(teachers, pairs, ks, options, labels=labels, split=split)
    out = Path(out_dir)
    noisy = float(np.mean([psnr(*(to_model_range(x)[0] for x in (p.noisy, p.clean))) for p in pairs]))
    paths = {"json": write_text(out / "sweep.json", json.dumps(rows, indent=2) + "\n"),
             "plot": plot_sweep(rows, out / "sweep.png", noisy)}
    if len(teachers) > 1:
        paths["heatmap"] = plot_heatmap(rows, out / "heatmap.png")
    boxes = {}
    if crop_size:
        h, w = pairs[0].noisy.shape[:2]
        size = min(crop_size, h, w)
        boxes["crops"] = (0, h // 2 - size // 2, w // 2 - size // 2, size, size)
    if split:
        for group in split.groups:
            grows = [{**r, **r["groups"][group]} for r in rows if "psnr" in r["groups"][group]]
            if not grows:
                continue
            paths[f"plot_{group}"] = plot_sweep(grows, out / f"sweep_{group}.png", None)
            if len(teachers) > 1:
                paths[f"heatmap_{group}"] = plot_heatmap(grows, out / f"heatmap_{group}.png")
            if crop_size:  # the group's first region, centred crop
                i, y, x, bh, bw = split.groups[group][0]
                size = min(crop_size, bh, bw)
                boxes[f"crops_{group}"] = (i, y + bh // 2 - size // 2, x + bw // 2 - size // 2, size, size)
    for name, (i, *box) in boxes.items():
        paths[name] = crop_strip(teachers[0], pairs[i], tuple(box), ks, out / f"{name}.png", options)
    return {"rows": rows, "noisy_psnr": noisy, "paths": paths}


def format_sweep(rows: Sequence[dict], noisy_psnr: float) -> str:
    """The sweep as a text table."""
    lines = [f"{'teacher':>12} {'k_b':>4} {'PSNR':>7} {'SSIM-RGB':>9} {'SSIM-Y':>7}   (noisy {noisy_psnr:.2f} dB)"]
    lines += [f"{r['label'][-12:]:>12} {r['k_b']:>4} {r['psnr']:7.2f} {r['ssim_rgb']:9.4f} {r['ssim_y']:7.4f}"
              for r in rows]
    return "\n".join(lines)
