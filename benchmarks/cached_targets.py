"""Distillation from targets computed once per photo (``--cache-targets``) against the teacher on every batch.

The demo's recipe (teacher: AT-BSN width 16, 4 x 64^2, k_a = 5, 600 steps; student C from the teacher's UNet by the
partition loss at k = 3 and 0, 600 steps) on the demo's four noisy photos, per seed: one teacher, then the student
both ways from it. The distillation's wall time (fresh process each, run alone) and the student's PSNR and SSIM on
luma against the clean photos. The question for issue 41: how much of the student's step the teacher's forward
pass was, and whether the targets of whole tiled windows teach as well as those of each random crop.

    python benchmarks/cached_targets.py --seeds 0 1 2     # writes results/cached_targets.json and .md
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/cached_targets.py --seeds 0 --tag avx2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, run_to_end, set_pairs, spread, train_set, write_results  # noqa: E402

from atbsn.checkpoint import load  # noqa: E402
from atbsn.config import RunConfig  # noqa: E402
from atbsn.distill import distill  # noqa: E402
from atbsn.evaluate import evaluate  # noqa: E402
from atbsn.train import train  # noqa: E402

WORK = RESULTS / "work_cached_targets"
STEPS = 600
SHAPE = {"batch": 4, "crop": 64, "precision": "fp32", "val_every": 10**9, "save_every": 100}


def one(seed: int, cached: bool, data: list[str], pairs) -> dict:
    """One distillation (its teacher trained first, once per seed), timed and scored (cached per run)."""
    teacher = run_to_end(train, RunConfig(task="train", data=data, out=str(WORK / f"teacher_s{seed}"), steps=STEPS,
                                          width=16, k_train=5, seed=seed, **SHAPE))
    out = WORK / f"student_s{seed}_{'cached' if cached else 'per_batch'}"
    row_file = out / "row.json"
    if row_file.exists():
        return json.loads(row_file.read_text())
    config = RunConfig(task="distill", data=data, out=str(out), steps=STEPS, teacher=str(teacher), student="C",
                       ks=[3, 0], loss="partition", init_from_teacher=True, cache_targets=cached, seed=seed, **SHAPE)
    t0 = time.perf_counter()
    run_to_end(distill, config)
    seconds = time.perf_counter() - t0
    _, summary = evaluate(load(out / "last.safetensors"), pairs, progress=False)
    row = {"seed": seed, "cached": cached, "seconds": seconds, "psnr": summary["psnr"], "ssim_y": summary["ssim_y"]}
    row_file.write_text(json.dumps(row))
    print(row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--tag", help="a separate work folder and results/cached_targets_TAG (another CPU kind's cap)")
    args = ap.parse_args()
    global WORK
    if args.tag:
        WORK = WORK.with_name(f"{WORK.name}_{args.tag}")
    pairs = set_pairs("demo")
    data = train_set(pairs, WORK / "noisy")
    rows = [one(seed, cached, data, pairs) for seed in args.seeds for cached in (False, True)]
    md = ["# Distillation from targets cached per photo", "",
          f"The demo's recipe, {STEPS} teacher and {STEPS} student steps, fp32, seeds {args.seeds}; distillation "
          "wall time (the precompute included) and the student against the clean photos. See "
          "benchmarks/cached_targets.py.", "",
          "| targets | seconds (distillation) | PSNR | SSIM-Y |", "|---|---|---|---|"]
    for cached in (False, True):
        rs = [r for r in rows if r["cached"] == cached]
        md.append(f"| {'once per photo' if cached else 'teacher on every batch'} | "
                  f"{spread([r['seconds'] for r in rs], 1)} | {spread([r['psnr'] for r in rs], 2)} | "
                  f"{spread([r['ssim_y'] for r in rs], 4)} |")
    by = {(r["seed"], r["cached"]): r for r in rows}
    gains = [by[(s, False)]["seconds"] / by[(s, True)]["seconds"] for s in args.seeds]
    dpsnr = [by[(s, True)]["psnr"] - by[(s, False)]["psnr"] for s in args.seeds]
    dssim = [by[(s, True)]["ssim_y"] - by[(s, False)]["ssim_y"] for s in args.seeds]
    md += ["", f"- Per seed, cached against per batch: {', '.join(f'{g:.2f}x' for g in gains)} faster "
           f"(median {statistics.median(gains):.2f}x); PSNR {', '.join(f'{d:+.2f}' for d in dpsnr)} dB; SSIM-Y "
           f"{', '.join(f'{d:+.4f}' for d in dssim)}.", ""]
    write_results("cached_targets" + (f"_{args.tag}" if args.tag else ""), {"rows": rows}, "\n".join(md))


if __name__ == "__main__":
    main()
