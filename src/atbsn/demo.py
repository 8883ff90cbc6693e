"""``atbsn demo``: the method end to end on photos that ship with scikit-image, no download.

Clean sample photos are made noisy with the camera simulator (:mod:`atbsn.noise`), ``fit`` learns from
the noisy images alone, and the result is scored against the clean originals: a table (noisy input,
AT-BSN teacher at k_b = 3, distilled student; PSNR, SSIM, time) and a side-by-side picture.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .checkpoint import load
from .evaluate import evaluate
from .files import write_text
from .fit import FitConfig, fit
from .images import write_image
from .noise import add_camera_noise
from .plots import image_strip
from .runtime import log

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def sample_pairs(level: str = "phone-night", seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, noisy, clean) for scikit-image's colour sample photos."""
    import skimage.data

    out = []
    for i, name in enumerate(PHOTOS):
        clean = getattr(skimage.data, name)()
        out.append((name, add_camera_noise(clean, level, rng=seed + i), clean))
    return out


def run_demo(out_dir: str | Path = "demo", minutes: float = 3.5, level: str = "phone-night",
             progress: bool = True, device: str = "auto") -> dict:
    """Make noisy photos, fit, score, and write ``results.md``, ``results.json``, ``side_by_side.png``."""
    out = Path(out_dir)
    t_start = time.perf_counter()
    pairs = sample_pairs(level)
    for name, noisy, clean in pairs:
        write_image(out / "noisy" / f"{name}.png", noisy)
        write_image(out / "clean" / f"{name}.png", clean)
    log.info(f"demo: {len(pairs)} scikit-image photos with simulated '{level}' camera noise in {out / 'noisy'}")
    model_path = fit([out / "noisy"], out / "model.safetensors", FitConfig(minutes=minutes, device=device),
                     progress=progress)
    fit_seconds = time.perf_counter() - t_start

    rows = []
    student = load(model_path)
    teacher = load(model_path, part="teacher")
    results = {}
    for label, model, k in (("AT-BSN teacher, k_b = 3", teacher, 3), (f"student {student.config.arch}", student, None)):
        per_image, summary = evaluate(model, out, k=k, device=device, save_dir=out / "denoised" / label.split()[0])
        results[label] = (per_image, summary)
    first_summary = next(iter(results.values()))[1]
    rows.append({"method": "noisy input", "psnr": first_summary["noisy_psnr"],
                 "ssim_rgb": first_summary["noisy_ssim_rgb"], "ssim_y": first_summary["noisy_ssim_y"],
                 "seconds_per_image": 0.0})
    for label, (_, s) in results.items():
        rows.append({"method": label, "psnr": s["psnr"], "ssim_rgb": s["ssim_rgb"], "ssim_y": s["ssim_y"],
                     "seconds_per_image": s["seconds_per_image"]})

    table = "| method | PSNR (dB) | SSIM (RGB) | SSIM (Y) | s / image |\n|---|---|---|---|---|\n" + "".join(
        f"| {r['method']} | {r['psnr']:.2f} | {r['ssim_rgb']:.4f} | {r['ssim_y']:.4f} | "
        f"{r['seconds_per_image']:.2f} |\n" for r in rows
    )
    gain = rows[-1]["psnr"] - rows[0]["psnr"]
    name, noisy, clean = pairs[0]
    from .inference import denoise

    den = denoise(noisy, student, device=device)
    h, w = noisy.shape[:2]
    s = min(h, w, 256)
    y, x = (h - s) // 2, (w - s) // 2
    crop = (slice(y, y + s), slice(x, x + s))
    picture = image_strip([noisy[crop], den[crop], clean[crop]], ["noisy", f"student {student.config.arch}", "clean"],
                          out / "side_by_side.png")
    total = time.perf_counter() - t_start
    summary = {"level": level, "images": len(pairs), "rows": rows, "student_gain_db": gain,
               "fit_seconds": fit_seconds, "total_seconds": total, "picture": str(picture)}
    write_text(out / "results.json", json.dumps(summary, indent=2) + "\n")
    write_text(out / "results.md", table)
    log.info("\n" + table)
    log.info(f"student gain over the noisy input: {gain:+.2f} dB; total {total / 60:.1f} min; picture: {picture}")
    return summary
