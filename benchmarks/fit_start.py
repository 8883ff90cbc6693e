"""Which network ``fit`` should end with, judged without clean images: does the recorrupted-pair estimate
(atbsn.noref) rank denoisers as their true PSNR does, on real sets with clean references?

Candidates per set: the noisy input, OpenCV NLM (h = 10), the released SIDD students (the project's test copies
of their files, in a cache made for this run), and fit's own student (``fit --minutes 5`` with its defaults, the
points of benchmarks/common.py: the run is shared with fit_rule.py). For each image: the true PSNR and SSIM-Y
(whole image) and the estimate on the centre crop fit scores (fit's own function). Per set: the candidate fit
would choose (its first 16 photos, as fit does) against the truly best one, and the regret (dB lost).

    python benchmarks/fit_start.py [--sets sidd9 polyu100-tune polyu100-held demo] [--seeds 0]

The report holds every set and seed with results on disk, earlier runs' too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, point, released_cache, set_pairs, spread, u8, write_results  # noqa: E402

from atbsn import classical  # noqa: E402
from atbsn.checkpoint import load  # noqa: E402
from atbsn.fitting import blind_spot_for, candidates  # noqa: E402
from atbsn.fitting.candidates import FITTED, SCORED_PHOTOS, SCORED_SIDE, as_denoiser, released_students  # noqa: E402
from atbsn.fitting.checks import centre_crop  # noqa: E402
from atbsn.measure import measure_noise, measure_set  # noqa: E402
from atbsn.metrics import colour_excess, psnr, ssim_y  # noqa: E402
from atbsn.noref import mse_to_psnr, recorrupted_mse  # noqa: E402

FIT_PHOTOS, SIDE = SCORED_PHOTOS, SCORED_SIDE  # as fit scores
CPU = torch.device("cpu")


def _nlm(a: np.ndarray) -> np.ndarray:
    return classical.nlm(u8(a)).astype(np.float64)


def denoisers(name: str, seed: int) -> dict:
    """Each candidate as a function of an H x W x 3 float array on 0..255, run as fit would write it: with the
    safeguard and the colour kept where fit's rule asks for them (mild noise), the released students too."""
    out = {"noisy": lambda a: np.clip(a, 0, 255), "NLM": _nlm}
    pairs = set_pairs(name)
    rule, _ = blind_spot_for(measure_set(p.noisy for p in pairs[:32])[0])
    flags = {k: rule[k] for k in ("safeguard", "keep_colour", "colour_guard")}  # what fit records on what it writes
    for c in released_students():
        c.model.config.training.update(flags)
        out[c.name] = as_denoiser(c.model, CPU)
    point(name, pairs, "new", 5, seed)  # the fit (cached)
    model = load(WORK / name / f"new_m5_s{seed}" / "model.safetensors")
    model.config.training.update(flags)  # as the fit recorded them (one made before a guard existed lacks it)
    out[FITTED] = as_denoiser(model, CPU)
    if flags["safeguard"] or flags["keep_colour"]:
        out[FITTED + " (network alone)"] = as_denoiser(model, CPU, False, False)
    return out


def rows_for(name: str, seed: int) -> dict:
    cache = WORK / name / f"fit_start_s{seed}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    pairs = set_pairs(name)
    fns = denoisers(name, seed)
    per = {label: [] for label in fns}
    for i, p in enumerate(pairs):
        noisy = p.noisy.astype(np.float64)
        crop = centre_crop(noisy, SIDE).astype(np.float64)
        noise = measure_noise(crop, factor=1.0)
        for label, fn in fns.items():
            out = u8(fn(noisy))
            est = recorrupted_mse(fn, crop, noise, seed=i)
            per[label].append({"psnr": psnr(out, p.clean), "ssim_y": ssim_y(out, p.clean), "estimated_mse": est,
                               "colour_excess": colour_excess(out, p.noisy, p.clean)})
        print(f"{name} {p.name}: " + ", ".join(f"{k} {v[-1]['psnr']:.2f}/{mse_to_psnr(v[-1]['estimated_mse']):.2f}"
                                            for k, v in per.items()), flush=True)
    data = {"set": name, "seed": seed, "images": [p.name for p in pairs], "per": per}
    cache.write_text(json.dumps(data))
    return data


def summary(data: dict) -> dict:
    per = data["per"]
    truth = {k: float(np.mean([r["psnr"] for r in v])) for k, v in per.items()}
    ssim = {k: float(np.mean([r["ssim_y"] for r in v])) for k, v in per.items()}
    colour = {k: float(np.max([r["colour_excess"] for r in v])) for k, v in per.items()}
    first = {k: float(np.mean([r["estimated_mse"] for r in v[:FIT_PHOTOS]])) for k, v in per.items()}
    every = {k: float(np.mean([r["estimated_mse"] for r in v])) for k, v in per.items()}
    choosable = [k for k in per if k not in ("noisy", "NLM") and "alone" not in k]  # what fit may write
    best = max(choosable, key=truth.get)
    errors = {k: [r["estimated_mse"] for r in per[k][:FIT_PHOTOS]] for k in choosable}  # as fit scores them
    chosen = candidates.pick(errors)  # as fit chooses
    least = min(choosable, key=first.get)  # the rule before the evidence: the least mean estimate
    clear = {k: candidates.evidence(errors[FITTED], errors[k]) for k in choosable if k != FITTED}
    images = len(per["noisy"])
    agree = sum(min(choosable, key=lambda k: per[k][i]["estimated_mse"])
                == max(choosable, key=lambda k: per[k][i]["psnr"]) for i in range(images))
    return {"truth": truth, "ssim_y": ssim, "colour_excess": colour, "estimated_first": first,
            "estimated_all": every, "best": best,
            "chosen": chosen, "regret_db": truth[best] - truth[chosen], "per_image_agreement": [agree, images],
            "least_estimate": least, "least_regret_db": truth[best] - truth[least], "evidence": clear,
            "chosen_all": min(choosable, key=every.get)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=["sidd9", "polyu100-tune", "polyu100-held", "demo"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    args = ap.parse_args()
    with released_cache():
        for s in args.sets:
            for seed in args.seeds:
                rows_for(s, seed)
    # the report: every set and seed with results on disk, earlier runs' too
    done = sorted(WORK.glob("*/fit_start_s*.json"), key=lambda p: (p.parent.name, int(p.stem.rsplit("_s", 1)[1])))
    results = {f"{p.parent.name}/{p.stem.rsplit('_s', 1)[1]}": summary(json.loads(p.read_text())) for p in done}
    md = ["# fit_start: ranking denoisers on noisy photos alone (the recorrupted-pair estimate)", "",
          "Per set and fit seed: each candidate's true PSNR / SSIM-Y over every image, and the estimate fit computes "
          "without clean images (mean over the first 16 photos' centre 256 crops; as PSNR, at 1.25x the noise "
          "variance, so lower than the truth). **chosen** is what fit writes: the fitted student unless a released "
          "one is estimated better on the crops by the one-sided Wilcoxon signed-rank test at p < 0.05 (p per "
          "released student), then the least estimate of those; \"least estimate\" is the rule before that (the "
          "least mean estimate). **best** is the truly best of the students; regret = dB lost by the choice. "
          "Per image: how often the estimate on the image's crop names the image's truly best candidate. Colour moved: "
          "the largest, over the set's images, of how much further the output's per-channel mean sits from the clean "
          "reference than the noisy input's does (of 255; issue 42 bounds it at 0.5).", ""]
    for key, s in results.items():
        md += [f"## {key}", "",
               "| candidate | PSNR | SSIM-Y | colour moved (largest) | estimated (first 16) | estimated (all) |",
               "|---|---|---|---|---|---|"]
        for k in s["truth"]:
            md.append(f"| {k} | {s['truth'][k]:.2f} | {s['ssim_y'][k]:.4f} | {s['colour_excess'][k]:+.2f} | "
                      f"{mse_to_psnr(s['estimated_first'][k]):.2f} | {mse_to_psnr(s['estimated_all'][k]):.2f} |")
        agree, n = s["per_image_agreement"]
        ev = ", ".join(f"{k} {v:.3f}" for k, v in s.get("evidence", {}).items())
        md += ["", f"chosen **{s['chosen']}** (p: {ev}), best **{s['best']}**, regret {s['regret_db']:.2f} dB "
               f"(least estimate: {s.get('least_estimate', s['chosen'])}, regret "
               f"{s.get('least_regret_db', s['regret_db']):.2f} dB); per image the estimate names the best in {agree} "
               f"of {n}; colour moved by what fit writes {s['colour_excess'][s['chosen']]:+.2f}.", ""]
    regrets = [s["regret_db"] for s in results.values()]
    least = [s.get("least_regret_db", s["regret_db"]) for s in results.values()]
    worst = max(s["colour_excess"][s["chosen"]] for s in results.values())
    md += [f"Regret over all sets and seeds: {spread(regrets)} dB (largest {max(regrets):.2f}); with the least "
           f"estimate: {spread(least)} dB (largest {max(least):.2f}). Largest colour move of what fit writes: "
           f"{worst:+.2f}."]
    write_results("fit_start", {"sets": results}, "\n".join(md))


if __name__ == "__main__":
    main()
