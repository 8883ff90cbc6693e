"""The ``atbsn`` command line: argument parsing only; every command is one call into the Python API."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from .checkpoint import atomic_write
from .errors import AtbsnError
from .inference import to_model_range
from .metrics import psnr


def _model(path: str, part: str = "auto", k: int | None = None):
    """Load a checkpoint and check that ``k`` suits it; errors name the checkpoint file."""
    from .checkpoint import load
    from .inference import model_fn

    model = load(path, part=part)
    try:
        model_fn(model, k)
    except (ValueError, AtbsnError) as e:
        raise AtbsnError(f"{path}: {e}") from None
    return model


def _inference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", required=True, help="checkpoint: ours (.safetensors) or the authors' .pth")
    p.add_argument("--k", type=int, default=None, help="blind-spot size for a teacher (default: its k_b)")
    p.add_argument("--tile", type=int, default=None, help="tile side in pixels (default: chosen from memory)")
    p.add_argument("--margin", type=int, default=None, help="context around each tile (default per model)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])


def cmd_denoise(a: argparse.Namespace) -> int:
    from .inference import denoise_files

    model = _model(a.model, k=a.k)
    written, errors = denoise_files(
        a.inputs, a.output, model, k=a.k, tile=a.tile, margin=a.margin, device=a.device,
        precision=a.precision, overwrite=a.overwrite, progress=not a.quiet,
        on_error=lambda msg: print(f"error: {msg}", file=sys.stderr),
    )
    print(f"denoised {len(written)} image(s) into {a.output}" + (f", {len(errors)} failed" if errors else ""))
    return 1 if errors else 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from .evaluate import evaluate, format_summary, write_report

    model = _model(a.model, k=a.k)
    rows, summary = evaluate(
        model, a.data, k=a.k, tile=a.tile, device=a.device, precision=a.precision, limit=a.limit,
        save_dir=a.save_images, progress=not a.quiet,
    )
    print(format_summary(summary))
    if a.output:
        csv_path, json_path = write_report(rows, summary, a.output)
        print(f"per-image scores: {csv_path}\nsummary: {json_path}")
    return 0


def cmd_sweep(a: argparse.Namespace) -> int:
    from .datasets import load_pairs
    from .evaluate import crops_by_k, sweep
    from .plots import image_strip, plot_heatmap, plot_sweep

    teachers = [_model(m, part="teacher") for m in a.model]
    for path, t in zip(a.model, teachers):
        if t.config.k_train is None:
            t.config.k_train = a.k_train if a.k_train is not None else path  # label for the plot
    pairs = load_pairs(a.data, a.limit)
    rows = sweep(teachers, pairs, a.k, tile=a.tile, device=a.device)
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    noisy = float(np.mean([psnr(*(to_model_range(x)[0] for x in (p.noisy, p.clean))) for p in pairs]))
    print(f"{'teacher':>8} {'k_a':>6} {'k_b':>4} {'PSNR':>7} {'SSIM-RGB':>9} {'SSIM-Y':>7}   (noisy {noisy:.2f} dB)")
    for r in rows:
        print(f"{r['teacher']:>8} {str(r['k_a'])[-6:]:>6} {r['k_b']:>4} {r['psnr']:7.2f} {r['ssim_rgb']:9.4f} "
              f"{r['ssim_y']:7.4f}")
    atomic_write(out / "sweep.json", lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=2) + "\n"))
    print(f"plot: {plot_sweep(rows, out / 'sweep.png', noisy)}")
    if len(teachers) > 1:
        print(f"heatmap: {plot_heatmap(rows, out / 'heatmap.png')}")
    if a.crops:
        p = pairs[0]
        h, w = p.noisy.shape[:2]
        size = min(a.crop_size, h, w)
        box = (h // 2 - size // 2, w // 2 - size // 2, size, size)
        crops = crops_by_k(teachers[0], p.noisy, box, a.k, tile=a.tile, device=a.device)
        y, x = box[:2]
        images = [p.noisy[y : y + size, x : x + size], *crops, p.clean[y : y + size, x : x + size]]
        labels = ["noisy", *[f"k_b = {k}" for k in a.k], "clean"]
        print(f"crops: {image_strip(images, labels, out / 'crops.png')}")
    return 0


def cmd_submit(a: argparse.Namespace) -> int:
    from .submit import submit_dnd, submit_sidd

    model = _model(a.model, k=a.k)
    kw = {"k": a.k, "tile": a.tile, "device": a.device, "precision": a.precision}
    if a.benchmark == "sidd":
        out = a.output or "SubmitSrgb.csv"
        print(f"wrote {submit_sidd(a.data, out, model, progress=not a.quiet, **kw)}")
    else:
        if not a.output:
            raise AtbsnError("submit dnd needs -o OUTDIR for the per-image .mat files")
        files = submit_dnd(a.data, a.output, model, progress=not a.quiet, **kw)
        print(f"wrote {len(files)} files into {a.output}")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from .export import export_onnx

    model = _model(a.model, k=a.k)
    err = export_onnx(model, a.output, k=a.k)
    print(f"wrote {a.output} (dynamic height and width; onnxruntime vs PyTorch max difference {err:.2g} on 0..255)")
    return 0


def _run_config(a: argparse.Namespace, task: str):
    from .engine import RunConfig

    fields = ["steps", "batch", "crop", "lr", "seed", "val", "val_every", "save_every", "log", "device",
              "precision", "on_bad_file", "cache_gb", "val_limit"]
    fields += ["width", "k_train", "k_infer"] if task == "train" else ["teacher", "student", "ks", "loss"]
    overrides = {f: getattr(a, f) for f in fields}
    if task == "distill":
        overrides["init_from_teacher"] = a.init_from_teacher or None
    return RunConfig.from_preset(task, a.preset, data=a.data, out=a.output, **overrides)


def cmd_train(a: argparse.Namespace) -> int:
    from .train import train

    summary = train(_run_config(a, "train"), resume=a.resume, stop_after=a.stop_after, progress=not a.quiet)
    return 0 if summary["finished"] or a.stop_after else 130


def cmd_distill(a: argparse.Namespace) -> int:
    from .distill import distill

    summary = distill(_run_config(a, "distill"), resume=a.resume, stop_after=a.stop_after, progress=not a.quiet)
    return 0 if summary["finished"] or a.stop_after else 130


def _training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="+", help="folders of noisy photos, SIDD Medium, DND, or image files")
    p.add_argument("-o", "--output", required=True, help="run folder (checkpoints, logs, resume state)")
    p.add_argument("--preset", choices=["sidd", "dnd", "cpu"], help="sidd/dnd: the paper's recipe; cpu: minutes")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch", type=int, help="patches per step (per process under torchrun)")
    p.add_argument("--crop", type=int, help="patch side in pixels")
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--val", help="noisy/clean pairs (folder or SIDD validation .mat) for PSNR/SSIM")
    p.add_argument("--val-limit", type=int, help="validate on the first N pairs (default 16)")
    p.add_argument("--val-every", type=int)
    p.add_argument("--save-every", type=int, help="steps between resume checkpoints")
    p.add_argument("--log", choices=["csv", "tensorboard"])
    p.add_argument("--device", help="auto, cpu, cuda (torchrun assigns cuda:LOCAL_RANK)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="autocast precision (fp16: CUDA)")
    p.add_argument("--on-bad-file", choices=["fail", "skip"], help="an unreadable image stops the run or is skipped")
    p.add_argument("--cache-gb", type=float, help="memory for decoded training images (default 2)")
    p.add_argument("--resume", action="store_true", help="continue the run in -o exactly where it stopped")
    p.add_argument("--stop-after", type=int, help="stop (resumably) after N more steps")
    p.add_argument("-q", "--quiet", action="store_true")


def cmd_fit(a: argparse.Namespace) -> int:
    from .fit import FitConfig, fit

    cfg = FitConfig()
    for name in ("width", "crop", "batch", "teacher_steps", "student_steps", "student", "ks", "minutes", "seed",
                 "device", "precision", "on_bad_file"):
        value = getattr(a, name)
        if value is not None:
            setattr(cfg, name, value)
    fit(a.photos, a.output, cfg, progress=not a.quiet)
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo

    summary = run_demo(a.output, minutes=a.minutes, level=a.noise, progress=not a.quiet, device=a.device)
    return 0 if summary["student_gain_db"] > 0 else 1


def cmd_info(a: argparse.Namespace) -> int:
    model = _model(a.model, a.part)
    n = sum(p.numel() for p in model.parameters())
    from dataclasses import asdict

    print(json.dumps({"parameters": n, **asdict(model.config)}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="atbsn", description="Self-supervised real-world sRGB denoising with AT-BSN (CVPR 2024)."
    )
    parser.add_argument("--version", action="version", version=f"atbsn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("denoise", help="denoise image files, folders or globs")
    p.add_argument("inputs", nargs="+", help="image files, folders (recursive) or glob patterns")
    p.add_argument("-o", "--output", required=True, help="output folder (never the input's own folder)")
    _inference_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_denoise)

    p = sub.add_parser("evaluate", help="PSNR/SSIM against clean references")
    p.add_argument("data", help="folder of pairs (pairs.csv or noisy/ + clean/) or SIDD validation .mat")
    _inference_args(p)
    p.add_argument("-o", "--output", help="folder for per_image.csv and summary.json")
    p.add_argument("--save-images", help="folder to write the denoised images to")
    p.add_argument("--limit", type=int, help="only the first N pairs")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train the AT-BSN teacher on noisy images (self-supervised)")
    _training_args(p)
    p.add_argument("--width", type=int, help="channels of the UNet (48 in the paper)")
    p.add_argument("--k-train", type=int, help="blind-spot size k_a for training (9)")
    p.add_argument("--k-infer", type=int, help="blind-spot size k_b recorded for inference (3)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("distill", help="distill a non-blind student from a trained teacher")
    _training_args(p)
    p.add_argument("--teacher", required=True, help="teacher checkpoint (ours or the authors')")
    p.add_argument("--student", choices=["A", "B", "C"])
    p.add_argument("--ks", type=int, nargs="+", help="teacher blind-spot sizes (SIDD: 0 1 3 5 7 9 11)")
    p.add_argument("--loss", choices=["multi", "mean"], help="multi: one L1 per teacher; mean: L1 to their mean")
    p.add_argument("--init-from-teacher", action="store_true", help="start student C from the teacher's UNet")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("fit", help="train a teacher and distill a student from a folder of noisy photos")
    p.add_argument("photos", nargs="+", help="folders or files of noisy photos (no clean images needed)")
    p.add_argument("-o", "--output", required=True, help="the model file to write (.safetensors)")
    p.add_argument("--minutes", type=float, help="time budget for both phases (sets the step counts)")
    p.add_argument("--teacher-steps", type=int)
    p.add_argument("--student-steps", type=int)
    p.add_argument("--student", choices=["A", "B", "C"])
    p.add_argument("--ks", type=int, nargs="+")
    p.add_argument("--width", type=int)
    p.add_argument("--crop", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--on-bad-file", choices=["fail", "skip"])
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("demo", help="the whole method on bundled sample photos with simulated camera noise")
    p.add_argument("-o", "--output", default="demo", help="folder for images, model, table and picture")
    p.add_argument("--minutes", type=float, default=3.5, help="training budget (more minutes, better quality)")
    p.add_argument("--noise", default="phone-night", help="simulated noise level (see atbsn.noise.LEVELS)")
    p.add_argument("--device", default="auto")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sweep", help="score teachers at several inference blind-spot sizes k_b")
    p.add_argument("data", help="folder of pairs or SIDD validation .mat")
    p.add_argument("--model", "-m", nargs="+", required=True, help="one or more teachers (several: k_a x k_b heatmap)")
    p.add_argument("--k", type=int, nargs="+", default=[0, 1, 3, 5, 7, 9, 11], help="k_b values")
    p.add_argument("--k-train", type=int, help="label for teachers whose checkpoint does not record k_a")
    p.add_argument("-o", "--output", default="sweep", help="folder for sweep.json and the plots")
    p.add_argument("--crops", action="store_true", help="also write the same crop at each k (crops.png)")
    p.add_argument("--crop-size", type=int, default=96)
    p.add_argument("--tile", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--limit", type=int, help="only the first N pairs")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("submit", help="write a SIDD or DND benchmark submission")
    p.add_argument("benchmark", choices=["sidd", "dnd"])
    p.add_argument("data", help="sidd: BenchmarkNoisyBlocksSrgb.mat; dnd: the folder with info.mat and images_srgb/")
    p.add_argument("-o", "--output", help="sidd: SubmitSrgb.csv (or .mat for the legacy format); dnd: a folder")
    _inference_args(p)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("export", help="export to ONNX (dynamic height and width), checked with onnxruntime")
    p.add_argument("--model", "-m", required=True)
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--k", type=int, default=None, help="blind-spot size frozen into a teacher's graph")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("info", help="print a checkpoint's configuration")
    p.add_argument("model")
    p.add_argument("--part", default="auto", choices=["auto", "student", "teacher"])
    p.set_defaults(func=cmd_info)
    return parser


def _leave_process_group(ok: bool) -> None:
    """Wait for every rank, then tear down the torchrun process group (gloo or NCCL)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if ok:
            dist.barrier()  # no rank leaves while another still talks to it
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    ok = False
    try:
        code = int(args.func(args) or 0)
        ok = True
        return code
    except AtbsnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # invalid k and other argument values raised by the API
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        _leave_process_group(ok)


def entry() -> None:
    """The ``atbsn`` command (and ``python -m atbsn``): ``main()``, then exit with its code.

    Launched by torchrun (WORLD_SIZE > 1), the process ends with ``os._exit``: with the process group
    already torn down by ``main`` and every output written and closed, interpreter teardown has nothing
    left to do, but in it some distributed C++ thread was still joinable now and then and aborted the
    process ("terminate called without an active exception", about 1 run in 20 of a 2-process CPU run
    on a loaded machine).
    """
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
