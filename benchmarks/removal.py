"""Does ``fit``'s removal check (what the student removes over the flat-area noise level) tell the fits that
improved a set from those that made it worse? Every finished point of ``recipe.py`` (seed 0), per image:

    python benchmarks/removal.py demo sidd9 polyu100

Results: ``results/removal.md`` / ``.json``. The PSNR gain needs the clean images; the ratio does not.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
from common import WORK, set_pairs, write_results

from atbsn.checkpoint import load
from atbsn.evaluate import score_outputs
from atbsn.inference import denoise
from atbsn.noise import flat_noise_std


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sets", nargs="+")
    a = ap.parse_args()
    rows = []
    for name in a.sets:
        pairs = set_pairs(name)[:10]
        for model_path in sorted(WORK.glob(f"{name}/*_s0/model.safetensors")):
            model = load(model_path)
            outs = [denoise(p.noisy, model) for p in pairs]
            per, _ = score_outputs(outs, pairs)
            ratios = [float(np.std(p.noisy.astype(float) - o.astype(float)) / max(flat_noise_std(p.noisy), 1e-3))
                      for p, o in zip(pairs, outs)]
            gains = [r["psnr"] - r["noisy_psnr"] for r in per]
            rows.append({"set": name, "point": model_path.parent.name, "mean_gain_db": statistics.mean(gains),
                         "worse_images": sum(g < 0 for g in gains), "images": len(gains),
                         "median_ratio": statistics.median(ratios), "ratios": ratios})
            r = rows[-1]
            print(name, model_path.parent.name, f"{r['mean_gain_db']:+.2f} dB, {r['median_ratio']:.2f}", flush=True)
    md = ["# removal: the fit's no-clean-image check against the PSNR gain it cannot see", "",
          "ratio: std of (noisy - student output) over `atbsn.noise.flat_noise_std(noisy)`, median over the images "
          "(at most 10 per set); `fit` warns above 1.5 (`atbsn.fitting.REMOVAL_LIMIT`).", "",
          "| set | point | mean PSNR gain (dB) | images made worse | median ratio |", "|---|---|---|---|---|"]
    md += [f"| {r['set']} | {r['point']} | {r['mean_gain_db']:+.2f} | {r['worse_images']} / {r['images']} | "
           f"{r['median_ratio']:.2f} |" for r in rows]
    write_results("removal", {"rows": rows}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
