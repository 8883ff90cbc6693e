"""Does a denoiser move colour, and does putting back the smooth part of what it removed (``--keep-colour``) fix it?

For the fitted student (``fit --minutes 5``, seed 0, the points fit_start.py uses) and the best released student,
on each set: PSNR, SSIM on luma and the largest colour move over the images (how much further the output's
per-channel mean sits from the clean reference than the noisy input's, of 255; issue 42 bounds it at 0.5), as
denoise gives them, then with the removed part's smooth component put back at several scales (``mean``: the
whole image's mean). The scale (16 pixels) and the rule (mild noise only) were chosen on sidd9 and polyu100's
tuning half; the demo and, through fit_start.py (which runs every candidate as fit writes it, the colour kept on
mild noise), polyu100's held-out half score them.

    python benchmarks/colour.py [--sets sidd9 polyu100-tune demo]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, point, released_cache, set_pairs, u8, write_results  # noqa: E402

from atbsn.checkpoint import load  # noqa: E402
from atbsn.fitting.candidates import as_denoiser  # noqa: E402
from atbsn.metrics import colour_shift, psnr, ssim_y  # noqa: E402

RELEASED = "tmbsn-c102-sidd"
SCALES = {"as denoise gives it": None, "put back, 4 px": 4.0, "put back, 16 px (keep_colour)": 16.0,
          "put back, whole-image mean": 0.0}


def _put_back(x: np.ndarray, y: np.ndarray, scale: float | None) -> np.ndarray:
    if scale is None:
        return y
    if scale == 0:
        return y + (x - y).mean((0, 1))
    return y + gaussian_filter(x - y, (scale, scale, 0), mode="reflect")


def rows_for(name: str) -> dict:
    pairs = set_pairs(name)
    point(name, pairs, "new", 5, 0)
    models = {"fitted student": load(WORK / name / "new_m5_s0" / "model.safetensors"), RELEASED: load(RELEASED)}
    out = {}
    for label, model in models.items():
        fn = as_denoiser(model, torch.device("cpu"), colour=False)  # its safeguard as recorded, nothing put back
        res: dict[str, list] = {k: [] for k in SCALES}
        for p in pairs:
            x = p.noisy.astype(np.float64)
            y = fn(x)
            base = colour_shift(p.noisy, p.clean)
            for k, scale in SCALES.items():
                z = u8(_put_back(x, y, scale))
                res[k].append((psnr(z, p.clean), ssim_y(z, p.clean), colour_shift(z, p.clean) - base))
        out[label] = {k: {"psnr": float(np.mean([r[0] for r in v])), "ssim_y": float(np.mean([r[1] for r in v])),
                          "colour_excess": float(max(r[2] for r in v))} for k, v in res.items()}
        print(name, label, {k: round(v["psnr"], 2) for k, v in out[label].items()}, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=["sidd9", "polyu100-tune", "demo"])
    args = ap.parse_args()
    with released_cache([RELEASED]):
        results = {s: rows_for(s) for s in args.sets}
    md = ["# Colour: what a denoiser moves, and the smooth part of what it removed put back", "",
          "PSNR / SSIM-Y (means over the set) / the largest colour move over its images (of 255; issue 42 bounds "
          "it at 0.5). The fitted student is `fit --minutes 5`, seed 0, with its safeguard as recorded.", ""]
    for name, models in results.items():
        md += [f"## {name}", "", "| model | " + " | ".join(SCALES) + " |", "|---" * (len(SCALES) + 1) + "|"]
        for label, res in models.items():
            md.append(f"| {label} | " + " | ".join(f"{v['psnr']:.2f} / {v['ssim_y']:.4f} / {v['colour_excess']:+.2f}"
                                                   for v in res.values()) + " |")
        md.append("")
    write_results("colour", {"sets": results}, "\n".join(md))


if __name__ == "__main__":
    main()
