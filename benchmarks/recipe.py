"""PSNR against minutes for ``fit`` recipes on 2 CPU cores, with non-local means and BM3D as lines.

Each point is one ``fit`` (teacher + student, sized by ``--minutes``) on the noisy images of a set, scored
against the clean ones; the fit sees no clean image. Points are kept in ``results/work_recipe/<set>/`` and
skipped when rerun, so the study builds up over several sittings:

    python benchmarks/recipe.py demo --recipes old new --minutes 1 2 3 5 10 20
    python benchmarks/recipe.py sidd9 --recipes old new --minutes 2 5 10
    python benchmarks/recipe.py demo --recipes bf16 bf16-w24 --minutes 3    # the search, one variant a row
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 \
        python benchmarks/recipe.py demo --recipes fp32 --steps 600+550 --seeds 0 1 2   # budgets in steps

A budget in steps (``--steps TEACHER+STUDENT``) makes the result independent of the CPU's speed: the demo's
recipe was chosen that way (``results/recipe_steps.md``), each row with the seconds it took on this machine.

Sets: ``demo`` (the demo's four scikit-image photos with simulated 'phone-night' noise), ``sidd9`` (heavy
real phone noise) and ``polyu100`` (first 20 pairs, mild real DSLR noise). Results: ``results/recipe.md``,
``results/recipe.json`` and ``results/recipe_<set>.png``. Run nothing else meanwhile: the budget is wall time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from common import RECIPES, RESULTS, SETS, SPLITS, WORK, WORK_STEPS, baselines, point, set_pairs, spread, write_results


def collect(work: Path = WORK) -> tuple[dict, list[dict]]:
    """The baselines and every point: those on disk, and those of the committed report that are not (points
    made in earlier sittings whose work folders are gone), one per set, recipe, budget and seed."""
    base = {p.parent.name: json.loads(p.read_text()) for p in sorted(WORK.glob("*/baselines.json"))}
    report = RESULTS / ("recipe_steps.json" if work == WORK_STEPS else "recipe.json")
    saved = json.loads(report.read_text()) if report.exists() else {}
    base = {**saved.get("baselines", {}), **base}

    def key(r: dict) -> tuple:
        return r["set"], r["recipe"], r.get("minutes"), tuple(r.get("steps") or ()), r["seed"]

    rows = {key(r): r for r in saved.get("rows", [])}
    rows.update({key(r): r for r in (json.loads(p.read_text()) for p in sorted(work.glob("*/*/row.json")))})
    return base, list(rows.values())


def report_steps(base: dict, rows: list[dict]) -> None:
    """The budgets in steps: student PSNR per recipe and budget, mean +- sd over seeds, with the fit's seconds."""
    md = ["Each row: `fit` with a fixed number of teacher + student steps on the set's noisy images, scored against "
          "the clean ones; mean +- sd over seeds. Seconds: the fit's wall time on this machine (2 cores), under the "
          "ISA each row names; the quality depends on the steps only, but the seconds of rows that ran beside other "
          "work (the test suite) are up to 3x too long: the demo's own timed runs are in demo.md. Points made by "
          "`python benchmarks/recipe.py SET --recipes ... --steps T+S ... --seeds ...` (rows kept in "
          "results/work_recipe_steps/), this file by the command above.", ""]
    for name in sorted({r["set"] for r in rows}):
        b = base[name]
        md += [f"## {name}", "", f"noisy {b['noisy']['psnr']:.2f} dB, NLM {b['NLM']['psnr']:.2f} dB, "
               f"BM3D {b['BM3D']['psnr']:.2f} dB (true noise level)", "",
               "| recipe | steps (teacher+student) | seeds | student PSNR | SSIM (RGB) | SSIM (Y) | teacher k_b=3 | "
               "fit seconds | ISA cap | precision |", "|---|---|---|---|---|---|---|---|---|---|"]
        keys = sorted({(r["recipe"], tuple(r["steps"])) for r in rows if r["set"] == name}, key=lambda k: (k[1], k[0]))
        for recipe, steps in keys:
            rs = [r for r in rows if r["set"] == name and r["recipe"] == recipe and tuple(r["steps"]) == steps]
            cap = rs[0]["isa"]["ATEN_CPU_CAPABILITY"] or "none"
            md.append(f"| {recipe} | {steps[0]}+{steps[1]} | {len(rs)} | {spread([r['student']['psnr'] for r in rs])} "
                      f"| {spread([r['student']['ssim_rgb'] for r in rs], 4)} | "
                      f"{spread([r['student']['ssim_y'] for r in rs if 'ssim_y' in r['student']], 4)} | "
                      f"{spread([r['teacher_k3']['psnr'] for r in rs if r.get('teacher_k3')])} | "
                      f"{spread([r['fit_seconds'] for r in rs], 0)} | {cap} | "
                      f"{(rs[0]['config'].get('precision') or 'auto')} |")
        md.append("")
    write_results("recipe_steps", {"baselines": base, "rows": rows}, "\n".join(md) + "\n")


def report(base: dict, rows: list[dict], command: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    md = ["# recipe: student PSNR against the fit's minutes on 2 CPU cores", "",
          "Each point: `fit --minutes M` (teacher + student C) on the set's noisy images, scored against the "
          "clean ones. BM3D is given the true noise level (an oracle). mean +- sd over seeds where there are "
          "several. Points made by `python benchmarks/recipe.py SET --recipes ... --minutes ... [--seeds ...]` "
          "(one row per call is kept in results/work_recipe/), this file by the command above.", ""]
    for name in sorted(set(base) - set(SPLITS)):  # the split sets are fit_rule.py's
        b = base[name]
        md += [f"## {name}", "", f"noisy {b['noisy']['psnr']:.2f} dB, NLM {b['NLM']['psnr']:.2f} dB "
               f"(SSIM {b['NLM']['ssim_rgb']:.4f}), BM3D {b['BM3D']['psnr']:.2f} dB (SSIM {b['BM3D']['ssim_rgb']:.4f})",
               "", "| recipe | minutes | seeds | student PSNR | SSIM (RGB) | teacher k_b=3 | steps (teacher+student) |",
               "|---|---|---|---|---|---|---|"]
        fig, ax = plt.subplots(figsize=(6, 4))
        mine = [r for r in rows if r["set"] == name]
        for recipe in sorted({r["recipe"] for r in mine}):
            pts = sorted({r["minutes"] for r in mine if r["recipe"] == recipe})
            means = []
            for m in pts:
                rs = [r for r in mine if r["recipe"] == recipe and r["minutes"] == m]
                ps = [r["student"]["psnr"] for r in rs]
                ss = [r["student"]["ssim_rgb"] for r in rs]
                tk = [r["teacher_k3"]["psnr"] for r in rs if r.get("teacher_k3")]
                means.append(np.mean(ps))
                md.append(f"| {recipe} | {m:g} | {len(rs)} | {spread(ps)} | {spread(ss, 4)} | "
                          f"{spread(tk)} | {rs[0]['teacher_steps']} + {rs[0]['student_steps']} |")
            ax.plot(pts, means, "o-", label=recipe)
        ax.set(xscale="log", xlabel="fit minutes (2 CPU cores)", ylabel="PSNR (dB)", title=name)
        for label, style in (("NLM", ":"), ("BM3D", "--"), ("noisy", "-")):
            ax.axhline(b[label]["psnr"], linestyle=style, color="gray" if label != "noisy" else "lightgray")
            ax.text(ax.get_xlim()[0], b[label]["psnr"], f" {label}", va="bottom", fontsize=8)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(RESULTS / f"recipe_{name}.png", dpi=110)
        plt.close(fig)
        md += ["", f"![{name}](recipe_{name}.png)", ""]
    write_results("recipe", {"baselines": base, "rows": rows}, "\n".join(md) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("set", choices=["demo", *SETS, *SPLITS])
    ap.add_argument("--recipes", nargs="+", default=["old", "new"], choices=list(RECIPES))
    ap.add_argument("--minutes", nargs="+", type=float, default=[1, 2, 3, 5, 10, 20])
    ap.add_argument("--steps", nargs="+", help="budgets in steps instead of minutes, TEACHER+STUDENT each")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--report-only", action="store_true", help="only rewrite the tables and curves")
    a = ap.parse_args()
    if not a.report_only:
        pairs = set_pairs(a.set)
        baselines(a.set, pairs)
        budgets = ([(None, tuple(int(n) for n in b.split("+"))) for b in a.steps] if a.steps
                   else [(m, None) for m in a.minutes])
        for minutes, steps in budgets:
            for recipe in a.recipes:
                for seed in a.seeds:
                    point(a.set, pairs, recipe, minutes, seed, steps)
    if a.steps:
        report_steps(*collect(WORK_STEPS))
    else:
        report(*collect())


if __name__ == "__main__":
    main()
