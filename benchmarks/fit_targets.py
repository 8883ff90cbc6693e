"""What ``fit``'s student learns from (issue 42, items 2 and 3): the partition loss (the teacher's k_b on flat
areas, k = 0 on textured ones) and non-local means at the photos' measured noise as a classical teacher beside
the blind-spot ones, against fit's defaults; tuned on sidd9 and polyu100's tuning half, scored on the held-out
half (never tuned and scored on the same images).

    python benchmarks/recipe.py polyu100-tune --recipes new part nlm50 nlm100 --minutes 5 --seeds 0 1 2
    python benchmarks/recipe.py sidd9 --recipes part nlm50 --minutes 5 --seeds 0 1 2      # "new" is there
    python benchmarks/fit_targets.py              # NLM's strength against the noise (cached), then the report

BM3D as the teacher instead (``--bm3d-weight``; a minute a photo, so on four photos of each polyu100 half):

    python benchmarks/recipe.py polyu100-tune4 --recipes plain bm3d50 bm3d100 --minutes 5 --seeds 0 1
    python benchmarks/recipe.py polyu100-tune4 --recipes plain bm3d50 --minutes 5 --seeds 2
    python benchmarks/recipe.py polyu100-held4 --recipes plain bm3d50 --minutes 5 --seeds 0 1 2
    python benchmarks/fit_targets.py --bm3d       # BM3D's strength (cached), then results/fit_targets_bm3d.md

First part: OpenCV's NLM with h = c x the set's measured sigma (no clean image), c from 0.5 to 3, scored
against the clean images: how good a teacher NLM can be, and the multiple fit uses (``rule.NLM_STRENGTH``).
Second: the fits (``recipe.py``'s points, ``results/work_recipe/<set>/``), each recipe against the defaults
("new") paired by seed. Results: ``results/fit_targets.md`` / ``.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, WORK, costly_photos, paired_verdict, set_pairs, spread, u8, write_results

from atbsn.checkpoint import load
from atbsn.classical import bm3d_many, nlm_at
from atbsn.fitting.candidates import as_denoiser
from atbsn.measure import measure_set
from atbsn.metrics import colour_excess, psnr, ssim_y

MULTIPLES = {"nlm": (0.5, 0.75, 1.0, 1.5, 2.0, 3.0), "bm3d": (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)}
BM3D_LIMIT = 8  # images per set in BM3D's sweep: half a minute an image on 2 cores
SWEEP_SETS = ("polyu100-tune", "sidd9", "demo")
FIT_SETS = ("polyu100-tune", "sidd9", "demo", "polyu100-held")
RECIPES = ("new", "mean01", "part", "part-nlm50", "nlm100", "plain", "bm3d50", "bm3d100")
BM3D_SETS = ("polyu100-tune4", "polyu100-held4")  # a minute of BM3D a photo: four photos fit a 5-minute fit
COSTLY = 2  # side_by_side.py's default: the photos where it ran ZS-N2N
# the sets each fitted file is run on as written (polyu100's 50 photos: minutes a row)
AS_WRITTEN = ("demo", "sidd9", *BM3D_SETS)


def sweep(name: str, limit: int, method: str = "nlm") -> dict:
    """NLM (or BM3D, ``method``) at c x the measured sigma on the set's first ``limit`` images, cached per set."""
    cache = WORK / name / f"{method}_sweep.json"
    out = json.loads(cache.read_text()) if cache.exists() else {}
    if all(str(c) in out.get("multiples", {}) for c in MULTIPLES[method]):
        return out
    pairs = set_pairs(name)[:limit]
    if not out:
        out = {"set": name, "method": method, "images": len(pairs),
               "sigma": measure_set(p.noisy for p in pairs)[0].sigma,
               "noisy": {"psnr": float(np.mean([psnr(p.noisy, p.clean) for p in pairs])),
                         "ssim_y": float(np.mean([ssim_y(p.noisy, p.clean) for p in pairs]))}, "multiples": {}}
    sigma = out["sigma"]
    for c in (c for c in MULTIPLES[method] if str(c) not in out["multiples"]):
        outs = ([nlm_at(p.noisy, c * sigma) for p in pairs] if method == "nlm"
                else bm3d_many([p.noisy for p in pairs], [c * sigma] * len(pairs)))
        out["multiples"][str(c)] = {"psnr": float(np.mean([psnr(o, p.clean) for o, p in zip(outs, pairs)])),
                                    "ssim_y": float(np.mean([ssim_y(o, p.clean) for o, p in zip(outs, pairs)]))}
        print(f"{name}: {method} at {c:g} sigma {out['multiples'][str(c)]['psnr']:.2f} dB", flush=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(out, indent=1))  # each multiple as it comes: BM3D's take minutes
    return out


def as_written(name: str, run: Path) -> dict:
    """The fitted file as denoise runs it (its recorded safeguard and colour kept) on every image of the set:
    the largest colour move beyond the input's (issue 42's bound: 0.5 of 255), and SSIM-Y on the photos where
    side_by_side.py ran ZS-N2N (its smallest ones), cached beside the row."""
    cache = run / "as_written.json"
    if cache.exists():
        return json.loads(cache.read_text())
    pairs = set_pairs(name)
    fn = as_denoiser(load(run / "model.safetensors"), torch.device("cpu"))
    outs = [u8(fn(p.noisy.astype(np.float64))) for p in pairs]
    small = costly_photos(pairs, COSTLY)
    out = {"colour_excess": max(colour_excess(o, p.noisy, p.clean) for o, p in zip(outs, pairs)),
           "ssim_y_smallest": float(np.mean([ssim_y(outs[i], pairs[i].clean) for i in small]))}
    cache.write_text(json.dumps(out))
    return out


def fits(name: str) -> dict[str, dict[int, dict]]:
    """recipe -> seed -> the 5-minute fit's scores: the network alone, and as fit writes it where the rule turns
    on the safeguard (mild noise, the split sets record it)."""
    got: dict[str, dict[int, dict]] = {}
    for recipe in RECIPES:
        for path in sorted((WORK / name).glob(f"{recipe}_m5_s*/row.json")):
            row = json.loads(path.read_text())
            got.setdefault(recipe, {})[row["seed"]] = {
                "psnr": row["student"]["psnr"], "ssim_y": row["student"]["ssim_y"],
                "written": (row.get("safeguard") or row["student"])["psnr"],
                **(as_written(name, path.parent) if name in AS_WRITTEN else {}),
                "steps": [row["teacher_steps"], row["student_steps"]], "seconds": row["fit_seconds"],
                "targets_seconds": row.get("other_seconds", {}).get("teacher_targets")}
    return got


def _largest(rows: list[dict]) -> str:
    moves = [r["colour_excess"] for r in rows if "colour_excess" in r]
    return f"{max(moves):+.2f}" if moves else "-"


def _scores(by_seed: dict[int, dict], base: dict[int, dict] | None) -> str:
    """A recipe's cells: seeds, PSNR, SSIM-Y, as written, each difference to ``base`` paired by seed (none: the
    base itself), the largest colour move."""
    rows = list(by_seed.values())
    vs = ["-", "-"]
    if base is not None:
        dp = paired_verdict({s: r["psnr"] for s, r in by_seed.items()}, {s: r["psnr"] for s, r in base.items()})
        ds = paired_verdict({s: r["ssim_y"] * 100 for s, r in by_seed.items()},
                            {s: r["ssim_y"] * 100 for s, r in base.items()})
        vs = [f"{dp[0]}: {dp[1]}", f"{ds[0]} (x100): {ds[1]}"]
    return (f"{sorted(by_seed)} | {spread([r['psnr'] for r in rows])} | {spread([r['ssim_y'] for r in rows], 4)} | "
            f"{spread([r['written'] for r in rows])} | {vs[0]} | {vs[1]} | {_largest(rows)}")


def zsn2n_ssim_y() -> dict[str, float]:
    """ZS-N2N's SSIM-Y on each set's smallest photos, from side_by_side.py's results (where it ran)."""
    path = RESULTS / "side_by_side.json"
    sets = json.loads(path.read_text())["sets"] if path.exists() else {}
    return {name: rows["ZS-N2N"]["ssim_y_first"][0] for name, rows in sets.items() if "ZS-N2N" in rows}


def report(sweeps: list[dict], table: dict[str, dict]) -> None:
    md = ["NLM at c x the measured sigma (OpenCV `fastNlMeansDenoisingColored`, 7 x 7 patches, 21 x 21 search; "
          "the sigma measured by `atbsn.measure` on the noisy images alone), PSNR / SSIM-Y:", "",
          *sweep_table(sweeps, "nlm")]
    md += ["", "`fit --minutes 5` with each recipe, mean +- sd over seeds; the difference to 'new' paired by seed. "
           "The 'new' rows were made with fit's defaults before the partition loss became one of them: the student "
           "learned from the mean of the teacher at k = 0 and 1 (the recipe mean01 now). PSNR of the network "
           "alone; 'as written': with the safeguard where the rule turns it on "
           "(mild noise). Recipes (benchmarks/common.py): part = `--loss partition` (k_b on flat areas, 0 on "
           "textured ones; fit's default since); part-nlm50 = the same with `--nlm-weight 0.5` (each target moved "
           "half way to NLM at 1.5 x the measured sigma); nlm100 = `--nlm-weight 1` (NLM's output the only "
           "target).", "",
           f"Colour: the largest move of an image's mean colour beyond the input's, as written (issue 42 bounds it "
           f"at 0.5 of 255). SSIM-Y on the {COSTLY} smallest photos, as written, where side_by_side.py ran ZS-N2N "
           f"(the number in brackets: ZS-N2N's).", "",
           "| set | recipe | seeds | PSNR | SSIM-Y | as written | PSNR vs new | SSIM-Y vs new | colour moved | SSIM-Y, "
           "smallest photos | steps | seconds |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    zs = zsn2n_ssim_y()
    for name, got in table.items():
        base = got.get("new", {})
        for recipe, by_seed in got.items():
            rows = list(by_seed.values())
            md.append(f"| {name} | {recipe} | {_scores(by_seed, None if recipe == 'new' else base)} | "
                      f"{', '.join(format(r['ssim_y_smallest'], '.3f') for r in rows if 'ssim_y_smallest' in r) or '-'}"
                      f"{f' ({zs[name]:.3f})' if name in zs else ''} | {rows[0]['steps'][0]}+{rows[0]['steps'][1]} | "
                      f"{spread([r['seconds'] for r in rows], 0)} |")
    write_results("fit_targets", {"sweeps": sweeps, "fits": table}, "\n".join(md) + "\n")


def sweep_table(sweeps: list[dict], method: str) -> list[str]:
    """The strength sweep as Markdown rows, the best multiple of each set in bold."""
    cs = MULTIPLES[method]
    md = ["| set | images | sigma | noisy | " + " | ".join(f"c = {c:g}" for c in cs) + " |",
          "|---|---|---|---|" + "---|" * len(cs)]
    for s in sweeps:
        best = max(cs, key=lambda c: s["multiples"][str(c)]["psnr"])
        cells = [(f"**{v['psnr']:.2f}**" if c == best else f"{v['psnr']:.2f}") + f" / {v['ssim_y']:.3f}"
                 for c, v in ((c, s["multiples"][str(c)]) for c in cs)]
        md.append(f"| {s['set']} | {s['images']} | {s['sigma']:.2f} | {s['noisy']['psnr']:.2f} / "
                  f"{s['noisy']['ssim_y']:.3f} | " + " | ".join(cells) + " |")
    return md


def report_bm3d(sweeps: list[dict], table: dict[str, dict]) -> None:
    """BM3D as the classical teacher (``fit --bm3d-weight``): its strength, then 5-minute fits on four photos."""
    md = [f"BM3D (the `bm3d` package, `bm3d_rgb`) at c x the measured sigma on the first {BM3D_LIMIT} photos of "
          "polyu100's tuning half (mild noise), PSNR / SSIM-Y; about a minute a 512 x 512 photo on one core of this "
          "machine, so the heavy sets (where BM3D at the measured sigma is 3 to 4.5 dB below fit's student, "
          "side_by_side.md) were not swept:", "", *sweep_table(sweeps, "bm3d"), "",
          "`fit --minutes 5` on four photos (the first of each polyu100 half: BM3D once per photo takes about 2 "
          "minutes of the 5 there, 25 on a whole half), mean +- sd over seeds, the difference to 'plain' (fit's "
          "defaults with no classical teacher, `--bm3d-weight 0`; made in the same sitting) paired by seed. "
          "bm3d50 = `--bm3d-weight 0.5` (each target moved half way to BM3D at 4 x the measured sigma; what fit "
          "now chooses by itself there), bm3d100 = `--bm3d-weight 1` (BM3D's output the only target). "
          "PSNR and SSIM-Y of the network alone; 'as written': with the safeguard the rule turns on (mild noise); "
          "colour: the largest move of a photo's mean colour beyond the input's, as written; 'BM3D s': the "
          "seconds fit's plan gave the targets once per photo.", "",
          "| set | recipe | seeds | PSNR | SSIM-Y | as written | PSNR vs plain | SSIM-Y vs plain | colour moved | "
          "steps | seconds | BM3D s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, got in table.items():
        base = got.get("plain", {})
        for recipe, by_seed in got.items():
            rows = list(by_seed.values())
            pre = [r["targets_seconds"] for r in rows if r.get("targets_seconds") is not None]
            md.append(f"| {name} | {recipe} | {_scores(by_seed, None if recipe == 'plain' else base)} | "
                      f"{rows[0]['steps'][0]}+{rows[0]['steps'][1]} | "
                      f"{spread([r['seconds'] for r in rows], 0)} | {spread(pre, 0) if pre else '-'} |")
    write_results("fit_targets_bm3d", {"sweeps": sweeps, "fits": table}, "\n".join(md) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=20, help="images per set in the NLM sweep")
    ap.add_argument("--bm3d", action="store_true", help="BM3D as the teacher instead: results/fit_targets_bm3d.md")
    a = ap.parse_args()
    if a.bm3d:
        report_bm3d([sweep(SWEEP_SETS[0], BM3D_LIMIT, "bm3d")], {n: got for n in BM3D_SETS if (got := fits(n))})
        return
    sweeps = [sweep(name, a.limit) for name in SWEEP_SETS]
    table = {name: got for name in FIT_SETS if (got := fits(name))}
    report(sweeps, table)


if __name__ == "__main__":
    main()
