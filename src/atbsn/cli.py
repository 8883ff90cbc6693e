"""The ``atbsn`` command line: argument parsing only; every command is one call into the Python API.

The CLI owns the process: it shows the library's INFO messages on stdout, turns :class:`AtbsnError` into
one line on stderr with exit code 2, sets the allocator (:func:`~atbsn.runtime.enable_huge_pages`) and
tears down torchrun's process group. Option flags come from the config dataclasses (``config.option``).
Each command is a handler registered with :func:`command` beside the function that declares its arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from . import __version__, methods
from .checkpoint import load
from .clips import is_clip
from .config import MINUTES_MAX, RunConfig, add_options, given, number, preset_values
from .datasets import collect_sources, load_pairs, prepare
from .demo import run_demo
from .deploy import engines
from .deploy.export import export_onnx
from .deploy.quantize import CROPS, FT_STEPS, MAX_ERROR, quantize
from .distill import distill
from .engine import saved_config
from .errors import AtbsnError
from .evaluate import TextureSplit, evaluate, format_summary, format_sweep, sweep_report, write_report
from .files import check_apart, check_writable
from .fitting import FitConfig, blind_spot_for, fit
from .images import RAW_BRIGHT, RAW_WB, RawDevelopment, is_image_file, raw_development, set_raw_development
from .inference import InferenceOptions, denoise_files, resolve_k
from .measure import measure_set
from .released import table
from .runtime import cache_dir, enable_huge_pages, leave_process_group
from .submit import sidd_protocol, submit_dnd, submit_sidd
from .train import train
from .ui import serve

Handler = Callable[[argparse.Namespace], int]
Arguments = Callable[[argparse.ArgumentParser], None]
_COMMANDS: dict[str, tuple[Arguments, bool, bool, Handler]] = {}


def command(name: str, args: Arguments, quiet: bool = False, raw: bool = False) -> Callable[[Handler], Handler]:
    """Register a handler as the sub-command ``name``. ``args`` declares its arguments (it sits just above the
    handler, and its docstring is the command's help); ``quiet``: the command takes ``-q``; ``raw``: it reads
    photos, so it takes the RAW development flags."""

    def register(func: Handler) -> Handler:
        _COMMANDS[name] = (args, quiet, raw, func)
        return func

    return register


def _model(path: str, part: str = "auto", k: int | str | None = None, rules: bool = True):
    """Load a checkpoint and check that ``k`` suits it (``rules``: --k auto / adaptive too); errors name the
    checkpoint file."""

    model = load(path, part=part)
    try:
        resolve_k(model, k, rules)
    except AtbsnError as e:
        raise AtbsnError(f"{path}: {e}") from None
    return model


def _options(a: argparse.Namespace) -> InferenceOptions:
    return InferenceOptions(**given(a, InferenceOptions))


def _inference_args(p: argparse.ArgumentParser, names: list[str] | None = None) -> None:
    p.add_argument("--model", "-m", required=True,
                   help="checkpoint (ours or the authors' .pth) or a released model's name (atbsn models)")
    add_options(p, InferenceOptions, names)


def _raw_args(p: argparse.ArgumentParser) -> None:
    """How camera RAW files are developed before anything else (the one definition of these flags)."""
    d = RawDevelopment()
    p.add_argument("--raw-wb", choices=RAW_WB, default=d.wb,
                   help="RAW files: the camera's white balance (default) or LibRaw's automatic one")
    p.add_argument("--raw-bright", type=number(float, *RAW_BRIGHT), default=d.bright,
                   help="RAW files: scale the developed photo's brightness (default 1: no automatic brightening)")
    p.add_argument("--raw-half", action="store_true",
                   help="RAW files: half size (one pixel per 2 x 2 sensor cell; 4x fewer pixels, no demosaicing)")


def _quiet(p: argparse.ArgumentParser) -> None:
    """``-q``: no progress bars (the one definition of the flag)."""
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _report(msg: str) -> None:
    """An error line on stderr that does not land inside a progress bar's line."""

    tqdm.write(f"error: {msg}", file=sys.stderr)


def _denoise_args(p: argparse.ArgumentParser) -> None:
    """Denoise photos and video clips: files, folders or globs."""
    p.add_argument("inputs", nargs="+", help="photos or clips: files, folders (recursive) or glob patterns")
    p.add_argument("-o", "--output", required=True, help="output folder (never the input's own folder)")
    _inference_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--video-codec", help="clips: the encoder (default: the input's family at a high quality: "
                                         "libx264, libx265, libvpx-vp9, ffv1 lossless)")
    p.add_argument("--crf", type=number(int, 0, 63), help="clips: the encoder's constant quality (lower: better)")
    p.add_argument("-v", "--verbose", action="store_true", help="say what --engine auto runs the network through, "
                                                                  "and why (int8 where the CPU has VNNI and atbsn "
                                                                  "quantize made the file)")


@command("denoise", _denoise_args, quiet=True, raw=True)
def cmd_denoise(a: argparse.Namespace) -> int:

    check_apart([a.output], [a.model])  # the photos: denoise_files checks them, for Python callers too
    model = _model(a.model, k=a.k)
    if a.verbose:
        engine = a.engine or InferenceOptions().engine
        print(f"engine: {engines.explain(model, a.k) if engine == 'auto' else engine + ' (--engine)'}")
    written, errors = denoise_files(
        a.inputs, a.output, model, _options(a), overwrite=a.overwrite, progress=not a.quiet,
        on_error=_report, video_codec=a.video_codec, crf=a.crf,
    )
    print(f"denoised {len(written)} file(s) into {a.output}" + (f", {len(errors)} failed" if errors else ""))
    return 1 if errors else 0


def _split(a: argparse.Namespace, pairs):
    """The flat/textured split the user asked for (``--texture-groups``), else None."""

    return TextureSplit.of(pairs, a.group_crop, a.texture_threshold) if a.texture_groups else None


def _group_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--texture-groups", action="store_true",
                   help="also score flat and textured regions apart (local std of the clean image, 7x7)")
    p.add_argument("--group-crop", type=number(int, 8), help="regions: crops of this side instead of whole images")
    p.add_argument("--texture-threshold", type=number(float, 0),
                   help="texture measure splitting the groups (default: median)")


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    """PSNR/SSIM against clean references."""
    p.add_argument("data", help="folder of pairs (pairs.csv or noisy/ + clean/) or SIDD validation .mat")
    _inference_args(p)
    p.add_argument("-o", "--output", help="folder for per_image.csv and summary.json")
    p.add_argument("--save-images", help="folder to write the denoised images to")
    p.add_argument("--limit", type=number(int, 1), help="only the first N pairs")
    _group_args(p)


@command("evaluate", _evaluate_args, quiet=True, raw=True)
def cmd_evaluate(a: argparse.Namespace) -> int:

    check_apart([a.output, a.save_images], [a.data, a.model])
    for folder in (a.output, a.save_images):
        if folder:
            check_writable(folder, folder=True)  # before the work, not after it

    model = _model(a.model, k=a.k)
    pairs = load_pairs(a.data, a.limit)
    rows, summary = evaluate(model, pairs, _options(a), save_dir=a.save_images, progress=not a.quiet,
                             split=_split(a, pairs))
    print(format_summary(summary))
    for group, g in summary.get("groups", {}).items():
        if "psnr" in g:
            print(f"  {group:>8}: {g['regions']} region(s)   PSNR {g['psnr']:.2f} dB   SSIM-RGB {g['ssim_rgb']:.4f}   "
                  f"SSIM-Y {g['ssim_y']:.4f}")
    if a.output:
        csv_path, json_path = write_report(rows, summary, a.output)
        print(f"per-image scores: {csv_path}\nsummary: {json_path}")
    return 0


def _sweep_args(p: argparse.ArgumentParser) -> None:
    """Score blind-spot networks at several inference blind spots (AT-BSN's k_b, AP-BSN's PD stride)."""
    p.add_argument("data", help="folder of pairs or SIDD validation .mat")
    p.add_argument("--model", "-m", nargs="+", required=True, help="one or more teachers (several: k_a x k_b heatmap)")
    p.add_argument("--k", *methods.knob_flags(), type=number(int, 0), nargs="+",
                   help="values of the networks' blind-spot control (default: their own sweep; "
                        + "; ".join(f"{a.title}: {a.knob.name} {' '.join(map(str, a.knob.sweep))}"
                                    for a in methods.archs().values() if a.knob) + ")")
    add_options(p, InferenceOptions, ["tile", "margin", "device", "precision"])
    p.add_argument("--k-train", type=number(int, 1), help="label for teachers whose checkpoint does not record k_a")
    p.add_argument("-o", "--output", default="sweep", help="folder for sweep.json and the plots")
    p.add_argument("--crops", action="store_true", help="also write the same crop at each k (crops.png)")
    p.add_argument("--crop-size", type=number(int, 8), default=96, help="side of the crops (--crops)")
    p.add_argument("--limit", type=number(int, 1), help="only the first N pairs")
    _group_args(p)


@command("sweep", _sweep_args)
def cmd_sweep(a: argparse.Namespace) -> int:

    check_apart([a.output], [a.data, *a.model])
    check_writable(a.output, folder=True)

    teachers = [_model(m, part="teacher") for m in a.model]
    labels = [f"{t.config.knob}_a = {t.config.k_train or a.k_train}" if (t.config.k_train or a.k_train)
              else Path(m).stem for m, t in zip(a.model, teachers)]
    ks = a.k  # None: the networks' own sweep values
    pairs = load_pairs(a.data, a.limit)
    report = sweep_report(teachers, pairs, a.output, ks, _options(a), labels=labels,
                          crop_size=a.crop_size if a.crops else None, split=_split(a, pairs))
    print(format_sweep(report["rows"], report["noisy_psnr"]))
    for name, path in report["paths"].items():
        print(f"{name}: {path}")
    return 0


def _submit_args(p: argparse.ArgumentParser) -> None:
    """Write a SIDD or DND benchmark submission."""
    p.add_argument("benchmark", choices=["sidd", "dnd"])
    p.add_argument("data", help="sidd: BenchmarkNoisyBlocksSrgb.mat; dnd: the folder with info.mat and images_srgb/")
    p.add_argument("-o", "--output", help="sidd: SubmitSrgb.csv (or .mat for the legacy format); dnd: a folder")
    _inference_args(p)


@command("submit", _submit_args, quiet=True)
def cmd_submit(a: argparse.Namespace) -> int:

    check_apart([a.output or ("SubmitSrgb.csv" if a.benchmark == "sidd" else None)], [a.data, a.model])
    if a.benchmark == "sidd" or a.output:
        check_writable(a.output or "SubmitSrgb.csv", folder=a.benchmark == "dnd")

    model = _model(a.model, k=a.k)
    kw = given(a, InferenceOptions)
    if a.benchmark == "sidd":
        out = a.output or "SubmitSrgb.csv"
        print(f"wrote {submit_sidd(a.data, out, model, progress=not a.quiet, **kw)}: for {sidd_protocol(out)}")
    else:
        if not a.output:
            raise AtbsnError("submit dnd needs -o OUTDIR for the per-image .mat files")
        files = submit_dnd(a.data, a.output, model, progress=not a.quiet, **kw)
        print(f"wrote {len(files)} files into {a.output}")
    return 0


def _export_args(p: argparse.ArgumentParser) -> None:
    """Export to ONNX (dynamic height and width), checked with onnxruntime."""
    _inference_args(p, ["k"])
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")


@command("export", _export_args)
def cmd_export(a: argparse.Namespace) -> int:

    check_apart([a.output], [a.model])
    check_writable(a.output)

    model = _model(a.model, k=a.k, rules=False)
    err = export_onnx(model, a.output, k=a.k)
    print(f"wrote {a.output} (dynamic height and width; onnxruntime vs PyTorch max difference {err:.2g} on 0..255)")
    return 0


def _quantize_args(p: argparse.ArgumentParser) -> None:
    """An int8 model for the CPU, calibrated on noisy photos (no clean image)."""
    p.add_argument("photos", nargs="+", help="noisy photos like the ones to denoise (files, folders, globs)")
    _inference_args(p, ["k"])
    p.add_argument("-o", "--output", required=True, help="the int8 model to write (.onnx is added if missing)")
    p.add_argument("--max-error", type=number(float, 0.001), default=MAX_ERROR,
                   help="largest RMS difference from the fp32 network on the photos, on 0..255; the most sensitive "
                        f"convolutions stay in fp32 until it holds (default {MAX_ERROR}: released C102 lost 0.02 dB "
                        "on sidd9)")
    p.add_argument("--crops", type=number(int, 1), default=CROPS, help=f"calibration crops of 256^2 (default {CROPS})")
    p.add_argument("--finetune-steps", type=number(int, 0), default=FT_STEPS,
                   help="steps of quantization-aware fine-tuning against the fp32 network on the photos, where "
                        f"int8 everywhere is above --max-error (default {FT_STEPS}: none; 200 is a start)")
    p.add_argument("--all-int8", action="store_true",
                   help="every convolution in int8, fine-tuned once, whatever --max-error says (the fastest file)")


@command("quantize", _quantize_args, quiet=True, raw=True)
def cmd_quantize(a: argparse.Namespace) -> int:

    out = Path(a.output if a.output.lower().endswith(".onnx") else a.output + ".onnx")
    check_apart([out], [a.model, *a.photos])
    check_writable(out)

    model = _model(a.model, k=a.k, rules=False)
    q = quantize(model, a.photos, out, k=a.k, max_error=a.max_error, crops=a.crops, finetune_steps=a.finetune_steps,
                 all_int8=a.all_int8, progress=not a.quiet)
    q = q["quantization"]
    tuned = f", {q['rms_error_before_finetuning']:.3f} before fine-tuning" if q["finetune_steps"] else ""
    print(f"wrote {out}: {q['int8_convs']} of {q['convs']} convolutions in int8, RMS error against fp32 "
          f"{q['rms_error_vs_fp32']:.3f} on 0..255{tuned} (runs on {', '.join(q['runs_on'])})")
    return 0


def _run_config(a: argparse.Namespace, task: str) -> RunConfig:
    """The run's configuration: preset, then the options given. On ``--resume``, the saved run's options
    take the place of the preset, and any option given must agree with them (the trainer checks)."""

    overrides = {**given(a, RunConfig), "data": a.data, "out": a.output}
    overrides.pop("preset", None)  # the preset is an argument of its own below, not an override
    if getattr(a, "teacher", None):
        overrides["teacher"] = a.teacher
    saved = saved_config(a.output) if a.resume else None
    if saved is None:
        return RunConfig.from_preset(task, a.preset, **overrides)
    values = asdict(saved)
    values.update(preset_values(task, a.preset, values["method"]) if a.preset else {})
    values.update(overrides, preset=a.preset or values["preset"])
    return RunConfig(**values)


def _train_args(p: argparse.ArgumentParser) -> None:
    """Train the AT-BSN teacher (or a rival method) on noisy images, self-supervised."""
    _training_args(p, ["method", "width", "k_train", "k_infer"])


@command("train", _train_args, quiet=True, raw=True)
def cmd_train(a: argparse.Namespace) -> int:

    return _exit_code(train(_run_config(a, "train"), resume=a.resume, stop_after=a.stop_after, progress=not a.quiet))


def _distill_args(p: argparse.ArgumentParser) -> None:
    """Distill a non-blind student from a trained teacher."""
    _training_args(p, ["student", "ks", "loss", "texture_threshold", "nlm_h", "nlm_weight", "bm3d_sigma",
                        "bm3d_weight", "init_from_teacher", "cache_targets"])
    p.add_argument("--teacher", help="teacher checkpoint (ours or the authors') or a released name; on --resume, "
                                     "the run's own (give it again if the file moved)")


@command("distill", _distill_args, quiet=True, raw=True)
def cmd_distill(a: argparse.Namespace) -> int:

    return _exit_code(distill(_run_config(a, "distill"), resume=a.resume, stop_after=a.stop_after,
                              progress=not a.quiet))


def _exit_code(summary: dict) -> int:
    """0 for a run that finished or stopped where --stop-after said, 130 for one interrupted (Ctrl-C, SIGTERM)."""
    return 130 if summary.get("interrupted") else 0


_SHARED_RUN_OPTIONS = ["preset", "steps", "batch", "crop", "lr", "seed", "val", "val_limit", "val_every",
                       "save_every", "log", "device", "precision", "on_bad_file", "cache_gb", "workers"]


def _training_args(p: argparse.ArgumentParser, task_options: list[str]) -> None:
    p.add_argument("data", nargs="+", help="folders of noisy photos, SIDD Medium, DND, or image files")
    p.add_argument("-o", "--output", required=True, help="run folder (checkpoints, logs, resume state)")
    add_options(p, RunConfig, _SHARED_RUN_OPTIONS + task_options)
    p.add_argument("--resume", action="store_true", help="continue the run in -o exactly where it stopped")
    p.add_argument("--stop-after", type=number(int, 1), help="stop (resumably) after N more steps")


def _prepare_args(p: argparse.ArgumentParser) -> None:
    """Decode training photos once into a memory-mapped store (fast data loading)."""
    p.add_argument("data", nargs="+", help="folders of noisy photos, SIDD Medium, DND, or image files")
    p.add_argument("-o", "--output", required=True, help="the store folder (give it to train/distill as data)")


@command("prepare", _prepare_args, quiet=True, raw=True)
def cmd_prepare(a: argparse.Namespace) -> int:

    check_apart([a.output], a.data)
    check_writable(a.output, folder=True)
    out = prepare(a.data, a.output, progress=not a.quiet)
    print(f"prepared store in {out}: train on it with atbsn train {out} ...")
    return 0


def _fit_args(p: argparse.ArgumentParser) -> None:
    """Train a teacher and distill a student from a folder of noisy photos."""
    p.add_argument("photos", nargs="+", help="folders or files of noisy photos (no clean images needed)")
    p.add_argument("-o", "--output", required=True, help="the model file to write (.safetensors)")
    add_options(p, FitConfig)


@command("fit", _fit_args, quiet=True, raw=True)
def cmd_fit(a: argparse.Namespace) -> int:

    check_writable(a.output)

    fit(a.photos, a.output, FitConfig(**given(a, FitConfig)), progress=not a.quiet)
    return 0


def _demo_args(p: argparse.ArgumentParser) -> None:
    """The whole method on bundled sample photos with simulated camera noise."""
    p.add_argument("-o", "--output", default="demo", help="folder for images, model, table and picture")
    p.add_argument("--minutes", type=number(float, 0.1, MINUTES_MAX), default=None,
                   help="train for a time budget instead of the demo's fixed recipe in steps (the result then "
                        "depends on the CPU's speed)")
    p.add_argument("--noise", default="phone-night", help="simulated noise level (see atbsn.noise.LEVELS)")
    p.add_argument("--device", default="auto")


@command("demo", _demo_args, quiet=True)
def cmd_demo(a: argparse.Namespace) -> int:

    budget = {"minutes": a.minutes} if a.minutes is not None else {}
    summary = run_demo(a.output, level=a.noise, progress=not a.quiet, device=a.device, **budget)
    return 0 if summary["student_gain_db"] > 0 else 1


def _info_args(p: argparse.ArgumentParser) -> None:
    """Print a checkpoint's configuration, or the noise measured in photos."""
    p.add_argument("model", nargs="+", metavar="MODEL_OR_PHOTOS",
                   help="a checkpoint or released name; or photos and folders: their noise level and how far it "
                        "reaches in pixels (measured in their flattest areas, no clean image needed)")
    p.add_argument("--part", default="auto", choices=["auto", "student", "teacher"])


@command("info", _info_args, raw=True)
def cmd_info(a: argparse.Namespace) -> int:

    if len(a.model) == 1 and not _photos(a.model[0]):
        model = _model(a.model[0], a.part)
        n = sum(p.numel() for p in model.parameters())
        engine = {"cpu_engine": engines.explain(model)}  # what --engine auto runs it through here, and why
        print(json.dumps({"parameters": n, **asdict(model.config), **engine}, indent=2))
        return 0
    not_photos = [m for m in a.model if not _photos(m)]
    if not_photos:
        raise AtbsnError(f"{not_photos[0]}: not a photo or a folder of photos (give one checkpoint, or photos)")
    sources = collect_sources(a.model)
    whole, each = measure_set(src.load() for src in sources)
    for src, e in zip(sources, each):
        print(f"{src.path}{f' (sampled frame {src.frame + 1})' if src.kind == 'video' else ''}: {e.describe()}")
    print(f"all {len(sources)} photo(s), median: {whole.describe()}")
    rule, why = blind_spot_for(whole)
    print(f"fit would train k_a = {rule['k_train']} (k_b = {rule['k_infer']}"
          f"{', with the safeguard' if rule['safeguard'] else ''}): {why}")
    return 0


def _photos(path: str) -> bool:
    p = Path(path)
    return p.is_dir() or (p.is_file() and (is_image_file(p) or is_clip(p)))


def _models_args(p: argparse.ArgumentParser) -> None:
    """List the released models atbsn can fetch by name."""
    p.add_argument("-v", "--verbose", action="store_true", help="also the download address and licence")


@command("models", _models_args)
def cmd_models(a: argparse.Namespace) -> int:

    rows = table()
    print(f"{'name':<18} {'kind':<8} {'cached':<6} what / trained on / reported by its authors")
    for r in rows:
        print(f"{r['name']:<18} {r['kind']:<8} {'yes' if r['cached'] else 'no':<6} {r['what']}")
        print(f"{'':<34} trained on {r['trained_on']}; reported: {r['reported'] or 'not stated'}")
        if a.verbose:
            print(f"{'':<34} {r['url']}\n{'':<34} licence: {r['licence']}")
    print(f"cache: {cache_dir()} (ATBSN_HOME)")
    return 0


def _ui_args(p: argparse.ArgumentParser) -> None:
    """A local web page: upload photos, compare input and output, move the blind spot."""
    p.add_argument("--model", "-m", help="model chosen when the page opens (a released name or a checkpoint)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: the network)")
    p.add_argument("--port", type=number(int, 0, 65535), default=7860, help="port (0: any free one)")
    p.add_argument("--no-token", action="store_true",
                   help="no token in the page's address (the Host and Origin checks stay; any program on this machine "
                        "can then use the page)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    add_options(p, InferenceOptions, ["tile", "margin", "device", "precision"])


@command("ui", _ui_args, raw=True)
def cmd_ui(a: argparse.Namespace) -> int:

    try:
        serve(a.model, a.host, a.port, open_browser=a.open, options=_options(a), token=not a.no_token)
    except KeyboardInterrupt:
        print("atbsn ui: stopped")
    return 0


_ORDER = ("fit", "denoise", "info", "models", "ui", "demo", "train", "distill", "prepare", "evaluate", "sweep",
          "submit", "export", "quantize")  # as --help lists them


def build_parser() -> argparse.ArgumentParser:
    """The parser: one sub-command per :func:`command`, in the order of ``_ORDER``."""

    parser = _Parser(prog="atbsn", description="Self-supervised real-world sRGB denoising with AT-BSN (CVPR 2024).")
    parser.add_argument("--version", action="version", version=f"atbsn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _ORDER:
        add_args, quiet, raw, func = _COMMANDS[name]
        p = sub.add_parser(name, help=(add_args.__doc__ or "").strip().rstrip("."))
        add_args(p)
        if quiet:
            _quiet(p)
        if raw:
            _raw_args(p)
        p.set_defaults(func=func)
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake on the command line reported on one line (as every other error is)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


class _Stdout(logging.Handler):
    """The library's messages on whatever ``sys.stdout`` is when they are emitted."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), flush=True)


def main(argv: list[str] | None = None) -> int:

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a mistake already reported on one line
        return int(e.code or 0)
    lib_log, handler = logging.getLogger("atbsn"), _Stdout()
    lib_log.addHandler(handler)
    level = lib_log.level
    lib_log.setLevel(logging.INFO)  # setLevel, not the attribute: it clears the logger's cached level checks
    ok, development = False, raw_development()
    try:
        if hasattr(args, "raw_wb"):  # the command reads photos: RAW files are developed as its flags say
            set_raw_development(RawDevelopment(args.raw_wb, args.raw_bright, args.raw_half))
        code = int(args.func(args) or 0)
        ok = True
        return code
    except AtbsnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        set_raw_development(development)
        leave_process_group(ok)
        lib_log.removeHandler(handler)
        lib_log.setLevel(level)


def entry() -> None:
    """The ``atbsn`` command (and ``python -m atbsn``): ``main()``, then exit with its code.

    Launched by torchrun (WORLD_SIZE > 1), the process ends with ``os._exit``: with the process group
    already torn down by ``main`` and every output written and closed, interpreter teardown has nothing
    left to do, but in it some distributed C++ thread was still joinable now and then and aborted the
    process ("terminate called without an active exception", about 1 run in 20 of a 2-process CPU run
    on a loaded machine).
    """

    enable_huge_pages()  # this process is ours: large buffers on huge pages (see runtime)
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
