"""The study behind ``fit``'s blind spot chosen from the photos' own noise (issue 27): which k_a suits mild noise,
found on polyu100's tuning half, then ``fit`` with its defaults scored on the held-out half against the noisy
input and OpenCV's non-local means; and the noise each set measures, which decides the rule's side.

    python benchmarks/fit_rule.py                 # every point (cached; rerun to resume), then the report
    python benchmarks/fit_rule.py --report-only

Points are ``recipe.py``'s (one ``fit --minutes M`` each, kept in ``results/work_recipe/<set>/``); polyu100's 100
pairs are split by index (even: tuning, odd: held-out) as ``adapt.py`` splits them. Run nothing else meanwhile:
the step counts come from timing a few steps. Results: ``results/fit_rule.md`` / ``.json``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from common import spread, write_results
from recipe import RECIPES, WORK, baselines, point, set_pairs
from reproduce import SHARED

from atbsn.datasets import collect_sources
from atbsn.fit import MILD_SIGMA, blind_spot_for
from atbsn.measure import measure_set

# each part: the set, and per recipe its seeds, at every budget in minutes
TUNE = {"set": "polyu100-tune", "recipes": {r: [0] for r in ("ka9", "ka5", "ka3", "ka1", "ka1-ks0")}, "minutes": [2]}
HELD = {"set": "polyu100-held", "recipes": {"new": [0, 1, 2], "ka9": [0]}, "minutes": [2, 5]}
HEAVY = {"set": "sidd9", "recipes": {"new": [0]}, "minutes": [5]}  # the heavy side of the picture
PARTS = {"tune": TUNE, "held": HELD, "heavy": HEAVY}
MEASURED = ["demo", "sidd9", "polyu100-tune", "polyu100-held", "dnd33"]


def measure(name: str) -> dict:
    if name == "dnd33":  # noisy only: the rule needs no clean image
        images = [s.load() for s in collect_sources([str(SHARED / "dnd33")])]
    else:
        images = [p.noisy for p in set_pairs(name)]
    whole, each = measure_set(images)
    rule, why = blind_spot_for(whole)
    return {"set": name, "images": len(each), "sigma": whole.sigma, "reach": whole.reach,
            "correlation": whole.correlation[:3], "sigma_range": [min(e.sigma for e in each),
                                                                   max(e.sigma for e in each)],
            "rule": rule, "why": why}


def _rows(name: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((WORK / name).glob("*/row.json"))]


def _below(row: dict, key: str = "per_image") -> tuple[int, int]:
    """Images of one point whose output is below the input in PSNR, and in SSIM (RGB)."""
    per, base = row[key], row["per_image"]
    return (sum(o["psnr"] < b["noisy_psnr"] for o, b in zip(per, base)),
            sum(o["ssim_rgb"] < b["noisy_ssim_rgb"] for o, b in zip(per, base)))


def report(measured: list[dict]) -> None:
    md = ["# fit_rule: the blind spot `fit` chooses from the photos' measured noise", "",
          "Command: `python benchmarks/fit_rule.py`. Every point is one `fit --minutes M` on the set's noisy images "
          "(2 CPU cores), scored against the clean ones, which the fit never sees. polyu100's 100 pairs are split "
          "by index: the tuning half (even) chose the mild-noise recipe, the held-out half (odd) scores it.", "",
          f"## The noise each set measures (no clean image), and the side of the rule (`MILD_SIGMA` = {MILD_SIGMA})",
          "", "| set | images | sigma (set median, of 255) | per image | correlation at 1, 2, 3 px | reach | rule |",
          "|---|---|---|---|---|---|---|"]
    for m in measured:
        md.append(f"| {m['set']} | {m['images']} | {m['sigma']:.2f} | {m['sigma_range'][0]:.1f} to "
                  f"{m['sigma_range'][1]:.1f} | {', '.join(f'{c:.2f}' for c in m['correlation'])} | {m['reach']} | "
                  f"k_a = {m['rule']['k_train']}, k_b = {m['rule']['k_infer']} |")
    for part, title in ((TUNE, "Tuning half: which blind spot for mild noise"),
                        (HELD, "Held-out half: `fit` with its defaults (the rule chooses) against today's k_a = 9")):
        name = part["set"]
        b = baselines(name, set_pairs(name))
        md += ["", f"## {title} ({name}, {b['noisy']['images']} images)", "",
               f"noisy input {b['noisy']['psnr']:.2f} dB (SSIM {b['noisy']['ssim_rgb']:.4f}); OpenCV NLM "
               f"{b['NLM']['psnr']:.2f} dB (SSIM {b['NLM']['ssim_rgb']:.4f}). mean +- sd over seeds; 'below': images "
               "whose output is below its noisy input, in PSNR / SSIM, per seed.", "",
               "| recipe | FitConfig | minutes | seeds | PSNR | SSIM (RGB) | below (PSNR/SSIM) | + safeguard: PSNR | "
               "SSIM | below |", "|---|---|---|---|---|---|---|---|---|---|"]
        rows = _rows(name)
        for recipe in part["recipes"]:
            for minutes in part["minutes"]:
                rs = [r for r in rows if r["recipe"] == recipe and r["minutes"] == minutes]
                if not rs:
                    continue
                given = RECIPES[recipe] or "defaults: " + ", ".join(
                    f"{k} = {v}" for k, v in (rs[0].get("fit_json") or {}).get("chosen", {}).items())
                below = "; ".join("/".join(map(str, _below(r))) for r in rs)
                below_g = "; ".join("/".join(map(str, _below(r, "safeguard_per_image"))) for r in rs)
                psnrs = [r["student"]["psnr"] for r in rs]
                md.append(f"| {recipe} | {given} | {minutes:g} | {len(rs)} | {spread(psnrs)}"
                          f" | {spread([r['student']['ssim_rgb'] for r in rs], 4)} | {below} | "
                          f"{spread([r['safeguard']['psnr'] for r in rs])} | "
                          f"{spread([r['safeguard']['ssim_rgb'] for r in rs], 4)} | {below_g} |")
    write_results("fit_rule", {"measured": measured, "tune": _rows(TUNE["set"]), "held": _rows(HELD["set"])},
                  "\n".join(md) + "\n")


def picture(side: int = 160) -> None:
    """One mild (polyu100, held-out half) and one heavy (sidd9) photo side by side: noisy, the 5-minute fit's
    output, clean; a crop of ``side`` pixels at the most textured place of each, PSNR of the crop in the titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.ndimage import uniform_filter

    from atbsn.checkpoint import load
    from atbsn.inference import denoise
    from atbsn.metrics import psnr

    shown = [("polyu100-held", "mild: polyu100 (DSLR JPEG)"), ("sidd9", "heavy: sidd9 (phone)")]
    fig, axes = plt.subplots(len(shown), 3, figsize=(9, 6.4))
    for row, (name, title) in zip(axes, shown):
        run = WORK / name / "new_m5_s0"
        if not (run / "row.json").exists():
            return
        choice = json.loads((run / "row.json").read_text())["fit_json"]["chosen"]
        pair = set_pairs(name)[0]
        out = denoise(pair.noisy, load(run / "model.safetensors"))
        texture = uniform_filter(np.abs(np.diff(pair.clean.astype(float), axis=1)).mean(-1), side)
        h, w = texture.shape
        inner = texture[side // 2 : h - side // 2, side // 2 : w - side // 2]
        y, x = np.unravel_index(int(np.argmax(inner)), inner.shape)  # the window's top-left corner
        for ax, (label, img) in zip(row, (("noisy", pair.noisy), (f"fit: k_a = {choice.get('k_train')}", out),
                                          ("clean", pair.clean))):
            crop = img[y:y + side, x:x + side]
            db = "" if label == "clean" else f", {psnr(crop, pair.clean[y:y + side, x:x + side]):.2f} dB"
            ax.imshow(crop)
            ax.set_title(f"{title if label == 'noisy' else ''}\n{label}{db}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(WORK.parent / "fit_rule_mild_heavy.png", dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    a = ap.parse_args()
    if not a.report_only:
        for part in (PARTS[p] for p in a.parts):
            pairs = set_pairs(part["set"])
            baselines(part["set"], pairs)
            for recipe, seeds in part["recipes"].items():
                for seed in seeds:
                    for minutes in part["minutes"]:
                        point(part["set"], pairs, recipe, minutes, seed)
    measured = [measure(n) for n in MEASURED]
    print(json.dumps([{k: m[k] for k in ("set", "sigma", "rule")} for m in measured]))
    report(measured)
    picture()


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
