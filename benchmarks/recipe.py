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
import shutil
import time
from pathlib import Path

import numpy as np
from common import RESULTS, machine, spread, write_results
from reproduce import SETS as REAL_SETS

from atbsn import classical
from atbsn.checkpoint import load
from atbsn.config import SIDD_KS
from atbsn.datasets import Pair, load_pairs
from atbsn.demo import sample_pairs
from atbsn.evaluate import evaluate, score_outputs
from atbsn.fitting import FitConfig, fit
from atbsn.images import write_image

# The recipes, as FitConfig fields. "old" is the default before issue 18, frozen here; "new" is the default
# now (an empty override). The rest are the search's variants, kept so that each row can be rerun.
OLD = {"width": 16, "crop": 64, "batch": 8, "lr": 1e-3, "precision": "fp32", "student_share": 0.3,
       "ks": list(SIDD_KS), "loss": "multi"}
RECIPES: dict[str, dict] = {
    "old": OLD,
    "new": {},
    "bf16": {**OLD, "precision": "bf16"},
    "bf16-w24": {**OLD, "precision": "bf16", "width": 24},
    "bf16-lr2e-3": {**OLD, "precision": "bf16", "lr": 2e-3},
    "bf16-share0.15": {**OLD, "precision": "bf16", "student_share": 0.15},
    "bf16-crop96": {**OLD, "precision": "bf16", "crop": 96, "batch": 4},
    "ks013": {**OLD, "precision": "bf16", "lr": 2e-3, "ks": [0, 1, 3]},
    "ks013-mean": {**OLD, "precision": "bf16", "lr": 2e-3, "ks": [0, 1, 3], "loss": "mean"},
    "ks01-mean": {**OLD, "precision": "bf16", "lr": 2e-3, "ks": [0, 1], "loss": "mean"},
    "share0.15": {"student_share": 0.15},
    "share0.15-lr3e-3": {"student_share": 0.15, "lr": 3e-3},
    # the fp32 search for the demo's fixed recipe (issue 25): budgets in steps, under the AVX2 cap
    "fp32": {"precision": "fp32"},
    "fp32-ka5": {"precision": "fp32", "k_train": 5},
    "fp32-ka7": {"precision": "fp32", "k_train": 7},
    "fp32-w12": {"precision": "fp32", "width": 12},
    "fp32-b4": {"precision": "fp32", "batch": 4},
    "fp32-lr3e-3": {"precision": "fp32", "lr": 3e-3},
    "fp32-ks0": {"precision": "fp32", "ks": [0]},
    "fp32-ka5-ks01-multi": {"precision": "fp32", "k_train": 5, "loss": "multi"},
    "fp32-ka5-b4": {"precision": "fp32", "k_train": 5, "batch": 4},
    "fp32-ka3": {"precision": "fp32", "k_train": 3},
    "bf16-ka5-b4": {"precision": "bf16", "k_train": 5, "batch": 4},  # the demo's recipe where bf16 is native
    # issue 27: the blind spot for mild noise (benchmarks/fit_rule.py), on polyu100's tuning half
    # (fixed variants: no teacher stop; the safeguard recorded as the rule chooses it, every row scores both)
    "ka9": {"k_train": 9, "k_infer": 3, "stop_at_noise": False},  # the default before: the rule may choose it
    "ka5": {"k_train": 5, "k_infer": 3, "stop_at_noise": False},
    "ka3": {"k_train": 3, "k_infer": 1, "stop_at_noise": False},
    "ka1": {"k_train": 1, "k_infer": 1, "stop_at_noise": False},
    "ka1-ks0": {"k_train": 1, "k_infer": 1, "ks": [0], "stop_at_noise": False},
    # fit's defaults at commit 75d5f25: the teacher stopped at the noise but not cooled down (kept mid-schedule);
    # its points are kept for the record, the code no longer makes them
    "stop-uncooled": {},
    # then with the cool-down after an early stop, before the mild-noise step cap (fit.MILD_STEP_CAP)
    "cooled-uncapped": {},
    # then with the first step cap, 800 teacher and 700 student steps
    "cap800": {},
}
# polyu100's 100 pairs split by index as benchmarks/adapt.py splits them: rules tuned on one half, scored on the other
SPLITS = {"polyu100-tune": ("polyu100", 0), "polyu100-held": ("polyu100", 1)}
WORK = RESULTS / "work_recipe"
WORK_STEPS = RESULTS / "work_recipe_steps"
ISA_KEYS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "native_bf16")


def set_pairs(name: str) -> list[Pair]:
    if name == "demo":
        return [Pair(n, noisy, clean) for n, noisy, clean in sample_pairs()]
    if name in SPLITS:
        base, offset = SPLITS[name]
        return load_pairs(REAL_SETS[base][0], None)[offset::2]
    root, limit = REAL_SETS[name]
    if not root.exists():
        raise SystemExit(f"{root} not found: this benchmark needs the project's test data beside the repository")
    return load_pairs(root, limit)


def noisy_folder(name: str, pairs: list[Pair]) -> Path:
    folder = WORK / name / "noisy"
    for p in pairs:
        if not (folder / f"{p.name}.png").exists():
            write_image(folder / f"{p.name}.png", p.noisy)
    return folder


def baselines(name: str, pairs: list[Pair]) -> dict:
    """Noisy input, OpenCV non-local means and BM3D at the true noise level, cached per set."""
    cache = WORK / name / "baselines.json"
    if cache.exists():
        return json.loads(cache.read_text())
    out = {"noisy": score_outputs([p.noisy for p in pairs], pairs)[1]}
    methods = {"NLM": lambda p: classical.nlm(p.noisy),
               "BM3D": lambda p: classical.bm3d(p.noisy, classical.noise_sigma(p.noisy, p.clean))}
    for label, fn in methods.items():
        if label == "BM3D" and name in SPLITS:  # 50 images of BM3D take longer than the study's fits
            continue
        t0 = time.perf_counter()
        outs = [fn(p) for p in pairs]
        out[label] = {**score_outputs(outs, pairs)[1], "seconds_per_image": (time.perf_counter() - t0) / len(pairs)}
        print(f"{name}: {label} {out[label]['psnr']:.2f} dB", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out, indent=1))
    return out


def point(name: str, pairs: list[Pair], recipe: str, minutes: float | None, seed: int,
          steps: tuple[int, int] | None = None) -> dict:
    """One fit at one budget (minutes, or ``steps`` = teacher + student steps), scored (cached as ``row.json``
    beside its work)."""
    label = f"m{minutes:g}" if steps is None else f"t{steps[0]}+{steps[1]}"
    run = (WORK if steps is None else WORK_STEPS) / name / f"{recipe}_{label}_s{seed}"
    row_path = run / "row.json"
    if row_path.exists():
        return json.loads(row_path.read_text())
    if run.exists():  # an interrupted point: its wall time would be wrong, so it starts again
        shutil.rmtree(run)
    budget = {"minutes": minutes} if steps is None else {"teacher_steps": steps[0], "student_steps": steps[1]}
    cfg = FitConfig(**{**RECIPES[recipe], **budget, "seed": seed, "device": "cpu"})
    t0 = time.perf_counter()
    model = fit([noisy_folder(name, pairs)], run / "model.safetensors", cfg, progress=False)
    seconds = time.perf_counter() - t0
    plan = json.loads((run / "model.safetensors.fit" / "plan.json").read_text())
    per, s = evaluate(load(model), pairs, safeguard=False)  # the network alone (a fit file may ask for the safeguard)
    _, t = evaluate(load(model, part="teacher"), pairs, k=3) if name == "demo" else (None, None)
    extra = {}
    if name in SPLITS:  # fit_rule.py reads each image, and the output with --safeguard as well
        guarded, g = evaluate(load(model), pairs, safeguard=True)
        extra = {"per_image": [{m: r[m] for m in ("psnr", "ssim_rgb", "noisy_psnr", "noisy_ssim_rgb")} for r in per],
                 "safeguard": {m: g[m] for m in ("psnr", "ssim_rgb")},
                 "safeguard_per_image": [{m: r[m] for m in ("psnr", "ssim_rgb")} for r in guarded],
                 "fit_json": json.loads((run / "model.safetensors.fit" / "fit.json").read_text()).get("choice")}
    row = {"set": name, "recipe": recipe, "minutes": minutes, "steps": list(steps) if steps else None,
           "seed": seed, "fit_seconds": seconds, "isa": {k: machine()[k] for k in ISA_KEYS},
           "config": RECIPES[recipe], **plan, "student": {m: s[m] for m in ("psnr", "ssim_rgb", "ssim_y")},
           "teacher_k3": {m: t[m] for m in ("psnr", "ssim_rgb", "ssim_y")} if t else None, **extra}
    row_path.write_text(json.dumps(row, indent=1))
    print(f"{name} {recipe} {label} seed {seed}: student {s['psnr']:.2f} dB "
          f"({plan['teacher_steps']}+{plan['student_steps']} steps, {seconds:.0f} s)", flush=True)
    return row


def collect(work: Path = WORK) -> tuple[dict, list[dict]]:
    base = {p.parent.name: json.loads(p.read_text()) for p in sorted(WORK.glob("*/baselines.json"))}
    rows = [json.loads(p.read_text()) for p in sorted(work.glob("*/*/row.json"))]
    return base, rows


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
               "| recipe | steps (teacher+student) | seeds | student PSNR | SSIM (RGB) | teacher k_b=3 | fit seconds | "
               "ISA cap | precision |", "|---|---|---|---|---|---|---|---|---|"]
        keys = sorted({(r["recipe"], tuple(r["steps"])) for r in rows if r["set"] == name}, key=lambda k: (k[1], k[0]))
        for recipe, steps in keys:
            rs = [r for r in rows if r["set"] == name and r["recipe"] == recipe and tuple(r["steps"]) == steps]
            cap = rs[0]["isa"]["ATEN_CPU_CAPABILITY"] or "none"
            md.append(f"| {recipe} | {steps[0]}+{steps[1]} | {len(rs)} | {spread([r['student']['psnr'] for r in rs])} "
                      f"| {spread([r['student']['ssim_rgb'] for r in rs], 4)} | "
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
    ap.add_argument("set", choices=["demo", *REAL_SETS, *SPLITS])
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
