"""Where a training step of ``fit`` spends its time, against this machine's convolution ceiling, per CPU kind.

The demo's recipe (teacher: AT-BSN width 16, batch 4, 64^2 crops, k_a = 5; student C distilled at k = 0 and 1
from it), fp32, one step = the method's loss + backward + Adam, as ``fit`` runs it. For each CPU kind (this
machine's own kernels, then ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` and ``ATEN_CPU_CAPABILITY=avx512
ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI``, each in a fresh process):

- the median step time over 20 steps (after 5 warm-up steps);
- the step's multiply-accumulates (forward and backward, torch's FLOP counter / 2) and the time they would take
  at the ceiling: a large 3x3 convolution's forward + backward (4 x 48 x 256^2, 48 -> 48, channels-last), the
  fastest this machine runs convolutions through PyTorch;
- the profiler's self time per kind of operation (convolutions forward and backward, activations, copies and
  fills, pooling and upsampling, the optimizer, the rest).

    python benchmarks/step_profile.py          # writes results/step_profile.json and .md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from common import machine, write_results

KINDS = {"native": {}, "AVX2 cap": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
         "AVX-512, no bf16 (cap)": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}}
GROUPS = {  # profiler op name -> group
    "aten::mkldnn_convolution": "conv forward", "aten::convolution_backward": "conv backward",
    "aten::leaky_relu": "activations", "aten::leaky_relu_": "activations", "aten::leaky_relu_backward": "activations",
    **{f"aten::{op}": "copies, pads, cats" for op in ("copy_", "cat", "fill_", "flip", "constant_pad_nd", "clone",
                                                      "zero_")},
    "aten::max_pool2d_with_indices": "pool, upsample", "aten::max_pool2d_with_indices_backward": "pool, upsample",
    "aten::upsample_nearest2d": "pool, upsample", "aten::upsample_nearest2d_backward": "pool, upsample",
}


def _ceiling() -> float:
    """GMAC/s of a large 3x3 convolution, forward + backward (input and weight gradients)."""
    x = torch.rand(4, 48, 256, 256).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    w = torch.rand(48, 48, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_(True)

    def step() -> None:
        F.conv2d(x, w, padding=1).sum().backward()

    for _ in range(2):
        step()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
    return 3 * 4 * 256 * 256 * 48 * 48 * 9 / best / 1e9  # forward, input gradient, weight gradient


def _method(kind: str):
    from atbsn.config import RunConfig
    from atbsn.demo import RECIPE
    from atbsn.distill import distill_method
    from atbsn.fitting import FitConfig
    from atbsn.methods import method as registered

    fit = FitConfig(**{k: v for k, v in RECIPE.items() if k in ("k_train", "batch")})
    crop, batch, width = fit.crop, fit.batch, fit.width
    teacher = registered("atbsn").make(RunConfig(task="train", crop=crop, batch=batch, width=width,
                                                 k_train=fit.k_train or 5))
    if kind == "teacher":
        return teacher, crop, batch
    student = distill_method(RunConfig(task="distill", crop=crop, batch=batch, ks=list(fit.ks or [0, 1]),
                                       loss=fit.loss or "mean", student="C", init_from_teacher=True),
                             torch.device("cpu"), teacher=teacher.model)
    return student, crop, batch


def child(kind: str) -> dict:
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    method, crop, batch = _method(kind)
    net = method.model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = (torch.rand(batch, 3, crop, crop) * 255).contiguous(memory_format=torch.channels_last)
    mask = torch.ones(batch, 1, crop, crop)

    def step() -> None:
        loss = method.loss(net, x, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    macs = counter.get_total_flops() / 2
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            step()
    groups: dict[str, float] = {}
    for e in prof.key_averages():
        if e.key.startswith(("ProfilerStep", "Optimizer.")) or e.key.startswith("autograd::"):
            group = "optimizer" if e.key.startswith("Optimizer.") else None
        else:
            group = GROUPS.get(e.key, "other")
        if group:
            groups[group] = groups.get(group, 0.0) + e.self_cpu_time_total / 1e6
    total = sum(groups.values())
    ceiling = _ceiling()
    return {"kind": kind, "step_seconds": statistics.median(times), "macs": macs, "ceiling_gmac_per_s": ceiling,
            "seconds_at_ceiling": macs / ceiling / 1e9, "profile_shares": {g: v / total for g, v in groups.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", choices=["teacher", "student"])
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child)))
        return
    rows = []
    for label, env in KINDS.items():
        for kind in ("teacher", "student"):
            out = subprocess.run([sys.executable, __file__, "--child", kind], env={**os.environ, **env},
                                 capture_output=True, text=True, check=True)
            row = {"cpu": label, **json.loads(out.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(f"{label} {kind}: {row['step_seconds'] * 1000:.1f} ms a step, "
                  f"{row['step_seconds'] / row['seconds_at_ceiling']:.2f}x the convolution ceiling", flush=True)
    groups = sorted({g for r in rows for g in r["profile_shares"]})
    md = ["# Where fit's training step spends its time", "",
          f"Command: `python benchmarks/step_profile.py`. Machine: {json.dumps(machine())}", "",
          "The demo's recipe in fp32 (teacher: width 16, 4 x 64^2, k_a = 5; student C at k = 0 and 1). *At the "
          "ceiling*: the step's multiply-accumulates (forward + backward) at the speed of a large 3x3 convolution's "
          "forward + backward on this CPU kind. Shares: the profiler's self time.", "",
          "| CPU kernels | step | ms a step | GMAC a step | ceiling GMAC/s | ms at the ceiling | step / ceiling | "
          + " | ".join(groups) + " |",
          "|---|---|---|---|---|---|---|" + "---|" * len(groups)]
    for r in rows:
        md.append(f"| {r['cpu']} | {r['kind']} | {r['step_seconds'] * 1000:.1f} | {r['macs'] / 1e9:.2f} | "
                  f"{r['ceiling_gmac_per_s']:.0f} | {r['seconds_at_ceiling'] * 1000:.1f} | "
                  f"{r['step_seconds'] / r['seconds_at_ceiling']:.2f}x | "
                  + " | ".join(f"{r['profile_shares'].get(g, 0) * 100:.0f}%" for g in groups) + " |")
    write_results("step_profile", {"rows": rows}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
