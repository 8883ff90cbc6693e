"""Does starting from a released model pay? ``fit --from`` against ``fit`` from scratch, same budget, real noise.

Released teachers cannot be fetched onto this machine, so a stand-in plays one: a teacher + student bundle
(like AT-BSN(D)) trained by ``fit`` for a long run on noisy photos of other cameras (polyu100's DSLR JPEGs and
dnd33's crops: no SIDD image). Then, on sidd9's noisy images (heavy smartphone noise), for several seeds:

- ``fit`` from scratch with a ``--minutes`` budget,
- ``fit --from`` the stand-in with the same budget,

scored on sidd9's clean references (teacher at k_b = 3 and student), beside the stand-in used as it is.

Second question: does a teacher whose UNet starts from a released student C (APR-RD's SIDD student, real
weights; the paper's supplementary notes that shifts and rotations act on feature maps only) learn faster than
a fresh one? Width 48 teachers trained on sidd9's noisy images, PSNR at k_b = 3 after each chunk of steps.

Every run is kept in ``results/work_warm_start/`` and skipped when the script runs again (resumable):

    python benchmarks/warm_start.py                 # writes results/warm_start.json and .md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from common import RESULTS, SHARED, write_results

from atbsn import ATBSN, FitConfig, fit, load
from atbsn.config import RunConfig
from atbsn.datasets import Pair, load_pairs
from atbsn.evaluate import evaluate
from atbsn.students import init_teacher_from_student
from atbsn.train import train

WORK = RESULTS / "work_warm_start"


def _cached(path: Path, make) -> dict:
    """``make()`` once; its result kept as JSON at ``path``."""
    if path.exists():
        return json.loads(path.read_text())
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2))
    return value


def _scores(model_path: Path, pairs) -> dict:
    out = {}
    for part, k in (("teacher", 3), ("student", None)):
        model = load(model_path, part="teacher" if part == "teacher" else "auto")
        _, s = evaluate(model, pairs, k=k)
        out[part] = {"psnr": s["psnr"], "ssim_rgb": s["ssim_rgb"]}
    return out


def _fit(name: str, photos: list[str], cfg: FitConfig, pairs) -> dict:
    def make() -> dict:
        t0 = time.perf_counter()
        path = fit(photos, WORK / f"{name}.safetensors", cfg, progress=False)
        seconds = time.perf_counter() - t0
        plan = json.loads((WORK / f"{name}.safetensors.fit" / "plan.json").read_text())
        steps = {"teacher_steps": plan["teacher_steps"], "student_steps": plan["student_steps"]}
        return {"seconds": seconds, **steps, **_scores(path, pairs)}

    return _cached(WORK / f"{name}.json", make)


def _spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {sd:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--minutes", type=float, default=3.0, help="the fit budget of each compared run")
    ap.add_argument("--standin-steps", type=int, nargs=2, default=[3000, 800], help="teacher, student steps")
    ap.add_argument("--init-steps", type=int, nargs="+", default=[50, 150], help="checkpoints of question 2")
    ap.add_argument("--init-seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--smoke", action="store_true", help="a dry run: tiny budgets, results named *_smoke")
    a = ap.parse_args()
    global WORK
    if a.smoke:
        WORK = WORK.with_name(WORK.name + "_smoke")
        a.seeds, a.minutes, a.standin_steps, a.init_steps, a.init_seeds = [0], 0.1, [3, 2], [2], [0]
    if not SHARED.exists():
        sys.exit(f"{SHARED} not found: this benchmark needs the project's test data beside the repository")
    real = SHARED / "data" / "real"
    other = sorted(str(p) for p in (real / "polyu100" / "CroppedImages").glob("*_real.JPG"))
    other += sorted(str(p) for p in (real / "dnd33" / "noisy").glob("*.png"))
    pairs = load_pairs(real / "sidd9")
    # question 2 scores the centre 256^2 of each image: a teacher trained on 64^2 crops runs on 64^2 windows,
    # and a width-48 one takes minutes per full set
    centre = [Pair(p.name, p.noisy[128:384, 128:384], p.clean[128:384, 128:384]) for p in pairs]
    sidd_noisy = [str(real / "sidd9" / "noisy")]
    torch.manual_seed(0)

    # the stand-in released model: a long fit on other cameras
    t_steps, s_steps = a.standin_steps
    standin = _fit("standin", other, FitConfig(teacher_steps=t_steps, student_steps=s_steps), pairs)
    standin_path = WORK / "standin.safetensors"
    print("stand-in:", standin, flush=True)

    runs = {"scratch": [], "from": []}
    for seed in a.seeds:
        runs["scratch"].append(_fit(f"scratch_s{seed}", sidd_noisy, FitConfig(minutes=a.minutes, seed=seed), pairs))
        runs["from"].append(_fit(f"from_s{seed}", sidd_noisy,
                                 FitConfig(minutes=a.minutes, seed=seed, from_model=str(standin_path)), pairs))
        print(seed, runs["scratch"][-1], runs["from"][-1], flush=True)
    kept = [json.loads((WORK / f"from_s{s}.safetensors.fit" / "fit.json").read_text()) for s in a.seeds]

    # question 2: a width-48 teacher whose UNet starts from a released student C, against a fresh one
    student_c = SHARED / "fixtures" / "pretrained" / "aprrd_student_c_sidd_medium.pth"
    curves: dict[str, list] = {"fresh": [], "from student C": []}
    for seed in a.init_seeds:
        for label in curves:
            def make(label=label, seed=seed) -> dict:
                torch.manual_seed(seed)
                init = ATBSN(width=48)
                init.config.value_range = 1.0  # the released student's input scale, for both (a fair start)
                if label != "fresh":
                    init_teacher_from_student(init, load(student_c))
                out = WORK / f"init_{'fresh' if label == 'fresh' else 'student'}_s{seed}"
                cfg = RunConfig(task="train", data=sidd_noisy, out=str(out), steps=max(a.init_steps), batch=4,
                                crop=64, width=48, lr=3e-4, seed=seed, val_every=10**9, save_every=50)
                points = [{"step": 0, "psnr": evaluate(init, centre, k=3)[1]["psnr"]}]
                done = 0
                for target in a.init_steps:
                    train(cfg, resume=(out / "state.pt").exists(), stop_after=target - done, progress=False,
                          init=init)
                    done = target
                    points.append({"step": target, "psnr": evaluate(load(out / "last.safetensors"), centre,
                                                                    k=3)[1]["psnr"]})
                return {"points": points}

            curves[label].append(_cached(WORK / f"init_{label.replace(' ', '_')}_s{seed}.json", make))
            print(label, seed, curves[label][-1], flush=True)

    noisy = evaluate(load(standin_path), pairs)[1]["noisy_psnr"]
    md = [f"sidd9 (9 real smartphone images, noisy {noisy:.2f} dB), PSNR on uint8-rounded RGB; mean ± sd over "
          f"seeds {a.seeds}; every fit with `--minutes {a.minutes:g}` on sidd9's noisy images only.", "",
          f"Stand-in released model: `fit` for {t_steps} teacher + {s_steps} student steps on {len(other)} noisy "
          f"images of other cameras (polyu100 + dnd33), {standin['seconds'] / 60:.0f} min.", "",
          "| model | teacher (k_b = 3) | student C |", "|---|---|---|",
          f"| stand-in as it is (no SIDD image seen) | {standin['teacher']['psnr']:.2f} | "
          f"{standin['student']['psnr']:.2f} |"]
    for key, label in (("scratch", "fit from scratch"), ("from", "fit --from the stand-in")):
        md.append(f"| {label}, {a.minutes:g} min | {_spread([r['teacher']['psnr'] for r in runs[key]])} | "
                  f"{_spread([r['student']['psnr'] for r in runs[key]])} |")
    md += ["", "Steps each budget bought (teacher + student), per seed: " + "; ".join(
        f"{label} " + ", ".join(f"{r['teacher_steps']} + {r['student_steps']}" for r in runs[key])
        for key, label in (("scratch", "scratch"), ("from", "--from")))]
    md += ["", "What `fit --from` kept (held-out self-supervised loss, start vs result), per seed: "
           + "; ".join(f"teacher {k['teacher']['kept']} ({k['teacher']['start_loss']:.3f} vs "
                       f"{k['teacher']['result_loss']:.3f}), student {k['student']['kept']} "
                       f"({k['student']['start_loss']:.3f} vs {k['student']['result_loss']:.3f})" for k in kept),
           "", f"Question 2: width-48 teacher trained on sidd9's noisy images (batch 4 x 64^2, lr 3e-4), PSNR at "
           f"k_b = 3 on the centre 256^2 of each image after each chunk of steps, seeds {a.init_seeds}:", "",
           "| start | " + " | ".join(f"step {p['step']}" for p in curves["fresh"][0]["points"]) + " |",
           "|---|" + "---|" * len(curves["fresh"][0]["points"])]
    for label, rows in curves.items():
        cols = zip(*[[p["psnr"] for p in r["points"]] for r in rows])
        md.append(f"| {label} | " + " | ".join(_spread(list(c)) for c in cols) + " |")
    data = {"standin": standin, "runs": runs, "fit_choices": kept, "init_curves": curves, "noisy_psnr": noisy,
            "seeds": a.seeds, "minutes": a.minutes}
    write_results("warm_start" + ("_smoke" if a.smoke else ""), data, "\n".join(md))


if __name__ == "__main__":
    main()
