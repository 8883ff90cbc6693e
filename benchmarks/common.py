"""Shared by the benchmark scripts: timing, machine description, writing results with their command, the real
sets and fit's recipes scored one point at a time. No script imports another: what two scripts share lives here."""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

import atbsn
from atbsn import classical
from atbsn.adapt import fuse, safeguard
from atbsn.checkpoint import load
from atbsn.config import SIDD_KS, RunConfig
from atbsn.datasets import Pair, load_pairs
from atbsn.demo import sample_pairs
from atbsn.evaluate import evaluate, score_outputs
from atbsn.files import write_text
from atbsn.fitting import FitConfig, fit
from atbsn.images import write_image
from atbsn.inference import denoise_ks
from atbsn.measure import measure_noise
from atbsn.metrics import psnr, ssim_rgb
from atbsn.released import cached_path

atbsn.enable_huge_pages()  # a benchmark owns its process, as the atbsn command does (read at the first allocation)

RESULTS = Path(__file__).resolve().parent / "results"
# The project's test data and weights, beside the checkout (never copied into it); REAL: the real-noise sets.
SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL = SHARED / "data" / "real"


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        # the ISA cap (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 takes an AVX2 machine's kernels)
        "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"),
        "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "native_bf16": atbsn.runtime.native_bf16(torch.device("cpu")),
    }


# The device benchmarks run on: ``--device`` of a script sets it, child processes inherit it.
DEVICE = torch.device(os.environ.get("ATBSN_BENCH_DEVICE", "cpu"))


def use_device(name: str) -> torch.device:
    """Set the benchmark device (inherited by child processes); refuses CUDA where there is none."""
    global DEVICE
    if name.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"--device {name}: no CUDA device visible here")
    os.environ["ATBSN_BENCH_DEVICE"] = name
    DEVICE = torch.device(name)
    return DEVICE


def sync() -> None:
    """Wait for queued GPU work, so that a wall-clock time covers it (nothing to wait for on a CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def timeit(fn, repeat: int = 3, warmup: int = 1) -> float:
    """Best-of-``repeat`` wall time of ``fn()`` in seconds, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def count_macs(model, x: torch.Tensor, k: int | None = None) -> float:
    """Multiply-accumulates of the convolutions and matrix products (LG-BPN's attention) in one forward (torch's
    FLOP counter / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x, k) if k is not None else model(x)
    conv = {"convolution", "_convolution", "conv2d", "cudnn_convolution", "mkldnn_convolution", "mm", "bmm", "addmm",
            "baddbmm"}
    flops = sum(v for op, v in counter.get_flop_counts()["Global"].items() if str(op).split(".")[1] in conv)
    return flops / 2


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])


def strict_json(value: object) -> object:
    """``value`` with every NaN or infinity replaced by None: JSON has no NaN (it marks "not applicable" here)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def spread(values: list[float], digits: int = 2, single: str = "") -> str:
    """``mean +- sd`` (sample standard deviation) of ``values``; one value is written with ``single`` after it."""
    if not values:
        return "-"
    mean = f"{np.mean(values):.{digits}f}"
    return mean + (f" +- {np.std(values, ddof=1):.{digits}f}" if len(values) > 1 else single)


def paired_verdict(a: dict[int, float], b: dict[int, float], min_seeds: int = 3) -> tuple[str, str]:
    """Whether a > b, from the differences of two rows paired by seed (seeds only one row has are left out).

    The claim holds (or its opposite is seen) when the mean difference exceeds twice the sample standard
    deviation of the differences over at least ``min_seeds`` seeds; otherwise it cannot be told apart from
    run-to-run noise. Returns (the difference as text, the verdict)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return "-", "not run yet"
    d = np.array([a[s] - b[s] for s in seeds], dtype=float)
    mean = float(d.mean())
    if len(seeds) < min_seeds:
        return f"{mean:+.2f} ({len(seeds)} seed{'s' * (len(seeds) > 1)})", f"undecided: fewer than {min_seeds} seeds"
    sd = float(d.std(ddof=1))
    text = f"{mean:+.2f} +- {sd:.2f} ({len(seeds)} seeds)"
    if abs(mean) > 2 * sd:
        return text, "holds" if mean > 0 else "does not hold (the opposite is seen)"
    return text, "cannot be told apart from run-to-run noise"


def write_results(name: str, data: dict, markdown: str) -> None:
    """``results/<name>.json`` and ``results/<name>.md``, both naming the command that made them."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = strict_json({"command": command(), "machine": machine(), **data})
    write_text(RESULTS / f"{name}.json", json.dumps(payload, indent=2, allow_nan=False) + "\n")
    md = f"# {name}\n\nCommand: `{command()}`\n\nMachine: {json.dumps(machine())}\n\n{markdown}\n"
    write_text(RESULTS / f"{name}.md", md)
    print(md)


# ---------------------------------------------------------------------------------------------- the real sets
# name -> (folder of pairs, how many pairs a study takes: None for all)
SETS = {"sidd9": (REAL / "sidd9", None), "polyu100": (REAL / "polyu100", 20)}


# The released students the project's test data holds a copy of, by registry name (never copied into the repository)
RELEASED_COPIES = {"tmbsn-c102-sidd": "tmbsn_nbsn102_sidd.pth", "aprrd-c-sidd": "aprrd_student_c_sidd_medium.pth",
                   "aprrd-c102-sidd": "aprrd_student_c102_sidd_medium.pth"}


@contextmanager
def released_cache(names: list[str] | None = None):
    """For the block: a cache (``$ATBSN_HOME``) holding the test data's copies of the released students ``names``
    (all of them by default), as a user who downloaded them has; removed afterwards."""
    home, before = Path(tempfile.mkdtemp(prefix="atbsn-released-")), os.environ.get("ATBSN_HOME")
    os.environ["ATBSN_HOME"] = str(home)
    try:
        for name in names or RELEASED_COPIES:
            src = SHARED / "fixtures" / "pretrained" / RELEASED_COPIES[name]
            if src.exists():
                shutil.copyfile(src, cached_path(name))
        yield home
    finally:
        if before is None:
            del os.environ["ATBSN_HOME"]
        else:
            os.environ["ATBSN_HOME"] = before
        shutil.rmtree(home, ignore_errors=True)


def train_set(pairs, folder: Path) -> list[str]:
    """The noisy images of the set, written as PNG files to train on (no clean image is ever used)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for p in pairs:
        path = folder / f"{p.name}.png"
        if not path.exists():
            write_image(path, p.noisy)
        paths.append(str(path))
    return paths


def open_set(name: str, prefix: str, smoke: bool = False) -> tuple[list, str, Path, list[str]]:
    """A real set for a benchmark: its pairs, the results tag, the work folder ``work_<prefix>_<tag>`` and
    the noisy images to train on (shared by every benchmark of the set); exits with one line if absent."""
    root, limit = SETS[name]
    if not root.exists():
        sys.exit(f"{root} not found: this benchmark needs the project's test data beside the repository")
    pairs = load_pairs(root, limit)
    tag = name + ("_smoke" if smoke else "")
    return pairs, tag, RESULTS / f"work_{prefix}_{tag}", train_set(pairs, RESULTS / f"work_{name}" / "noisy")


def run_to_end(fn, config: RunConfig) -> Path:
    """``train`` or ``distill`` run to its last step (resumed if a sitting was cut short); the last weights."""
    out = Path(config.out)
    done = out / "summary.json"
    if not (done.exists() and json.loads(done.read_text()).get("finished")):
        summary = fn(config, resume=(out / "state.pt").exists(), progress=False)
        if not summary["finished"]:  # stopped by a signal: resumable, but nothing later may use it
            sys.exit(f"{out}: stopped at step {summary['step']}; run the same command again to resume")
    return out / "last.safetensors"


# ------------------------------------------------------------------------------ fit's recipes, one point each
# The recipes, as FitConfig fields. "old" is the default before issue 18, frozen here; "new" is the default
# now (an empty override): the "new" rows kept in results/work_recipe were made before the partition loss became
# the default (issue 42), with the mean of k = 0 and 1, which "mean01" makes now. The rest are the search's
# variants, kept so that each row can be rerun.
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
    # issue 42: the demo's recipe for detail (SSIM on luma), the student's targets
    "bf16-ka5-b4-ks0": {"precision": "bf16", "k_train": 5, "batch": 4, "ks": [0]},
    "bf16-ka5-b4-part30": {"precision": "bf16", "k_train": 5, "batch": 4, "ks": [3, 0], "loss": "partition"},
    "fp32-ka5-b4-part30": {"precision": "fp32", "k_train": 5, "batch": 4, "ks": [3, 0], "loss": "partition"},
    "bf16-ka5-b4-part10": {"precision": "bf16", "k_train": 5, "batch": 4, "ks": [1, 0], "loss": "partition"},
    "bf16-ka5-b4-multi": {"precision": "bf16", "k_train": 5, "batch": 4, "loss": "multi"},
    # issue 42: fit's defaults with the partition loss (k_b on flat areas, 0 on textured ones), and the default
    # before it (the mean of k = 0 and 1 everywhere)
    "part": {"loss": "partition"},
    "mean01": {"loss": "mean", "ks": [0, 1]},
    # issue 42, item 2: NLM at 1.5x the measured noise as a teacher beside the blind-spot ones (nlm_teacher.py)
    "part-nlm50": {"loss": "partition", "nlm_weight": 0.5},
    "nlm100": {"nlm_weight": 1.0},  # NLM alone: whatever the blind-spot targets are
    # issue 42, item 2: BM3D at rule.BM3D_STRENGTH x the measured noise as the classical teacher instead
    "plain": {"bm3d_weight": 0.0},  # no classical teacher, whatever fit would choose by itself
    "bm3d50": {"bm3d_weight": 0.5},
    "bm3d100": {"bm3d_weight": 1.0},
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
# (and their first four photos: a fit whose classical teacher, BM3D, takes a minute a photo; fit_targets.py)
SPLITS = {"polyu100-tune": ("polyu100", 0, None), "polyu100-held": ("polyu100", 1, None),
          "polyu100-tune4": ("polyu100", 0, 4), "polyu100-held4": ("polyu100", 1, 4)}
WORK = RESULTS / "work_recipe"
WORK_STEPS = RESULTS / "work_recipe_steps"
ISA_KEYS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "native_bf16")


def set_pairs(name: str) -> list[Pair]:
    if name == "demo":
        return [Pair(n, noisy, clean) for n, noisy, clean in sample_pairs()]
    if name in SPLITS:
        base, offset, limit = SPLITS[name]
        return load_pairs(SETS[base][0], None)[offset::2][:limit]
    root, limit = SETS[name]
    if not root.exists():
        raise SystemExit(f"{root} not found: this benchmark needs the project's test data beside the repository")
    return load_pairs(root, limit)


def costly_photos(pairs: list, n: int) -> list[int]:
    """The indices of the ``n`` smallest photos (by pixels, the first where sizes tie), in the set's order: where
    the costly rivals (BM3D, ZS-N2N) run."""
    return sorted(sorted(range(len(pairs)), key=lambda i: pairs[i].noisy.shape[0] * pairs[i].noisy.shape[1])[:n])


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
    # fit's own student: the released students a cache may hold (fit_start.py makes one) are not weighed
    cfg = FitConfig(**{**RECIPES[recipe], **budget, "seed": seed, "device": "cpu", "fitted_only": True})
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


# ------------------------------------------------------------------ a teacher's outputs at every k, per image
ADAPT_KS = list(SIDD_KS)
FUSIONS = [(f, t, s) for f, t in ((3, 0), (3, 1), (5, 1)) for s in (0.5, 1.0)]  # (flat k, textured k, scale)


def rgb_scores(out: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    """PSNR and SSIM (RGB), the package's conventions (SSIM on luma is left out: it doubles the time)."""
    return {"psnr": psnr(out, clean), "ssim_rgb": ssim_rgb(out, clean)}


def u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def every_k_row(teacher, pair) -> dict:
    """One image through a teacher at every k of ``ADAPT_KS`` (one pass): scores, blind-spot loss, the safeguard's
    blend and the fused outputs; what ``adapt.py`` and ``fit_rule.py`` cache per image."""
    noisy, clean = pair.noisy, pair.clean
    x = noisy.astype(np.float64)
    outs = {k: v.astype(np.float64) for k, v in denoise_ks(noisy, teacher, ADAPT_KS).items()}  # uint8 outputs
    noise = measure_noise(noisy)
    row = {"noise": noise.as_dict(), "input": rgb_scores(noisy, clean), "k": {}, "fused": {}}
    for k, y in outs.items():
        row["k"][k] = {**rgb_scores(u8(y), clean), "loss": float(np.mean((x - y) ** 2))}
        guarded, a = safeguard(x, y, noise, keep=1.0)  # always the blend: any other keep is read off it
        row["k"][k]["guarded 1 1"] = {**rgb_scores(u8(guarded), clean), "blend": a}
    for f, t, s in FUSIONS:
        row["fused"][f"{f},{t},{s}"] = rgb_scores(u8(fuse(outs, noise, f, t, s)), clean)
    return row



def auto_k(row: dict, factor: float) -> int:
    """``--k auto`` on a cached row: the least blind-spot loss among k > factor x the noise's reach."""
    reach = row["noise"]["reach"]
    safe = [k for k in ADAPT_KS if k > factor * reach] or ADAPT_KS
    return min(safe, key=lambda k: (row["k"][k]["loss"], k))


def guard(scored: dict, keep: float) -> dict:
    """An output's scores after the safeguard that keeps it whole from blend weight ``keep``."""
    g = scored["guarded 1 1"]
    return scored if g["blend"] >= keep else g

