"""Speed of the fast networks against the layer-by-layer reference (``atbsn.reference``), in one run
(each row in a fresh process, reference and fast path alternating inside it).

Measures this CPU's convolution ceiling (3x3, 48 -> 48 and 96 -> 96 on 4 x C x 256 x 256; NCHW fp32,
channels-last fp32, channels-last bf16), then for the teacher (k = 3) and students A, B, C at 256^2 and
1024^2: reference and fast path, fp32 and bf16, as time, GMAC/s and fraction of the channels-last fp32
ceiling (48 -> 48, as the issue defines it). Also one training step of the teacher and one distillation step
(reference: the authors' way, one full teacher pass per k; fast: one shared backbone pass), batch 2 x 128^2.

    python benchmarks/speed.py            # writes results/speed.json and results/speed.md

Like the ``atbsn`` command, this script turns on PyTorch's huge-page allocation for large tensors
(``THP_MEM_ALLOC_ENABLE=1``, :func:`atbsn.runtime.enable_huge_pages`); the reference and the fast path both run
under it, and so does the ceiling. To see what the allocator setting alone does:
``THP_MEM_ALLOC_ENABLE=0 python benchmarks/speed.py --tag nothp``.

Two more paths per forward row show what a Python user gets: ``plain model(x)``, a freshly built network
called on an ordinary NCHW tensor, and ``denoise_tensor`` on the same network (untiled).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time

import common
import torch
import torch.nn.functional as F
from common import SHARED, count_macs, sync, timeit, use_device, write_results

from atbsn import ATBSN, Student, denoise_tensor
from atbsn.config import SIDD_KS
from atbsn.losses import masked_l1
from atbsn.reference import student_reference, teacher_reference
from atbsn.runtime import autocast, enable_huge_pages

CL = torch.channels_last


def conv_ceiling(c: int, fmt, dtype, repeat: int) -> float:
    """GMAC/s of a 3x3 convolution c -> c on 4 x c x 256 x 256."""
    x = torch.rand(4, c, 256, 256, device=common.DEVICE).to(dtype).contiguous(memory_format=fmt)
    w = torch.rand(c, c, 3, 3, device=common.DEVICE).to(dtype).contiguous(memory_format=fmt)
    macs = 4 * 256 * 256 * c * c * 9
    with torch.no_grad():
        return macs / timeit(lambda: F.conv2d(x, w, padding=1), repeat) / 1e9


NETS = {"teacher (k = 3)": lambda: ATBSN(), "student A": lambda: Student("A"), "student B": lambda: Student("B"),
        "student C": lambda: Student("C")}


def alternate(fns: dict, repeat: int) -> dict:
    """Best time of each function, measured in alternating rounds so that drift hits all of them alike."""
    for fn in fns.values():
        fn()
    sync()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            best[key] = min(best[key], time.perf_counter() - t0)
    return best


def forward_rows(name: str, size: int, repeat: int, ceiling: float) -> list[dict]:
    """Reference, fast fp32 and fast bf16 forward of one network at one size (same weights)."""
    dev = common.DEVICE
    net = NETS[name]().eval().to(dev, memory_format=torch.contiguous_format)  # the reference, NCHW as written
    fast_net = copy.deepcopy(net).to(memory_format=CL)
    user_net = NETS[name]().eval().to(dev)  # as built (or loaded): the user passes NCHW tensors
    teacher = net.config.is_teacher
    x = torch.rand(1, 3, size, size, device=dev) * 255
    xc = x.contiguous(memory_format=CL)
    macs = count_macs(net, x, 3 if teacher else None)

    def ref():
        return teacher_reference(net, x, 3) if teacher else student_reference(net, x)

    def fast():
        return fast_net(xc, 3) if teacher else fast_net(xc)

    def bf16():
        with autocast(common.DEVICE, "bf16"):
            return fast()

    def plain():
        return user_net(x, 3) if teacher else user_net(x)

    def api():
        return denoise_tensor(x, user_net, tile=size, device=dev)

    with torch.no_grad():
        rounds = 4 if size >= 1024 and teacher else repeat  # a 1024^2 teacher takes seconds per call: best of 4
        t0 = time.perf_counter()
        fast()
        rounds = max(rounds, min(30, int(1.0 / (time.perf_counter() - t0))))  # short calls: more rounds
        t = alternate({"reference": ref, "fast fp32": fast, "fast bf16": bf16, "plain model(x)": plain,
                       "denoise_tensor": api}, rounds)
    return [{"model": name, "size": size, "path": path, "seconds": s, "gmac": macs / 1e9, "gmac_per_s": macs / s / 1e9,
             "of_fp32_ceiling": macs / s / 1e9 / ceiling} for path, s in t.items()]


def step_rows(repeat: int) -> dict:
    """One teacher training step and one distillation step (seven k), reference against fast, batch 2 x 128^2."""
    dev = common.DEVICE
    x = torch.rand(2, 3, 128, 128, device=dev) * 255
    xc = x.contiguous(memory_format=CL)
    m = torch.ones(2, 1, 128, 128, device=dev)
    teacher, student, frozen = (n.to(dev, memory_format=torch.contiguous_format) for n in (ATBSN(), Student("C"),
                                                                                       ATBSN().eval()))
    fast_teacher, fast_student, fast_frozen = (
        copy.deepcopy(n).to(memory_format=CL) for n in (teacher, student, frozen))

    def train_ref() -> None:
        masked_l1(teacher_reference(teacher, x, 9), x, m).backward()

    def train_fast() -> None:
        masked_l1(fast_teacher(xc, 9), x, m).backward()

    def train_bf16() -> None:
        with autocast(common.DEVICE, "bf16"):
            out = fast_teacher(xc, 9)
        masked_l1(out.float(), x, m).backward()

    def distill_ref() -> None:
        with torch.no_grad():
            targets = [teacher_reference(frozen, x, k) for k in SIDD_KS]  # the authors' loop
        sum(masked_l1(student_reference(student, x), t, m) for t in targets).backward()

    def distill_fast() -> None:
        with torch.no_grad():
            targets = fast_frozen.teachers(xc, SIDD_KS)
        sum(masked_l1(fast_student(xc), t, m) for t in targets).backward()

    def distill_bf16() -> None:
        with autocast(common.DEVICE, "bf16"):
            with torch.no_grad():
                targets = [t.float() for t in fast_frozen.teachers(xc, SIDD_KS)]
            out = fast_student(xc).float()
        sum(masked_l1(out, t, m) for t in targets).backward()

    steps = {}
    # fp32 training step: about 3x the forward's MACs (forward, input gradients, weight gradients)
    train_gmac = 3 * count_macs(teacher, x, 9) / 1e9
    for name, ref, fast, bf16 in (("teacher training step", train_ref, train_fast, train_bf16),
                                  ("distillation step (7 k)", distill_ref, distill_fast, distill_bf16)):
        t = alternate({"reference": ref, "fast": fast, "fast bf16": bf16}, 2 * repeat)
        steps[name] = {**t, "speedup": t["reference"] / t["fast"], "bf16_speedup": t["reference"] / t["fast bf16"]}
    steps["teacher training step"]["gmac"] = train_gmac
    return steps


def in_fresh_process(*args: str) -> object:
    """Run this script with ``--only ARGS`` in a new process and return what it prints last (JSON).

    Each measurement gets a fresh process: after a 1024^2 teacher has churned gigabytes, later timings in
    the same process were measured up to 1.8x slower (allocator and page state), which would blur the
    comparison. Reference and fast path of one row always share a process and alternate.
    """
    cmd = [sys.executable, __file__, "--only", *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    enable_huge_pages()
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--tag", default="", help="suffix of the results file names")
    ap.add_argument("--only", nargs="+", help=argparse.SUPPRESS)  # internal: one measurement, JSON out
    ap.add_argument("--device", default="cpu", help="cpu or cuda (children inherit it)")
    a = ap.parse_args()
    use_device(a.device)
    torch.manual_seed(0)
    r = a.repeat
    if a.only:
        if a.only[0] == "steps":
            print(json.dumps(step_rows(r)))
        else:
            print(json.dumps(forward_rows(a.only[0], int(a.only[1]), r, float(a.only[2]))))
        return
    rc = max(r, 10)  # the ceiling is one short call: more repeats for a stable best time
    ceiling = {
        "48 NCHW fp32": conv_ceiling(48, torch.contiguous_format, torch.float32, rc),
        "48 channels-last fp32": conv_ceiling(48, CL, torch.float32, rc),
        "48 channels-last bf16": conv_ceiling(48, CL, torch.bfloat16, rc),
        "96 channels-last fp32": conv_ceiling(96, CL, torch.float32, rc),
        "96 channels-last bf16": conv_ceiling(96, CL, torch.bfloat16, rc),
    }
    print(ceiling, flush=True)
    ref_ceiling = ceiling["48 channels-last fp32"]
    rows = []
    for size in a.sizes:
        for name in NETS:
            rows += in_fresh_process(name, str(size), str(ref_ceiling))
            print(rows[-5:], flush=True)
    steps = in_fresh_process("steps")
    print(steps, flush=True)

    # the PSNR cost of bf16 on real noise, with the released SIDD-trained student C
    quality = {}
    shared = SHARED
    real = shared / "fixtures" / "pretrained" / "aprrd_student_c_sidd_medium.pth"
    if real.exists():
        from atbsn.checkpoint import load
        from atbsn.evaluate import evaluate

        model = load(real)
        for precision in ("fp32", "bf16"):
            _, s = evaluate(model, shared / "data" / "real" / "sidd9", precision=precision)
            quality[precision] = {"psnr": s["psnr"], "seconds_per_image": s["seconds_per_image"]}
        quality["psnr_change_db"] = quality["bf16"]["psnr"] - quality["fp32"]["psnr"]
        print(quality, flush=True)

    md = ["Convolution ceiling, 3x3 on 4 x C x 256 x 256 (GMAC/s): "
          + ", ".join(f"{k} {v:.0f}" for k, v in ceiling.items()), "",
          f"Forward passes (batch 1, no grad). Fraction = GMAC/s over the channels-last fp32 48 -> 48 ceiling "
          f"({ref_ceiling:.0f} GMAC/s, same run).", "",
          "| model | size | path | seconds | GMAC | GMAC/s | fraction of ceiling |", "|---|---|---|---|---|---|---|"]
    md += [f"| {q['model']} | {q['size']} | {q['path']} | {q['seconds']:.3f} | {q['gmac']:.1f} | "
           f"{q['gmac_per_s']:.0f} | {q['of_fp32_ceiling']:.0%} |" for q in rows]
    md += ["", "Training steps, batch 2 x 128^2, forward + backward (reference distillation: one full teacher "
           "pass per k, as the authors' code; fast: one backbone pass, `teachers()`):", "",
           "| step | reference (s) | fast fp32 (s) | speed-up | fast bf16 autocast (s) | speed-up |",
           "|---|---|---|---|---|---|"]
    md += [f"| {k} | {v['reference']:.2f} | {v['fast']:.2f} | {v['speedup']:.2f}x | {v['fast bf16']:.2f} | "
           f"{v['bf16_speedup']:.2f}x |" for k, v in steps.items()]
    tg = steps["teacher training step"]["gmac"]
    md += ["", f"The teacher training step is about {tg:.0f} GMAC (3x its forward): "
           + ", ".join(f"{p} {tg / steps['teacher training step'][p] / ref_ceiling:.0%}" for p in ("reference", "fast"))
           + " of the fp32 ceiling."]
    by = {(q["model"], q["size"], q["path"]): q["seconds"] for q in rows}
    md += ["", "bf16 / fp32 forward speed-up (fast paths): " + ", ".join(
        f"{m} {sz}^2 {by[m, sz, 'fast fp32'] / by[m, sz, 'fast bf16']:.2f}x" for m, sz, p in by if p == "reference")
        + f"; the ceiling's own ratio is {ceiling['48 channels-last bf16'] / ref_ceiling:.2f}x."]
    if quality:
        md += ["", "bf16 on real noise: the released SIDD student C on `sidd9` scores "
               f"{quality['fp32']['psnr']:.3f} dB in fp32 and {quality['bf16']['psnr']:.3f} dB in bf16 "
               f"(change {quality['psnr_change_db']:+.3f} dB; {quality['fp32']['seconds_per_image']:.2f} vs "
               f"{quality['bf16']['seconds_per_image']:.2f} s per image)."]
    write_results("speed" + (f"_{a.tag}" if a.tag else ""),
                  {"ceiling_gmac_per_s": ceiling, "forward": rows, "steps": steps, "bf16_quality": quality},
                  "\n".join(md))


if __name__ == "__main__":
    main()
