"""What a user could run instead of ``fit``, side by side on real sets with clean references (issue 42, item 4).

Rows per set: the noisy input, OpenCV NLM (h = 10), BM3D at the noise level atbsn measures (no clean image),
Zero-Shot Noise2Noise (its authors' rule: 2,000 steps on each photo alone; bf16 where native), the released SIDD
students, and ``fit`` with its defaults: its own student at 2 and 5 minutes, and what it writes with the released
students in the cache. PSNR, SSIM on luma and the largest colour move (how much further an output's per-channel
mean sits from the clean reference than the input's, of 255). The released students, NLM and the 5-minute fit
are read from fit_start.py's per-image results (run it first); the rest is computed here, cached per image.

    python benchmarks/side_by_side.py [--sets demo sidd9] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, point, set_pairs, write_results  # noqa: E402

from atbsn import classical  # noqa: E402
from atbsn.checkpoint import load  # noqa: E402
from atbsn.fitting.candidates import SCORED_PHOTOS  # noqa: E402
from atbsn.inference import denoise  # noqa: E402
from atbsn.measure import measure_noise  # noqa: E402
from atbsn.metrics import colour_shift, psnr, ssim_y  # noqa: E402


def _scores(out: np.ndarray, pair) -> dict:
    return {"psnr": psnr(out, pair.clean), "ssim_y": ssim_y(out, pair.clean),
            "colour_excess": colour_shift(out, pair.clean) - colour_shift(pair.noisy, pair.clean)}


def _extra(name: str, pairs) -> dict[str, list[dict]]:
    """BM3D at the measured level, ZS-N2N and the 2-minute fit on ``pairs``, per image (cached)."""
    cache = WORK / name / "side_by_side.json"
    done = json.loads(cache.read_text()) if cache.exists() else {}
    point(name, set_pairs(name), "new", 2, 0)  # fitted on the whole set, as the 5-minute one
    fit2 = load(WORK / name / "new_m2_s0" / "model.safetensors")
    methods = {"BM3D (measured sigma)": lambda p: classical.bm3d(p.noisy, measure_noise(p.noisy).sigma),
               "ZS-N2N": lambda p: classical.zsn2n(p.noisy, precision="auto"),
               "fit 2 min (own student)": lambda p: denoise(p.noisy, fit2)}
    for p in pairs:
        for label, fn in methods.items():
            key = f"{label}/{p.name}"
            if key not in done:
                t0 = time.perf_counter()
                done[key] = {**_scores(fn(p), p), "seconds": time.perf_counter() - t0}
                cache.write_text(json.dumps(done))
                print(f"{name} {p.name} {label}: {done[key]['psnr']:.2f} dB ({done[key]['seconds']:.0f} s)", flush=True)
    return {label: [done[f"{label}/{p.name}"] for p in pairs] for label in methods}


def rows_for(name: str, limit: int | None) -> dict[str, list[dict]]:
    """Every row on the set's first ``limit`` images (all without a limit); what fit writes is decided as fit
    decides, on the first photos of the whole set."""
    pairs = set_pairs(name)[:limit]
    start = WORK / name / "fit_start_s0.json"
    if not start.exists():
        sys.exit(f"{start} missing: run python benchmarks/fit_start.py --sets {name} first")
    full = json.loads(start.read_text())["per"]
    per = {k: v[: len(pairs)] for k, v in full.items()}
    rows = {"noisy": per["noisy"], "NLM": per["NLM"]}
    rows.update(_extra(name, pairs))
    released = [k for k in per if k not in ("noisy", "NLM") and not k.startswith("fitted")]
    rows.update({k: per[k] for k in released})
    rows["fit 5 min (own student)"] = per["fitted"]
    # what fit writes with the three released students cached: the least estimated error on its first photos
    choosable = ["fitted", *released]
    first = {k: np.mean([r["estimated_mse"] for r in full[k][:SCORED_PHOTOS]]) for k in choosable}
    chosen = min(choosable, key=first.get)
    rows[f"fit 5 min, released cached (writes {chosen})"] = per[chosen]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=["demo", "sidd9"])
    ap.add_argument("--limit", type=int, default=None, help="every row on the first N images of each set only "
                    "(ZS-N2N takes minutes an image)")
    args = ap.parse_args()
    results = {s: rows_for(s, args.limit) for s in args.sets}
    md = ["# What a user could run instead of fit, side by side", "",
          "Per set: mean PSNR and SSIM-Y over its images, and the largest colour move over them (of 255; issue 42 "
          "bounds it at 0.5). `fit` with its defaults, seed 0 (one fit per row). ZS-N2N: 2,000 steps per photo "
          "(bf16 where the CPU has it natively; minutes an image on 2 cores). Every row of a set on the same "
          "images.", ""]
    for name, rows in results.items():
        n = len(rows["noisy"])
        md += [f"## {name} ({n} images)", "", "| method | PSNR | SSIM-Y | colour moved (largest) |",
               "|---|---|---|---|"]
        for label, per in rows.items():
            md.append(f"| {label} | {np.mean([r['psnr'] for r in per]):.2f} | "
                      f"{np.mean([r['ssim_y'] for r in per]):.4f} | {max(r['colour_excess'] for r in per):+.2f} |")
        md.append("")
    write_results("side_by_side", {"sets": results}, "\n".join(md))


if __name__ == "__main__":
    main()
