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
from common import REAL, RECIPES, WORK, auto_k, baselines, every_k_row, guard, point, set_pairs, spread, write_results

from atbsn.datasets import collect_sources
from atbsn.fitting import MILD_SIGMA, blind_spot_for
from atbsn.measure import measure_set

# each part: the set, and per recipe its seeds, at every budget in minutes
TUNE = {"set": "polyu100-tune", "recipes": {r: [0] for r in ("ka9", "ka5", "ka3", "ka1", "ka1-ks0")}, "minutes": [2]}
TUNE_LONG = {"set": "polyu100-tune", "recipes": {"ka1": [0]}, "minutes": [5, 10]}  # does k_a = 1 keep improving?
HELD = {"set": "polyu100-held", "recipes": {"new": [0, 1, 2]}, "minutes": [2, 5]}
HEAVY = {"set": "sidd9", "recipes": {"new": [0]}, "minutes": [5]}  # the heavy side of the picture
HELD_LONG = {"set": "polyu100-held", "recipes": {"new": [0]}, "minutes": [10]}  # past the stop: the cool-down
PARTS = {"tune": TUNE, "tune-long": TUNE_LONG, "held": HELD, "held-long": HELD_LONG, "heavy": HEAVY}
COMPARED = [("polyu100-held", "new_m5_s0"), ("polyu100-held", "new_m5_s1"), ("polyu100-held", "new_m5_s2"),
            ("sidd9", "new_m5_s0")]  # fit's teachers: --k auto / adaptive against the oracle and the student
MEASURED = ["demo", "sidd9", "polyu100-tune", "polyu100-held", "dnd33"]


def measure(name: str) -> dict:
    if name == "dnd33":  # noisy only: the rule needs no clean image
        images = [s.load() for s in collect_sources([str(REAL / "dnd33")])]
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


def _stop(row: dict) -> str:
    """The teacher step a fit kept (its stop at the noise), or every planned step when it did not stop."""
    path = WORK / row["set"] / f"{row['recipe']}_m{row['minutes']:g}_s{row['seed']}" / "model.safetensors.fit"
    stop = json.loads((path / "fit.json").read_text()).get("teacher_stop") if (path / "fit.json").exists() else None
    if not stop:
        return "all"
    cooled = stop.get("cooled")
    return f"{stop['kept_step']}" + (f" + {cooled['steps']} cooled" if cooled else "")


def report(measured: list[dict], with_compare: bool = True) -> None:
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
    for name, title in (("polyu100-tune", "Tuning half: which blind spot for mild noise"),
                        ("polyu100-held", "Held-out half: `fit` with its defaults (the rule chooses)"),
                        ("sidd9", "Heavy noise: `fit` with its defaults on sidd9")):
        b = baselines(name, set_pairs(name))
        rows = _rows(name)
        md += ["", f"## {title} ({name}, {b['noisy']['images']} images)", "",
               f"noisy input {b['noisy']['psnr']:.2f} dB (SSIM {b['noisy']['ssim_rgb']:.4f}); OpenCV NLM "
               f"{b['NLM']['psnr']:.2f} dB (SSIM {b['NLM']['ssim_rgb']:.4f}). mean +- sd over seeds; 'below': images "
               "whose output is below its noisy input, in PSNR / SSIM, per seed. 'network alone' is the student "
               "without the safeguard; 'with the safeguard' is what `denoise` gives when the file asks for it (a "
               "fit for mild noise does). Teacher stop: the step the teacher was kept at, of those planned.", "",
               "| recipe | FitConfig | minutes | seeds | teacher kept at (of planned) | network alone: PSNR | SSIM "
               "| below | with the safeguard: PSNR | SSIM | below |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for recipe in sorted({r["recipe"] for r in rows}):
            for minutes in sorted({r["minutes"] for r in rows if r["recipe"] == recipe}):
                rs = [r for r in rows if r["recipe"] == recipe and r["minutes"] == minutes]
                given = RECIPES[recipe] or "defaults: " + ", ".join(
                    f"{k} = {v}" for k, v in (rs[0].get("fit_json") or {}).get("chosen", {}).items())
                alone = [r for r in rs if not r.get("student_is_guarded")]
                guarded = [r for r in rs if "safeguard" in r]
                stops = "; ".join(f"{_stop(r)} ({r['teacher_steps']})" for r in rs)
                below_g = "; ".join("/".join(map(str, _below(r, "safeguard_per_image"))) for r in guarded) or "-"
                md.append(f"| {recipe} | {given} | {minutes:g} | {len(rs)} | {stops} | "
                          f"{spread([r['student']['psnr'] for r in alone])} | "
                          f"{spread([r['student']['ssim_rgb'] for r in alone], 4)} | "
                          f"{'; '.join('/'.join(map(str, _below(r))) for r in alone if 'per_image' in r) or '-'} | "
                          f"{spread([r['safeguard']['psnr'] for r in guarded])} | "
                          f"{spread([r['safeguard']['ssim_rgb'] for r in guarded], 4)} | "
                          f"{below_g} |")
    compared = [c for c in (compare(*pt) for pt in COMPARED) if c] if with_compare else []
    if compared:
        labels = [k for k in compared[0] if isinstance(compared[0][k], dict)]
        md += ["", "## fit's own teacher: --k auto and --k adaptive against the oracle and the student (5-minute fits)",
               "", "PSNR (dB), mean over the set's images; the oracle is the best fixed k_b for the set, chosen with "
               "the clean images; mean +- sd over the seeds given.", "",
               "| set | seeds | own k_b; oracle k_b per seed | input | " + " | ".join(labels) + " |",
               "|---|---|---|---|" + "---|" * len(labels)]
        for name in dict.fromkeys(c["set"] for c in compared):
            cs = [c for c in compared if c["set"] == name]
            ks = "; ".join(f"{c['k_b']}, {c['oracle_k_b']}" for c in cs)
            md.append(f"| {name} | {len(cs)} | {ks} | {cs[0]['input']:.2f} | "
                      + " | ".join(spread([c[k]["psnr"] for c in cs]) if all(k in c for c in cs) else "-"
                                   for k in labels) + " |")
    write_results("fit_rule", {"measured": measured, "tune": _rows(TUNE["set"]), "held": _rows(HELD["set"]),
                               "compared": compared}, "\n".join(md) + "\n")


def compare(name: str, point_name: str) -> dict | None:
    """A fit's own teacher under the fixed k_b, ``--k auto`` and ``--k adaptive`` (with and without the safeguard),
    the oracle (the best fixed k for the set, chosen with the clean images) and the fit's student, on the set's
    images (per-image work cached in the point's folder, ``compare.jsonl``)."""
    from atbsn.adapt import ADAPTIVE, KEEP, SAFE_REACH
    from atbsn.checkpoint import load

    run = WORK / name / point_name
    if not (run / "row.json").exists():
        return None
    pairs = set_pairs(name)
    cache = run / "compare.jsonl"
    done = [json.loads(line) for line in cache.read_text().splitlines()] if cache.exists() else []
    if len(done) < len(pairs):
        teacher = load(run / "model.safetensors", part="teacher")
        with open(cache, "a") as f:
            for pair in pairs[len(done):]:
                done.append(every_k_row(teacher, pair))
                f.write(json.dumps(done[-1]) + "\n")
    for r in done:
        r["k"] = {int(k): v for k, v in r["k"].items()}
    row = json.loads((run / "row.json").read_text())
    k_b = load(run / "model.safetensors", part="teacher").config.k_infer
    oracle = max(done[0]["k"], key=lambda k: np.mean([r["k"][k]["psnr"] for r in done]))
    fusion = ",".join(f"{v:g}" for v in ADAPTIVE)
    policies = {"teacher at its own k_b": lambda r: r["k"][k_b],
                "teacher at the oracle k_b": lambda r: r["k"][oracle],
                "teacher, --k auto": lambda r: r["k"][auto_k(r, SAFE_REACH)],
                "teacher, --k auto --safeguard": lambda r: guard(r["k"][auto_k(r, SAFE_REACH)], KEEP),
                "teacher, --k adaptive": lambda r: r["fused"][fusion]}
    out = {"set": name, "point": point_name, "k_b": k_b, "oracle_k_b": oracle,
           "input": float(np.mean([r["input"]["psnr"] for r in done]))}
    for label, fn in policies.items():
        out[label] = {m: float(np.mean([fn(r)[m] for r in done])) for m in ("psnr", "ssim_rgb")}
    guarded = (row.get("fit_json") or {}).get("chosen", {}).get("safeguard")
    out["student (as denoise runs the fit's file)"] = row["safeguard" if guarded else "student"]
    return out


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
        choice = json.loads((run / "model.safetensors.fit" / "fit.json").read_text())["choice"]["chosen"]
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
    ap.add_argument("--no-compare", action="store_true", help="leave out the teacher policies against the student "
                    "(about 3 minutes per fit)")
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
    report(measured, not a.no_compare)
    picture()


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
