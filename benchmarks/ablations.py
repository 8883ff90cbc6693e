"""The supplementary material's ablations at CPU scale, built up row by row over as many sittings as it takes.

    python benchmarks/ablations.py sidd9 [--seeds 0 1 2] [--only teacher student fusion] [--smoke]
    python benchmarks/ablations.py polyu100

Fully self-supervised: every network trains only on the noisy images it is scored on, one budget for all
(``BUDGET``). Rows:
- ``teacher``: k_a in {1, 3, 5, 7, 9}; the engine keeps the checkpoint with the lowest held-out loss (no clean
  image is used to choose it; the step it came from is reported, the early stop of S5.1), scored over k_b with
  the flat/textured split (``TextureSplit``, crops of ``GROUP_CROP``): the k_a x k_b tables and heatmaps per
  group (Fig. S4);
- ``student``: A, B and C distilled from the k_a = 9 teacher with the multi, mean and partition losses
  (Tab. 3 / S1, S4); C starts from the teacher's UNet, and once more from scratch (``init: scratch``);
- ``fusion``: student C from 2, 3, 4 and 7 teachers (Fig. S2).
Each finished row leaves ``results/ablations_rows_<set>/<row>.json`` (its config and scores; committed) and is
skipped when the script runs again; an interrupted training resumes from its run folder in
``work_ablations_<set>/runs`` (not committed: a missing teacher is retrained, batches being a function of the
seed and step). The tables give mean +- standard deviation over the
seeds run so far, with a sentence per claim. Results: ``results/ablations_<set>.json`` / ``.md`` and heatmaps.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import numpy as np
from common import DEVICE, RESULTS, SETS, open_set, paired_verdict, run_to_end, spread, write_results

from atbsn.checkpoint import load
from atbsn.config import SIDD_KS, RunConfig
from atbsn.distill import distill
from atbsn.evaluate import METRICS, TextureSplit, crop_strip, evaluate, sweep
from atbsn.files import write_text
from atbsn.plots import plot_heatmap, plot_sweep
from atbsn.runtime import native_bf16
from atbsn.train import train

# bf16 autocast where the CPU/GPU computes it natively (fit's recipe: 1.8x the steps per second on 2
# AVX512-BF16 cores, measured), else fp32; resolved once here so that every row of a set runs the same budget.
BUDGET = {"width": 16, "crop": 64, "batch": 8, "lr": 1e-3, "teacher_steps": 1000, "student_steps": 500,
          "precision": "bf16" if native_bf16(DEVICE) else "fp32"}
KAS = (1, 3, 5, 7, 9)
KBS = SIDD_KS
GROUP_CROP = 128
FUSION = {2: [0, 9], 3: [0, 5, 9], 4: [0, 3, 7, 11], 7: list(SIDD_KS)}  # teachers fused (Fig. S2); our choice
spread_s = partial(spread, single=" (1 seed)")  # the tables say when a row has one seed so far
# the paper's SIDD-validation PSNR: the 9/3 teacher and the students (Tab. 3), partition vs multi-teacher (S4,
# its own student), multi vs mean-teacher on student C (Tab. 3)
PAPER = {"teacher 9/3": 36.80, "student A": 36.98, "student B": 37.76, "student C": 37.88, "partition": 37.27,
         "multi": 37.59, "mean": 37.72}


# The rows that decide a claim (teachers k_a = 5, 7, 9; A < B < C with the paper's loss; multi vs mean vs
# partition on C): ``--core`` runs only these, to put more seeds where a claim is decided.
CORE_KAS = (5, 7, 9)
CORE_STUDENTS = {("A", "multi"), ("B", "multi"), ("C", "multi"), ("C", "mean"), ("C", "partition")}


def rows_for(only: list[str], seeds: list[int], core: bool = False) -> list[tuple[str, dict]]:
    rows = []
    for seed in seeds:
        if "teacher" in only:
            rows += [(f"teacher_ka{ka}_s{seed}", {"kind": "teacher", "k_a": ka, "seed": seed}) for ka in KAS
                     if not core or ka in CORE_KAS]
        if "student" in only:
            rows += [(f"student_{s}_{loss}_s{seed}", {"kind": "student", "student": s, "loss": loss, "seed": seed})
                     for s in ("A", "B", "C") for loss in ("multi", "mean", "partition")
                     if not core or (s, loss) in CORE_STUDENTS]
            # a diagnostic of ours: C trained from scratch, to tell its start from its capacity (C vs B)
            rows.append((f"student_C_multi_scratch_s{seed}",
                         {"kind": "student", "student": "C", "loss": "multi", "init": "scratch", "seed": seed}))
        if "fusion" in only:
            rows += [(f"fusion_{n}_s{seed}", {"kind": "fusion", "teachers": n, "seed": seed}) for n in FUSION]
    return rows


def teacher_run(work: Path, ka: int, seed: int) -> Path:
    """The run folder of the k_a teacher of ``seed`` (shared by its row, the students and the crop pictures)."""
    return work / "runs" / f"teacher_ka{ka}_s{seed}"


def run_row(name: str, spec: dict, work: Path, data: list[str], pairs, split: TextureSplit, b: dict) -> dict:
    common = {"data": data, "batch": b["batch"], "crop": b["crop"], "lr": b["lr"], "seed": spec["seed"],
              "precision": b["precision"], "device": str(DEVICE), "save_every": 250}

    def teacher(ka: int) -> Path:
        """Train (or resume, or find done) the k_a teacher; its checkpoint of lowest held-out loss."""
        out = teacher_run(work, ka, spec["seed"])
        run_to_end(train, RunConfig(task="train", out=str(out), steps=b["teacher_steps"], width=b["width"], k_train=ka,
                              k_infer=min(ka, 3), val_every=max(b["teacher_steps"] // 8, 1), **common))
        return out / "best.safetensors"

    if spec["kind"] == "teacher":
        best = teacher(spec["k_a"])
        summary = json.loads(best.with_name("summary.json").read_text())
        rows = sweep([load(best)], pairs, KBS, split=split)  # one backbone pass per image for every k_b
        return {"best_step": summary["best"]["step"] if summary["best"] else None,
                "sweep": [{"k_b": r["k_b"], **{m: r[m] for m in METRICS}, "groups": r["groups"]} for r in rows]}
    best = teacher(9)
    student, loss, ks = spec.get("student", "C"), spec.get("loss", "multi"), FUSION.get(spec.get("teachers"), KBS)
    if loss == "partition":
        ks = [9, 0]
    # runs are named by what they compute, so rows with the same config share one (fusion of 7 = student C multi)
    scratch = spec.get("init") == "scratch"
    run = f"student_{student}_{loss}_k{'-'.join(map(str, ks))}{'_scratch' * scratch}_s{spec['seed']}"
    cfg = RunConfig(task="distill", out=str(work / "runs" / run), steps=b["student_steps"], teacher=str(best),
                    student=student, ks=list(ks), loss=loss, init_from_teacher=student == "C" and not scratch,
                    val_every=10**9, **common)
    model = load(run_to_end(distill, cfg))
    _, s = evaluate(model, pairs, split=split)
    return {m: s[m] for m in METRICS} | {"groups": s["groups"], "ks": list(ks)}


def row_key(name: str) -> str:
    """A row's name without its seed: ``student_C_multi_s2`` -> ``student_C_multi``."""
    return name.rsplit("_s", 1)[0]


def _group(scores: dict, group: str) -> float:
    return scores["psnr"] if group == "all" else scores["groups"][group]["psnr"]


def teacher_psnr(results: dict, ka: int, kb: int, group: str = "all") -> dict[int, float]:
    """PSNR per seed of the k_a teacher at k_b (whole images or one texture group)."""
    out = {}
    for r in results.values():
        if r["spec"]["kind"] == "teacher" and r["spec"]["k_a"] == ka:
            out[r["spec"]["seed"]] = next(_group(e, group) for e in r["scores"]["sweep"] if e["k_b"] == kb)
    return out


def teacher_slope(results: dict, ka: int, group: str) -> dict[int, float]:
    """Per seed, the least-squares slope of the k_a teacher's PSNR over k_b (dB per pixel of blind spot)."""
    per_k = {kb: teacher_psnr(results, ka, kb, group) for kb in KBS}
    return {s: float(np.polyfit(KBS, [per_k[kb][s] for kb in KBS], 1)[0]) for s in per_k[KBS[0]]}


def row_psnr(results: dict, key: str, group: str = "all") -> dict[int, float]:
    """PSNR per seed of the rows named ``<key>_s<seed>``."""
    return {r["spec"]["seed"]: _group(r["scores"], group) for r in results.values()
            if row_key(r["name"]) == key}


def _vs(a: str, b: str) -> str:
    return f"{PAPER[a]:.2f} vs {PAPER[b]:.2f} dB"


def claims(results: dict) -> list[tuple[str, str, dict, dict]]:
    """The supplementary's claims, each as (claim, the paper's evidence, A, B) meaning "A > B" per seed."""
    t93 = teacher_psnr(results, 9, 3)
    out = [
        ("S4: multi-teacher distillation beats region partition (student C)", _vs("multi", "partition"),
         row_psnr(results, "student_C_multi"), row_psnr(results, "student_C_partition")),
        ("S4: multi-teacher beats mean-teacher distillation (student C)", _vs("student C", "mean"),
         row_psnr(results, "student_C_multi"), row_psnr(results, "student_C_mean")),
    ]
    out += [(f"Tab. 3: student {s} gains from distillation (beats its k_a = 9 teacher at k_b = 3)",
             _vs("student " + s, "teacher 9/3"), row_psnr(results, f"student_{s}_multi"), t93) for s in "ABC"]
    out += [("Tab. 3: depth helps more than downsampling: B beats A", _vs("student B", "student A"),
             row_psnr(results, "student_B_multi"), row_psnr(results, "student_A_multi")),
            ("Tab. 3: C beats B", _vs("student C", "student B"),
             row_psnr(results, "student_C_multi"), row_psnr(results, "student_B_multi"))]
    scratch = row_psnr(results, "student_C_multi_scratch")
    out += [("Diagnostic (ours): C trained from scratch beats C started from its teacher's UNet", "-",
             scratch, row_psnr(results, "student_C_multi")),
            ("Diagnostic (ours): C trained from scratch beats B",
             _vs("student C", "student B") + " (C as the paper trains it)", scratch,
             row_psnr(results, "student_B_multi"))]
    slope = {g: teacher_slope(results, 9, g) for g in ("flat", "textured")}
    out += [("S5.1: flat regions gain with k_b (slope of PSNR over k_b = 0..11, dB per pixel, k_a = 9 teacher, > 0)",
             "Fig. S4", slope["flat"], dict.fromkeys(slope["flat"], 0.0)),
            ("S5.1: textured regions lose with k_b (the same slope < 0)", "Fig. S4",
             dict.fromkeys(slope["textured"], 0.0), slope["textured"]),
            ("S5.1: flat regions favour a larger k_b than textured ones (flat slope > textured slope)", "Fig. S4",
             slope["flat"], slope["textured"])]
    # k_a = 1 and 3 are left out here: below the noise's correlation length they leak noise at every k_b
    drop = {}
    for ka in (5, 9):
        at3, at11 = teacher_psnr(results, ka, 3, "textured"), teacher_psnr(results, ka, 11, "textured")
        drop[ka] = {s: at3[s] - at11[s] for s in at11}
    out.append(("S5.1: a larger k_a makes a large k_b less harmful to texture (textured PSNR lost from k_b = 3 to "
                "11: k_a = 5 loses more than k_a = 9)", "Fig. S4", drop[5], drop[9]))
    fused = sorted(FUSION)
    out += [(f"Fig. S2: fusing {b} teachers beats fusing {a}", "Fig. S2 (visual)",
             row_psnr(results, f"fusion_{b}"), row_psnr(results, f"fusion_{a}")) for a, b in zip(fused, fused[1:])]
    return out


def mixed_budget(results: dict, b: dict) -> str | None:
    """The first row that ran under another budget than ``b`` (for example fp32 rows resumed on a machine with
    native bf16), as "<row>.json: ...", or None: rows of different budgets never share a table."""
    for name, r in sorted(results.items()):
        if (old := r["budget"]) != b:
            diff = ", ".join(f"{k} {old.get(k)} (this run: {b.get(k)})" for k in {**old, **b} if old.get(k) != b.get(k))
            return f"{name}.json: ran under another budget, {diff}; rerun the row or move its file away"
    return None


def _crops_by_group(tag: str, pairs, split: TextureSplit, work: Path) -> list[str]:
    """One crop per texture group across k_b from the k_a = 9 teacher of seed 0 (drawn once)."""
    model_path = teacher_run(work, 9, 0) / "best.safetensors"
    paths = {group: RESULTS / f"ablations_{tag}_crops_{group}.png" for group in split.groups}
    missing = [g for g, path in paths.items() if not path.exists() and split.groups[g]]
    if missing and model_path.exists():
        model = load(model_path)
        for group in missing:
            regions = split.groups[group]
            i, *box = regions[len(regions) // 2]  # a region from the middle of the group's list
            crop_strip(model, pairs[i], tuple(box), KBS, paths[group])
    return [path.name for path in paths.values() if path.exists()]


def report(tag: str, set_name: str, results: dict, b: dict, split: TextureSplit, pairs, work: Path) -> None:
    seeds = sorted({r["spec"]["seed"] for r in results.values()})
    md = [f"Set `{set_name}`; budget {json.dumps(b)}; seeds so far {seeds}; texture groups: {GROUP_CROP}^2 crops "
          f"split at local std {split.threshold:.2f} of the clean image (median; flat {len(split.groups['flat'])}, "
          f"textured {len(split.groups['textured'])} crops). PSNR in dB on uint8-rounded RGB, mean +- std over "
          "seeds. Every network trained only on the set's noisy images.", ""]
    verdicts = []
    md += ["## Claims", "", "A claim holds (or does not) when the mean difference, paired by seed, exceeds twice "
           "the standard deviation of the differences over at least 3 seeds.", "",
           "| claim | paper | difference (dB; slopes dB per pixel) | verdict |", "|---|---|---|---|"]
    for text, paper, a, b_ in claims(results):
        diff, v = paired_verdict(a, b_)
        verdicts.append({"claim": text, "paper": paper, "difference": diff, "verdict": v})
        md.append(f"| {text} | {paper} | {diff} | {v} |")
    md.append("")
    teachers = [r for r in results.values() if r["spec"]["kind"] == "teacher"]
    if teachers:
        steps = {ka: [r["scores"]["best_step"] for r in teachers if r["spec"]["k_a"] == ka] for ka in KAS}
        stopped = sorted({ka for ka, v in steps.items() if any(st is not None and st < b["teacher_steps"] for st in v)})
        md += ["## Teachers: k_a x k_b (Fig. S4)", "", "Best step: the step of the lowest held-out blind-spot "
               f"loss (no clean image used), of {b['teacher_steps']}, per seed: "
               + "; ".join(f"k_a = {ka}: {', '.join(map(str, v))}" for ka, v in steps.items() if v) + ". "
               + ("S5.1's early stop for k_a = 7: " + ("the held-out loss rose before the end for k_a = "
                  + ", ".join(map(str, stopped)) + "." if stopped else "not needed at this budget; the held-out "
                  "loss still fell at the last step for every k_a, so no overfitting is seen.")), ""]
        for group in ("all", "flat", "textured"):
            md += [f"{group}:", "", "| k_a \\ k_b | " + " | ".join(map(str, KBS)) + " |", "|---|" + "---|" * len(KBS)]
            heat = []
            for ka in KAS:
                per_k = {kb: list(teacher_psnr(results, ka, kb, group).values()) for kb in KBS}
                if not per_k[KBS[0]]:
                    continue
                md.append(f"| {ka} | " + " | ".join(spread_s(v) for v in per_k.values()) + " |")
                heat += [{"teacher": ka, "label": f"k_a = {ka}", "k_a": ka, "k_b": kb, "psnr": float(np.mean(v))}
                         for kb, v in per_k.items()]
            if heat:
                plot_heatmap(heat, RESULTS / f"ablations_{tag}_heatmap_{group}.png")
                plot_sweep(heat, RESULTS / f"ablations_{tag}_sweep_{group}.png")
            md.append("")
        crops = _crops_by_group(tag, pairs, split, work)
        md += [f"Pictures: `ablations_{tag}_heatmap_<group>.png`, `ablations_{tag}_sweep_<group>.png` (PSNR over "
               f"k_b per k_a) and {', '.join(f'`{c}`' for c in crops) or 'no crops yet'} (the k_a = 9 teacher of "
               "seed 0 across k_b on one crop of each group).", ""]
    others = [r for r in results.values() if r["spec"]["kind"] != "teacher"]
    if others:
        md += ["## Students and fusion", "", "| row | PSNR all | flat | textured | SSIM-RGB | seeds |",
               "|---|---|---|---|---|---|"]
        for key in sorted({row_key(r["name"]) for r in others}):
            runs = [r for r in others if row_key(r["name"]) == key]
            md.append(f"| {key} | {spread_s([r['scores']['psnr'] for r in runs])} | "
                      f"{spread_s([r['scores']['groups']['flat']['psnr'] for r in runs])} | "
                      f"{spread_s([r['scores']['groups']['textured']['psnr'] for r in runs])} | "
                      f"{np.mean([r['scores']['ssim_rgb'] for r in runs]):.4f} | {len(runs)} |")
        md += ["", f"Fusion rows: student C from the teacher at k in {json.dumps(FUSION)} (multi loss); fusion_7 is "
               "the same run as student_C_multi. Student C starts from the teacher's UNet weights, "
               "student_C_multi_scratch from the authors' random initialisation. The paper (SIDD validation): "
               "students A / B / C "
               f"{PAPER['student A']} / {PAPER['student B']} / {PAPER['student C']}; partition {PAPER['partition']} "
               f"vs multi-teacher {PAPER['multi']}; mean-teacher {PAPER['mean']}."]
    write_results(f"ablations_{tag}", {"budget": b, "seeds": seeds, "threshold": split.threshold,
                                       "claims": verdicts, "rows": list(results.values())}, "\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("set", choices=list(SETS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    parts = ["teacher", "student", "fusion"]
    ap.add_argument("--only", nargs="+", default=parts, choices=parts)
    ap.add_argument("--smoke", action="store_true", help="3 steps per run, results named *_smoke (a dry run)")
    ap.add_argument("--core", action="store_true", help="only the rows that decide a claim (CORE_KAS, CORE_STUDENTS)")
    ap.add_argument("--report-only", action="store_true", help="write the tables from the rows done so far")
    a = ap.parse_args()
    pairs, tag, work, data = open_set(a.set, "ablations", a.smoke)
    b = {**BUDGET, "teacher_steps": 3, "student_steps": 3} if a.smoke else BUDGET
    split = TextureSplit.of(pairs, GROUP_CROP)
    rows_dir = RESULTS / f"ablations_rows_{tag}"  # committed: a later sitting (or clone) resumes from them
    results = {p.stem: json.loads(p.read_text()) for p in sorted(rows_dir.glob("*.json"))}
    if problem := mixed_budget(results, b):
        raise SystemExit(f"{rows_dir}/{problem}")
    for name, spec in rows_for(a.only, a.seeds, a.core):
        if name in results or a.report_only:
            continue
        scores = run_row(name, spec, work, data, pairs, split, b)
        results[name] = {"name": name, "spec": spec, "budget": b, "scores": scores}
        write_text(rows_dir / f"{name}.json", json.dumps(results[name], indent=1))
        print(f"{name}: done", flush=True)
    report(tag, a.set, dict(sorted(results.items())), b, split, pairs, work)


if __name__ == "__main__":
    main()
