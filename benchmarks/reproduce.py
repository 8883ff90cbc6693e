"""The paper's claims at CPU scale, in its fully self-supervised protocol: train on the noisy images of a
real set, score against the set's clean references.

One configuration (``CONFIG``) is shared by every learned variant. From one command per set:

    python benchmarks/reproduce.py sidd9       # ../shared/data/real/sidd9, heavy smartphone noise
    python benchmarks/reproduce.py polyu100    # ../shared/data/real/polyu100 (first 20 pairs), mild DSLR noise

it trains a k_a = 9 teacher and a k = 1 teacher (the pixel-independent assumption of Noise2Void / Laine et
al.), distills students C and A (multi-teacher) and C (mean-teacher), scores all of them with the k_b sweep
and the teacher ensemble, the classical baselines (BM3D, non-local means), and measures parameters, MACs at
512 x 512 and CPU time per megapixel. Results: ``results/reproduce_<set>.json`` / ``.md`` and pictures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, SETS, count_macs, run_to_end, timeit, train_set, write_results

from atbsn import ATBSN, Student, classical
from atbsn.checkpoint import load
from atbsn.config import SIDD_KS, RunConfig
from atbsn.datasets import load_pairs
from atbsn.distill import distill
from atbsn.evaluate import evaluate
from atbsn.inference import denoise, denoise_tensor, prepare
from atbsn.metrics import scores
from atbsn.plots import image_strip, plot_sweep
from atbsn.ranges import from_model_range, to_model_range
from atbsn.tiling import plan_tiles, run_tiled
from atbsn.train import train

CONFIG = {"width": 16, "crop": 64, "batch": 8, "teacher_steps": 2000, "student_steps": 1000, "lr": 1e-3, "seed": 0}
KS = SIDD_KS


def _mean_scores(outputs, pairs) -> dict:
    """Mean PSNR/SSIM of outputs (uint8 images, or float arrays already on the 0..255 scale)."""
    rows = [scores(o if o.dtype != np.uint8 else o.astype(np.float32), to_model_range(p.clean)[0])
            for o, p in zip(outputs, pairs)]
    return {m: float(np.mean([r[m] for r in rows])) for m in rows[0]}


def _sweep_outputs(teacher, pairs, ks) -> dict[int, list[np.ndarray]]:
    """``denoise(noisy, teacher, k)`` for every k, from one backbone pass per tile (``teachers()``)."""
    cpu = torch.device("cpu")
    tile, margin = plan_tiles(teacher, cpu)
    net = prepare(teacher, cpu)
    outs: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    for p in pairs:
        x = torch.from_numpy(np.ascontiguousarray(to_model_range(p.noisy)[0].transpose(2, 0, 1)))[None]
        with torch.no_grad():
            y = run_tiled(lambda t: torch.cat(net.teachers(t.contiguous(memory_format=torch.channels_last), ks), 1),
                          x, tile, margin)
        for i, k in enumerate(ks):
            outs[k].append(from_model_range(y[0, 3 * i : 3 * i + 3].permute(1, 2, 0).numpy(), 1.0, np.uint8))
    return outs


def _bm3d(noisy: np.ndarray) -> np.ndarray:
    return classical.bm3d(noisy, classical.noise_sigma(noisy))  # the noise level estimated, as a user must


def _nlm(noisy: np.ndarray) -> np.ndarray:
    from skimage.restoration import denoise_nl_means, estimate_sigma

    z = noisy.astype(np.float64) / 255.0
    sigma = float(estimate_sigma(z, channel_axis=-1, average_sigmas=True))
    out = denoise_nl_means(z, h=0.8 * sigma, sigma=sigma, fast_mode=True, patch_size=5, patch_distance=6,
                           channel_axis=-1)
    return np.clip(out * 255.0, 0, 255)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("set", choices=list(SETS))
    ap.add_argument("--work", default=None, help="folder for runs (default results/work_<set>)")
    ap.add_argument("--smoke", action="store_true", help="2 steps per run, results named *_smoke (a dry run)")
    a = ap.parse_args()
    root, limit = SETS[a.set]
    if not root.exists():
        sys.exit(f"{root} not found: this benchmark needs the project's test data beside the repository")
    torch.manual_seed(0)
    pairs = load_pairs(root, limit)
    work = Path(a.work) if a.work else RESULTS / f"work_{a.set}"
    data = train_set(pairs, work / "noisy")
    c = {**CONFIG, "teacher_steps": 2, "student_steps": 2} if a.smoke else CONFIG
    tag = f"{a.set}_smoke" if a.smoke else a.set
    if a.smoke:
        work = work.with_name(work.name + "_smoke")
    common = {"data": data, "batch": c["batch"], "crop": c["crop"], "lr": c["lr"], "seed": c["seed"],
              "val_every": 10**9, "save_every": 250}
    t0 = time.perf_counter()
    timings = {}

    def timed(name, fn, cfg):
        t = time.perf_counter()
        path = run_to_end(fn, cfg)
        timings[name] = time.perf_counter() - t
        print(f"{name}: {timings[name]:.0f} s", flush=True)
        return path

    t9 = timed("teacher k_a=9", train, RunConfig(task="train", out=str(work / "teacher_k9"), steps=c["teacher_steps"],
                                                 width=c["width"], k_train=9, k_infer=3, **common))
    t1 = timed("teacher k_a=1", train, RunConfig(task="train", out=str(work / "teacher_k1"), steps=c["teacher_steps"],
                                                 width=c["width"], k_train=1, k_infer=1, **common))
    students = {}
    for name, kind, loss in (("student C (multi-teacher)", "C", "multi"), ("student A (multi-teacher)", "A", "multi"),
                             ("student C (mean-teacher)", "C", "mean")):
        out = work / f"student_{kind}_{loss}"
        students[name] = timed(name, distill, RunConfig(
            task="distill", out=str(out), steps=c["student_steps"], teacher=str(t9), student=kind, ks=KS, loss=loss,
            init_from_teacher=kind == "C", **common))

    rows = []
    noisy_scores = _mean_scores([p.noisy for p in pairs], pairs)
    rows.append({"method": "noisy input", **noisy_scores})
    teacher9, teacher1 = load(t9), load(t1)
    outputs_by_k = _sweep_outputs(teacher9, pairs, KS)
    sweep = [{"teacher": 0, "k_a": 9, "k_b": k, **_mean_scores(outputs_by_k[k], pairs)} for k in KS]
    rows.append({"method": "AT-BSN k_a/k_b = 9/3 (asymmetric)", **_mean_scores(outputs_by_k[3], pairs)})
    rows.append({"method": "AT-BSN 9/9 (symmetric)", **_mean_scores(outputs_by_k[9], pairs)})
    rows.append({"method": "k = 1 network, 1/1 (pixel-independent assumption)",
                 **_mean_scores([denoise(p.noisy, teacher1, k=1) for p in pairs], pairs)})
    ensemble = [np.mean([outputs_by_k[k][i].astype(np.float32) for k in KS], axis=0) for i in range(len(pairs))]
    rows.append({"method": f"teacher ensemble (mean of k in {KS})", **_mean_scores(ensemble, pairs)})
    for name, path in students.items():
        _, s = evaluate(load(path), pairs)
        rows.append({"method": name, **{m: s[m] for m in ("psnr", "ssim_rgb", "ssim_y")}})
    rows.append({"method": "BM3D (sigma estimated)", **_mean_scores([_bm3d(p.noisy) for p in pairs], pairs)})
    rows.append({"method": "non-local means (skimage, sigma estimated)",
                 **_mean_scores([_nlm(p.noisy) for p in pairs], pairs)})

    # cost: parameters, MACs at 512 x 512 (counted), CPU seconds per megapixel
    x512 = torch.rand(1, 3, 512, 512) * 255
    img512 = (x512[0].permute(1, 2, 0).numpy()).astype(np.uint8)
    cost = []
    nets = {"AT-BSN teacher (k_b = 3)": teacher9, "student A": load(students["student A (multi-teacher)"]),
            "student B (untrained, cost only)": Student("B", width=c["width"]),
            "student C": load(students["student C (multi-teacher)"])}
    for name, net in nets.items():
        params = sum(p.numel() for p in net.parameters())
        net.eval()
        def fn(n=net):
            return denoise_tensor(x512, n, tile=512)

        macs = count_macs(net, x512, k=3 if net.config.is_teacher else None)
        secs = timeit(fn, repeat=2)
        cost.append({"method": name, "params": params, "gmac_512": macs / 1e9, "s_per_mp": secs / (512 * 512 / 1e6)})
    for name, fn in (("BM3D", _bm3d), ("non-local means", _nlm)):
        secs = timeit(lambda f=fn: f(img512), repeat=1, warmup=0)
        cost.append({"method": name, "params": 0, "gmac_512": float("nan"), "s_per_mp": secs / (512 * 512 / 1e6)})
    full = {"paper": ATBSN(), "paper student C": Student("C")}
    for name, net in full.items():
        cost.append({"method": f"{name} (width 48, for reference)", "params": sum(p.numel() for p in net.parameters()),
                     "gmac_512": count_macs(net.eval(), x512, k=3 if net.config.is_teacher else None) / 1e9,
                     "s_per_mp": float("nan")})

    # pictures
    plot_sweep(sweep, RESULTS / f"reproduce_{tag}_sweep.png", noisy_scores["psnr"])
    i = int(np.argmin([p.noisy.shape[0] * p.noisy.shape[1] for p in pairs]))
    h, w = pairs[i].noisy.shape[:2]
    s = min(128, h, w)
    crop = (slice(h // 2 - s // 2, h // 2 - s // 2 + s), slice(w // 2 - s // 2, w // 2 - s // 2 + s))
    image_strip([pairs[i].noisy[crop], *[outputs_by_k[k][i][crop] for k in KS], pairs[i].clean[crop]],
                ["noisy", *[f"k_b={k}" for k in KS], "clean"], RESULTS / f"reproduce_{tag}_crops.png")

    md = [f"Set: `{root.name}` ({len(pairs)} pairs), fully self-supervised: every network trained only on the "
          f"noisy images it is scored on. Configuration shared by all learned variants: {json.dumps(c)}; "
          f"students distilled from the k_a = 9 teacher at k in {KS}. PSNR on uint8-rounded RGB; SSIM with a "
          "Gaussian window on RGB and on Y.\n",
          "| method | PSNR (dB) | SSIM (RGB) | SSIM (Y) |", "|---|---|---|---|"]
    md += [f"| {r['method']} | {r['psnr']:.2f} | {r['ssim_rgb']:.4f} | {r['ssim_y']:.4f} |" for r in rows]
    md += ["", "k_b sweep of the k_a = 9 teacher:", "", "| k_b | " + " | ".join(str(r["k_b"]) for r in sweep) + " |",
           "|---|" + "---|" * len(sweep), "| PSNR | " + " | ".join(f"{r['psnr']:.2f}" for r in sweep) + " |",
           "", "Cost (CPU, 2 cores, fp32; MACs counted with torch's FLOP counter, convolutions only):", "",
           "| method | parameters | GMAC at 512^2 | s / MP |", "|---|---|---|---|"]
    md += [f"| {r['method']} | {r['params']:,} | {r['gmac_512']:.1f} | {r['s_per_mp']:.2f} |" for r in cost]
    md += ["", "Training time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()),
           f"Total {time.perf_counter() - t0:.0f} s."]
    write_results(f"reproduce_{tag}", {"config": c, "pairs": len(pairs), "rows": rows, "sweep": sweep,
                                         "cost": cost, "training_seconds": timings}, "\n".join(md))


if __name__ == "__main__":
    main()
