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

``--old SRC`` instead times the same steps with two checkouts (SRC, a baseline's ``src`` folder, and this one),
alternating in fresh processes per CPU kind (best of ``--rounds`` medians), beside the time the step's work takes at
the ceiling: how much faster a step could get without a faster convolution (issue 41 asks 1.5x for the teacher,
1.3x for the student, against commit bd0b1ef). The networks are built by ``RunConfig`` alone (the API both
checkouts share), with the demo's recipe written out: width 16, 4 x 64^2, k_a = 5, the student by the partition
loss at k = 3 and 0.

    git archive bd0b1ef src | tar -x -C /tmp/bd0b1ef
    python benchmarks/step_profile.py --old /tmp/bd0b1ef/src   # writes results/step_versions.json and .md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

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


def _portable(kind: str):
    """The demo's steps built by RunConfig alone (what a baseline checkout has too)."""
    from atbsn.config import RunConfig
    from atbsn.distill import distill_method
    from atbsn.methods import method as registered

    teacher = registered("atbsn").make(RunConfig(task="train", crop=64, batch=4, width=16, k_train=5))
    if kind == "teacher":
        return teacher, 64, 4
    return distill_method(RunConfig(task="distill", crop=64, batch=4, ks=[3, 0], loss="partition", student="C",
                                    init_from_teacher=True), torch.device("cpu"), teacher=teacher.model), 64, 4


def child(kind: str, portable: bool = False, full: bool = False) -> dict:
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    method, crop, batch = (_portable if portable else _method)(kind)
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
    if portable and not full:
        import atbsn

        return {"step_seconds": statistics.median(times), "atbsn": atbsn.__file__}
    teacher_times = []  # the student's step: the frozen teacher's targets alone (no gradient)
    for _ in range(10 if hasattr(method.loss, "targets") else 0):
        t0 = time.perf_counter()
        method.loss.targets(x)
        teacher_times.append(time.perf_counter() - t0)
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
            "seconds_at_ceiling": macs / ceiling / 1e9,
            "teacher_targets_seconds": statistics.median(teacher_times) if teacher_times else None,
            "profile_shares": {g: v / total for g, v in groups.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", choices=["teacher", "student"])
    ap.add_argument("--old", help="a baseline checkout's src folder: time both checkouts' steps instead")
    ap.add_argument("--rounds", type=int, default=3, help="with --old: alternating rounds")
    ap.add_argument("--portable", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--full", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.portable, a.full)))
        return
    if a.old:
        versions(a.old, a.rounds)
        return
    from common import machine, write_results

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


def versions(old: str, rounds: int) -> None:
    """Both checkouts' steps, alternating, per CPU kind, beside the step's time at the ceiling (this checkout's
    count of its multiply-accumulates and the kind's ceiling, from a profiling child)."""
    here = str(Path(__file__).resolve().parents[1] / "src")
    rows = []

    def run(kind: str, env: dict, src: str | None) -> dict:
        args = [sys.executable, __file__, "--child", kind, "--portable"] + ([] if src else ["--full"])
        env = {**os.environ, **env, **({"PYTHONPATH": src} if src else {})}
        out = json.loads(subprocess.run(args, env=env, capture_output=True, text=True, check=True)
                         .stdout.strip().splitlines()[-1])
        if src and not out["atbsn"].startswith(str(Path(src).resolve())):
            raise SystemExit(f"{src}: the child imported {out['atbsn']}")
        return out

    from common import write_results  # not at the top: a baseline checkout's child cannot import it

    for label, env in KINDS.items():
        for kind in ("teacher", "student"):
            times: dict[str, list[float]] = {"old": [], "new": []}
            for r in range(rounds):
                for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
                    times[name].append(run(kind, env, old if name == "old" else here)["step_seconds"])
            ceiling = run(kind, env, None)
            o, n = min(times["old"]), min(times["new"])
            rows.append({"cpu": label, "kind": kind, "old_seconds": o, "new_seconds": n,
                         "seconds_at_ceiling": ceiling["seconds_at_ceiling"], "times": times,
                         "teacher_targets_seconds": ceiling["teacher_targets_seconds"]})
            print(f"{label} {kind}: old {o * 1e3:.1f} ms, new {n * 1e3:.1f} ms ({o / n:.2f}x), at the ceiling "
                  f"{ceiling['seconds_at_ceiling'] * 1e3:.1f} ms", flush=True)
    md = ["# fit's training steps, two checkouts", "",
          f"Baseline: `{old}`; this checkout: `{here}`. Best of {rounds} alternating medians of 20 steps, fp32, "
          "each in a fresh process. *At the ceiling*: the step's multiply-accumulates at the speed of a large 3x3 "
          "convolution (forward + backward) on this CPU kind, measured in the same run: *most possible* is the "
          "baseline's step over that, the speed-up a step with nothing but ceiling-speed convolutions would give. "
          "*Teacher's targets*: the part of the student's step that is the frozen teacher's forward pass (no "
          "gradient), timed alone.", "",
          "| CPU kernels | step | baseline ms | this ms | baseline / this | at the ceiling ms | most possible | "
          "teacher's targets ms |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['cpu']} | {r['kind']} | {r['old_seconds'] * 1e3:.1f} | {r['new_seconds'] * 1e3:.1f} | "
                  f"{r['old_seconds'] / r['new_seconds']:.2f}x | {r['seconds_at_ceiling'] * 1e3:.1f} | "
                  f"{r['old_seconds'] / r['seconds_at_ceiling']:.2f}x | "
                  + (f"{r['teacher_targets_seconds'] * 1e3:.1f} |" if r["teacher_targets_seconds"] else "- |"))
    write_results("step_versions", {"rows": rows}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
