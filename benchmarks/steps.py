"""Training iterations as the engine runs them: teacher training, distillation, and the naive distillation
that runs the teacher once per k (the authors' loop), each with its peak memory.

Every step is the real method's loss (the ``atbsn`` method's ``make`` / ``distill_method``) plus backward and an
Adam update, on the paper's recipes by default (teacher: 8 x 256^2 at k_a = 9; distillation: 8 x 128^2, seven k,
student C).
Each configuration runs in a fresh process, so its peak resident memory (ru_maxrss) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import common
import torch
from common import sync, use_device, write_results

KINDS = {
    "teacher": "teacher training step (k_a = 9)",
    "distill": "distillation step, one backbone pass (`teachers()`)",
    "naive": "distillation step, teacher once per k (naive)",
}


def child(kind: str, batch: int, crop: int, steps: int, precision: str) -> dict:
    from atbsn import ATBSN
    from atbsn.config import RunConfig
    from atbsn.distill import distill_method
    from atbsn.losses import masked_l1
    from atbsn.methods import method as registered
    from atbsn.runtime import autocast

    torch.manual_seed(0)
    dev = common.DEVICE
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if kind == "teacher":
        method = registered("atbsn").make(RunConfig(task="train", crop=crop, batch=batch))
    else:
        method = distill_method(RunConfig(task="distill", crop=crop, batch=batch), dev, teacher=ATBSN().to(dev))
    net = method.model.to(dev, memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(net.parameters(), lr=3e-4)
    x = (torch.rand(batch, 3, crop, crop, device=dev) * 255).contiguous(memory_format=torch.channels_last)
    m = torch.ones(batch, 1, crop, crop, device=dev)

    def loss() -> torch.Tensor:
        if kind != "naive":
            return method.loss(net, x, m)
        with torch.no_grad():  # the authors' loop: a full teacher forward for every k
            targets = [method.loss.teacher(x, k) for k in method.loss.ks]
        pred = net(x)
        return sum(masked_l1(pred, t, m) for t in targets)

    times = []
    for _ in range(steps + 1):  # the first step warms up and is not counted
        t0 = time.perf_counter()
        with autocast(dev, precision):
            value = loss()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        sync()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    best = min(times[1:])
    return {"kind": kind, "batch": batch, "crop": crop, "precision": precision, "seconds": best,
            "it_per_s": 1 / best, "peak_rss_bytes": peak, "rss_before_bytes": base}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--teacher-crop", type=int, default=256, help="the paper: 256")
    ap.add_argument("--distill-crop", type=int, default=128, help="the paper: 128")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per configuration (best is reported)")
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # internal: kind crop precision
    ap.add_argument("--device", default="cpu", help="cpu or cuda (peak memory: CUDA's allocator there)")
    a = ap.parse_args()
    use_device(a.device)
    if a.child:
        kind, crop, precision = a.child
        print(json.dumps(child(kind, a.batch, int(crop), a.steps, precision)))
        return
    rows = []
    for precision in a.precision:
        for kind in KINDS:
            crop = a.teacher_crop if kind == "teacher" else a.distill_crop
            cmd = [sys.executable, __file__, "--batch", str(a.batch), "--steps", str(a.steps),
                   "--child", kind, str(crop), precision]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    md = [f"Batch {a.batch}; teacher crops {a.teacher_crop}^2, distillation crops {a.distill_crop}^2 (the paper's "
          "recipes), width 48, student C, seven k; forward + backward + Adam, best of "
          f"{a.steps} steps after one warm-up; {a.device}, each configuration in a fresh process.", "",
          "| step | precision | seconds | it/s | peak RSS (GB) |", "|---|---|---|---|---|"]
    md += [f"| {KINDS[r['kind']]} | {r['precision']} | {r['seconds']:.2f} | {r['it_per_s']:.3f} | "
           f"{r['peak_rss_bytes'] / 1e9:.2f} |" for r in rows]
    by = {(r["kind"], r["precision"]): r["seconds"] for r in rows}
    for p in a.precision:
        md += ["", f"{p}: one backbone pass is {by['naive', p] / by['distill', p]:.2f}x faster than the naive loop; "
               f"a distillation step takes {by['distill', p] / by['teacher', p]:.2f} of a teacher training step "
               "(the paper, on a GPU: 11.1 against 8.3 it/s, i.e. 0.75)."]
    write_results("steps" if a.device == "cpu" else f"steps_{a.device.split(':')[0]}", {"rows": rows}, "\n".join(md))


if __name__ == "__main__":
    main()
