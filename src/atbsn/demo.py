"""``atbsn demo``: the method end to end on photos that ship with scikit-image, no download.

Clean sample photos are made noisy with the camera simulator (:mod:`atbsn.noise`), ``fit`` learns from
the noisy images alone, and the result is scored against the clean originals beside what a user would run
instead, computed in the same run on the same photos: OpenCV's non-local means and BM3D given the true noise
level (an oracle no real photo offers). A table (PSNR, SSIM, seconds per image) and a side-by-side picture.

The fit is a fixed recipe in steps (:data:`STEPS`, :data:`RECIPE`), not a time budget, so the result does not
depend on the CPU: one without native bf16 takes longer, not worse. ``minutes`` trains for a time budget
instead.
"""

from __future__ import annotations

import json
import shutil
import time
from functools import partial
from pathlib import Path

import numpy as np

from . import classical
from .checkpoint import load
from .datasets import load_pairs
from .errors import AtbsnError
from .evaluate import evaluate
from .files import write_text
from .fitting import FitConfig, OtherFitError, fit
from .images import read_image, write_image
from .metrics import colour_shift, scores
from .noise import add_camera_noise
from .plots import image_strip
from .ranges import to_model_range
from .runtime import log

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
# The demo's fit, in steps: chosen by measurement in fp32 under the AVX2 cap (benchmarks/recipe.py --steps,
# results/recipe_steps.md) to put student C above non-local means and level with BM3D on any CPU, in about
# three minutes of fp32 on 2 cores. Batch 4 (more updates for the same pixels) and k_a = 5: the simulated
# noise is correlated over two pixels (0.56 at one, 0.16 at two, 0.03 at three), which a 5 x 5 blind spot
# covers; k_a = 9 hides more signal and learns slower (27.33 against 27.50 dB at 600 + 600 steps). The student
# learns from the teacher at k = 3 where the photo is flat and at k = 0 where it is textured (the partition loss):
# at the same steps, +0.4 dB and SSIM on luma 0.869 against 0.851 over three seeds, which puts its detail above
# non-local means' at every seed (k = 0 and 1 averaged everywhere smoothed edges; results/recipe_steps.md).
RECIPE = {"k_train": 5, "batch": 4, "ks": [3, 0], "loss": "partition"}  # fit options besides the steps
STEPS = (600, 600)  # teacher, student


def sample_pairs(level: str = "phone-night", seed: int = 0, photos: tuple[str, ...] = PHOTOS,
                 size: int | None = None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, noisy, clean) for scikit-image's colour sample photos (``size``: their centre crops)."""
    import skimage.data

    out = []
    for i, name in enumerate(photos):
        clean = getattr(skimage.data, name)()
        if size:
            y, x = (clean.shape[0] - size) // 2, (clean.shape[1] - size) // 2
            clean = np.ascontiguousarray(clean[y : y + size, x : x + size])
        out.append((name, add_camera_noise(clean, level, rng=seed + i), clean))
    return out


def run_demo(out_dir: str | Path = "demo", minutes: float | None = None, level: str = "phone-night",
             progress: bool = True, device: str = "auto", photos: tuple[str, ...] = PHOTOS,
             size: int | None = None, steps: tuple[int, int] | None = None) -> dict:
    """Make noisy photos, fit, score, and write ``results.md``, ``results.json``, ``side_by_side.png``.

    The fit runs :data:`RECIPE` for :data:`STEPS` (``steps``: other teacher and student step counts;
    ``minutes``: a time budget instead). ``photos`` and ``size`` (centre crops) make a smaller demo."""
    out = Path(out_dir)
    t_start = time.perf_counter()
    pairs = sample_pairs(level, photos=photos, size=size)
    for name, noisy, clean in pairs:
        write_image(out / "noisy" / f"{name}.png", noisy)
        write_image(out / "clean" / f"{name}.png", clean)
    log.info(f"demo: {len(pairs)} scikit-image photos with simulated '{level}' camera noise in {out / 'noisy'}")
    if minutes is not None:
        budget = {**RECIPE, "minutes": minutes}
    else:
        t_steps, s_steps = steps or STEPS
        budget = {**RECIPE, "teacher_steps": t_steps, "student_steps": s_steps}
    log.info("demo: 1. fit learns from the noisy photos (its time estimate follows, from a probe of a few steps); "
             "2. non-local means and BM3D on the same photos (BM3D about 15 s a photo); 3. scores")
    t_fit = time.perf_counter()
    # the demo shows what fit learns from the noisy photos alone: released students in the cache are not weighed
    cfg = FitConfig(**budget, device=device, fitted_only=True)
    learn = partial(fit, [out / "noisy"], out / "model.safetensors", cfg, progress=progress)
    try:
        model_path = learn()
    except OtherFitError:  # an earlier demo in this folder, with another recipe: the demo's own work, started anew
        log.info("demo: the fit in this folder used another recipe; starting it anew")
        shutil.rmtree(out / "model.safetensors.fit")
        model_path = learn()
    fit_seconds = time.perf_counter() - t_fit
    baselines, baseline_outputs = _classical_rows(pairs, out)

    student = load(model_path)
    # the pairs as read (evaluate's guard rightly refuses saving inside a folder it reads: here the demo's own)
    per_image, s = evaluate(student, load_pairs(out), device=device, save_dir=out / "denoised" / "student")
    label = f"student {student.config.arch}"
    rows = [{"method": "noisy input", "psnr": s["noisy_psnr"], "ssim_rgb": s["noisy_ssim_rgb"],
             "ssim_y": s["noisy_ssim_y"], "colour_shift": s["noisy_colour_shift"], "seconds_per_image": 0.0},
            *baselines,
            {"method": label, "psnr": s["psnr"], "ssim_rgb": s["ssim_rgb"], "ssim_y": s["ssim_y"],
             "colour_shift": s["colour_shift"], "seconds_per_image": s["seconds_per_image"]}]

    table = ("| method | PSNR (dB) | SSIM (RGB) | SSIM (Y) | colour shift (of 255) | s / image |\n"
             "|---|---|---|---|---|---|\n") + "".join(
        f"| {r['method']} | {r['psnr']:.2f} | {r['ssim_rgb']:.4f} | {r['ssim_y']:.4f} | {r['colour_shift']:.2f} | "
        f"{r['seconds_per_image']:.2f} |\n" for r in rows
    )
    gain = rows[-1]["psnr"] - rows[0]["psnr"]
    best_classical = max((r for r in baselines), key=lambda r: r["psnr"], default=None)
    name, noisy, clean = pairs[0]
    den = read_image(out / "denoised" / "student" / f"{name}.png")
    h, w = noisy.shape[:2]
    side = min(h, w, 192)
    y, x = (h - side) // 2, (w - side) // 2
    crop = (slice(y, y + side), slice(x, x + side))
    shown = [noisy[crop], *[o[0][crop] for o in baseline_outputs.values()], den[crop], clean[crop]]
    labels = ["noisy", *baseline_outputs, label, "clean"]
    picture = image_strip(shown, labels, out / "side_by_side.png", zoom=(side // 3, side // 3, max(8, side // 3)))
    total = time.perf_counter() - t_start
    summary = {"level": level, "images": len(pairs), "rows": rows, "student_gain_db": gain,
               "student_colour_moved": s["colour_moved"],
               "student_minus_best_classical_db": rows[-1]["psnr"] - best_classical["psnr"] if best_classical else None,
               "student_above_all_classical": {m: all(rows[-1][m] > r[m] for r in baselines)
                                               for m in ("psnr", "ssim_rgb", "ssim_y")},
               "fit": {**budget, "precision": json.loads((out / "model.safetensors.fit" / "plan.json").read_text())
                       .get("precision")}, "fit_seconds": fit_seconds, "total_seconds": total,
               "picture": str(picture)}
    write_text(out / "results.json", json.dumps(summary, indent=2) + "\n")
    write_text(out / "results.md", table)
    log.info("\n" + table)
    versus = (f"; against {best_classical['method']}: {summary['student_minus_best_classical_db']:+.2f} dB"
              if best_classical else "")
    log.info(f"student gain over the noisy input: {gain:+.2f} dB{versus}; total {total / 60:.1f} min; "
             f"picture: {picture}")
    return summary


def _classical_rows(pairs, out: Path) -> tuple[list[dict], dict[str, list[np.ndarray]]]:
    """Non-local means and BM3D (at the true noise level) on the demo's photos: rows and outputs."""
    def nlm(pairs):
        t0 = time.perf_counter()
        outs = [classical.nlm(noisy) for _, noisy, _ in pairs]
        return outs, (time.perf_counter() - t0) / len(pairs)

    def bm3d(pairs):  # one photo per core; seconds per image: the wall time over the photos
        t0 = time.perf_counter()
        sigmas = [classical.noise_sigma(noisy, clean) for _, noisy, clean in pairs]
        outs = classical.bm3d_many([noisy for _, noisy, _ in pairs], sigmas)
        return outs, (time.perf_counter() - t0) / len(pairs)

    methods = {"non-local means (OpenCV)": nlm, "BM3D (true noise level)": bm3d}
    rows, outputs = [], {}
    for label, fn in methods.items():
        try:
            outs, seconds = fn(pairs)
        except AtbsnError as e:  # bm3d not installed: say so, keep the demo going
            log.info(f"demo: {label} left out ({e})")
            continue
        per = [{**scores(a, b), "colour_shift": colour_shift(a, b)}
               for a, b in ((to_model_range(o)[0], to_model_range(clean)[0]) for o, (_, _, clean) in zip(outs, pairs))]
        rows.append({"method": label, **{m: float(np.mean([p[m] for p in per])) for m in per[0]},
                     "seconds_per_image": seconds})
        outputs[label.split(" (")[0]] = outs
        for (name, _, _), o in zip(pairs, outs):
            write_image(out / "denoised" / label.split()[0] / f"{name}.png", o)
    return rows, outputs
