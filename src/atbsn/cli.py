"""The ``atbsn`` command line: argument parsing only; every command is one call into the Python API."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import AtbsnError


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


def _inference_args(p: argparse.ArgumentParser, k: bool = True) -> None:
    p.add_argument("--model", "-m", required=True, help="checkpoint: ours (.safetensors) or the authors' .pth")
    if k:
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

    p = sub.add_parser("info", help="print a checkpoint's configuration")
    p.add_argument("model")
    p.add_argument("--part", default="auto", choices=["auto", "student", "teacher"])
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AtbsnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # invalid k and other argument values raised by the API
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
