"""Speed of the fast networks against the layer-by-layer reference (``atbsn.reference``), in one run.

Measures this CPU's convolution ceiling (3x3, 48 -> 48 and 96 -> 96 on 4 x C x 256 x 256; NCHW fp32,
channels-last fp32, channels-last bf16), then for the teacher (k = 3) and students A, B, C at 256^2 and
1024^2: reference and fast path, fp32 and bf16, as time, GMAC/s and fraction of the channels-last fp32
ceiling (48 -> 48, as the issue defines it). Also one training step of the teacher and one distillation step
(reference: the authors' way, one full teacher pass per k; fast: one shared backbone pass), batch 2 x 128^2.

    python benchmarks/speed.py            # writes results/speed.json and results/speed.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from common import count_macs, timeit, write_results

from atbsn import ATBSN, Student
from atbsn.engine import SIDD_KS, masked_l1
from atbsn.inference import autocast
from atbsn.reference import student_reference, teacher_reference

CL = torch.channels_last


def conv_ceiling(c: int, fmt, dtype, repeat: int) -> float:
    """GMAC/s of a 3x3 convolution c -> c on 4 x c x 256 x 256."""
    x = torch.rand(4, c, 256, 256).to(dtype).contiguous(memory_format=fmt)
    w = torch.rand(c, c, 3, 3).to(dtype).contiguous(memory_format=fmt)
    macs = 4 * 256 * 256 * c * c * 9
    with torch.no_grad():
        return macs / timeit(lambda: F.conv2d(x, w, padding=1), repeat) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    a = ap.parse_args()
    torch.manual_seed(0)
    r = a.repeat
    ceiling = {
        "48 NCHW fp32": conv_ceiling(48, torch.contiguous_format, torch.float32, r),
        "48 channels-last fp32": conv_ceiling(48, CL, torch.float32, r),
        "48 channels-last bf16": conv_ceiling(48, CL, torch.bfloat16, r),
        "96 channels-last fp32": conv_ceiling(96, CL, torch.float32, r),
        "96 channels-last bf16": conv_ceiling(96, CL, torch.bfloat16, r),
    }
    ref_ceiling = ceiling["48 channels-last fp32"]
    cpu = torch.device("cpu")
    nets = {"teacher (k = 3)": ATBSN().eval(), "student A": Student("A").eval(), "student B": Student("B").eval(),
            "student C": Student("C").eval()}
    rows = []
    for size in a.sizes:
        x = torch.rand(1, 3, size, size) * 255
        xc = x.contiguous(memory_format=CL)
        for name, net in nets.items():
            teacher = net.config.is_teacher
            macs = count_macs(net, x, 3 if teacher else None)

            def ref(net=net, teacher=teacher, x=x):
                return teacher_reference(net, x, 3) if teacher else student_reference(net, x)

            def fast(net=net, teacher=teacher, xc=xc):
                return net(xc, 3) if teacher else net(xc)

            reps = 1 if size >= 1024 and teacher else r
            with torch.no_grad():
                t_ref = timeit(ref, reps)
                net.to(memory_format=CL)
                t_fast = timeit(fast, reps)
                with autocast(cpu, "bf16"):
                    t_bf16 = timeit(fast, reps)
                net.to(memory_format=torch.contiguous_format)
            for path, t in (("reference", t_ref), ("fast fp32", t_fast), ("fast bf16", t_bf16)):
                rows.append({"model": name, "size": size, "path": path, "seconds": t, "gmac": macs / 1e9,
                             "gmac_per_s": macs / t / 1e9, "of_fp32_ceiling": macs / t / 1e9 / ref_ceiling})
            print(rows[-3:], flush=True)

    # training and distillation steps, batch 2 x 128^2
    x = torch.rand(2, 3, 128, 128) * 255
    m = torch.ones(2, 1, 128, 128)
    teacher, student = ATBSN(), Student("C")
    frozen = ATBSN().eval()
    steps = {}

    def train_step(fast: bool) -> None:
        inp = x.contiguous(memory_format=CL) if fast else x
        out = teacher(inp, 9) if fast else teacher_reference(teacher, inp, 9)
        masked_l1(out, x, m).backward()

    def distill_step(fast: bool) -> None:
        with torch.no_grad():
            if fast:
                targets = frozen.teachers(x.contiguous(memory_format=CL), SIDD_KS)
            else:
                targets = [teacher_reference(frozen, x, k) for k in SIDD_KS]  # the authors' loop
        pred = student(x.contiguous(memory_format=CL)) if fast else student_reference(student, x)
        sum(masked_l1(pred, t, m) for t in targets).backward()

    for name, fn in (("teacher training step", train_step), ("distillation step (7 k)", distill_step)):
        t_ref = timeit(lambda fn=fn: fn(False), r)
        for mod in (teacher, student, frozen):
            mod.to(memory_format=CL)
        t_fast = timeit(lambda fn=fn: fn(True), r)
        for mod in (teacher, student, frozen):
            mod.to(memory_format=torch.contiguous_format)
        steps[name] = {"reference": t_ref, "fast": t_fast, "speedup": t_ref / t_fast}
        print(name, steps[name], flush=True)

    # the PSNR cost of bf16 on real noise, with the released SIDD-trained student C
    quality = {}
    shared = Path(__file__).resolve().parents[2] / "shared"
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
           "| step | reference (s) | fast (s) | speed-up |", "|---|---|---|---|"]
    md += [f"| {k} | {v['reference']:.2f} | {v['fast']:.2f} | {v['speedup']:.2f}x |" for k, v in steps.items()]
    if quality:
        md += ["", "bf16 on real noise: the released SIDD student C on `sidd9` scores "
               f"{quality['fp32']['psnr']:.3f} dB in fp32 and {quality['bf16']['psnr']:.3f} dB in bf16 "
               f"(change {quality['psnr_change_db']:+.3f} dB; {quality['fp32']['seconds_per_image']:.2f} vs "
               f"{quality['bf16']['seconds_per_image']:.2f} s per image)."]
    write_results("speed", {"ceiling_gmac_per_s": ceiling, "forward": rows, "steps": steps, "bf16_quality": quality},
                  "\n".join(md))


if __name__ == "__main__":
    main()
