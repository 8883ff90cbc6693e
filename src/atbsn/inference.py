"""Inference: ``denoise`` (numpy, any size), ``denoise_tensor`` (torch batches), ``denoise_files`` (a job).

Every model of this package takes N x C x H x W in 0..255 and returns the same. How to run it (blind-spot
size, tiles, device, precision) is one :class:`InferenceOptions`, resolved against the model once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import adapt, clips, methods
from .clips import is_clip
from .config import K_RULES, PRECISION_CHOICES, PRECISION_HELP, check_options, k_value, option
from .datasets import expand_inputs
from .deploy import engines
from .errors import AtbsnError
from .files import check_apart, check_writable
from .images import READABLE, output_suffix, read_photo, write_photo
from .measure import measure_noise
from .ranges import as_batch, from_model_range
from .runtime import autocast, log, progress_bar, resolve_device, resolve_precision
from .tiling import plan_tiles, run_tiled


@dataclass(frozen=True)
class InferenceOptions:
    """How to run a model: blind-spot size (teachers), tiles, device, precision and engine.

    ``k`` None means the network's own k_b (AT-BSN) or inference stride (AP-BSN); a non-blind network takes
    no k. ``tile`` and
    ``margin`` None are chosen per model and free memory (:func:`atbsn.tiling.plan_tiles`).
    """

    k: int | str | None = option(None, "blind-spot control of a blind-spot network: AT-BSN's size k, AP-BSN's PD "
                                 "stride, TM-BSN's hole, LG-BPN's setting (default: the one recorded for inference); "
                                 "auto: chosen per image from its measured noise, adaptive: per region by texture "
                                 "(both from one pass over every value)", low=0,
                                 aliases=lambda: methods.knob_flags(), parse=k_value)
    tile: int | None = option(None, "tile side in pixels (default: chosen from free memory)", low=32)
    margin: int | None = option(None, "context around each tile in pixels (default per model)", low=0)
    device: str | None = option("auto", "auto, cpu, cuda or cuda:N")
    precision: str = option("fp32", PRECISION_HELP, choices=PRECISION_CHOICES)
    r3: bool = option(False, "AP-BSN: random-replacing refinement (T = 8, p = 0.16; about 9x the cost)")
    ensemble: bool = option(False, "average over the 8 flips and rotations of the input (8x the cost; "
                            "Spatially-Adaptive SSL's SIDD submission)")
    engine: str = option("auto", "what runs the network on a CPU: torch, onnxruntime, openvino, or auto (the fastest "
                         "a short probe measured for this network here, remembered; PyTorch on a GPU)",
                         choices=engines.ENGINES)
    safeguard: bool | None = option(None, "blend an output toward its input when what it removed varies clearly "
                                    "more than the photo's measured noise (default: as the model records; a model "
                                    "fit made for mild noise asks for it, --no-safeguard declines)")
    keep_colour: bool | None = option(None, "put back the smooth part (over tens of pixels) of what the network "
                                      "removed, so that outputs keep the input's local mean colour (default: as the "
                                      "model records; a model fit made for mild noise asks for it, "
                                      "--no-keep-colour declines)")
    colour_guard: str | None = option(None, "bound how far each channel's mean over the image may move from the "
                                      f"input's ({adapt.COLOUR_BOUND:g} of 255): darkening (moves down only: a "
                                      "camera's noise darkens the input's mean, so a brighter output can be right), "
                                      "any (both ways), or off (default: as the model records; fit's models for "
                                      "heavy noise ask for darkening)", choices=adapt.COLOUR_GUARDS)

    @classmethod
    def of(cls, options: InferenceOptions | None = None, **overrides) -> InferenceOptions:
        """``options`` (or the defaults) with the given fields replaced; unknown names are refused."""
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown inference option(s): {', '.join(sorted(unknown))}")
        return replace(options or cls(), **overrides)

    def __post_init__(self) -> None:
        check_options(self)

    def for_model(self, model: nn.Module) -> InferenceOptions:
        """These options resolved for ``model``, once: its family's blind-spot control (none for a non-blind
        network), the refinements it accepts (R3), the device (a ``torch.device``) and the precision on it."""
        family = model.config.family
        if self.r3 and "r3" not in family.refinements:
            raise AtbsnError(f"r3 (random-replacing refinement) applies only to "
                             f"{methods.titles(lambda a: 'r3' in a.refinements)}, not to {model.config.arch}")
        onnx_file = isinstance(model, engines.OnnxNet)
        device = torch.device("cpu") if onnx_file and self.device in (None, "auto") else resolve_device(self.device)
        precision = resolve_precision(self.precision, device)  # fp16 on a CPU: one line before any work
        engines.check(model, self.engine, device, self.r3)
        recorded = model.config.training
        safeguard = bool(recorded.get("safeguard")) if self.safeguard is None else self.safeguard
        keep_colour = bool(recorded.get("keep_colour")) if self.keep_colour is None else self.keep_colour
        colour_guard = recorded.get("colour_guard", "off") if self.colour_guard is None else self.colour_guard
        return replace(self, k=resolve_k(model, self.k, rules=True), device=device, precision=precision,
                       safeguard=safeguard, keep_colour=keep_colour, colour_guard=colour_guard)


def _check_k_fits(model: nn.Module, k: int | str | None, h: int, w: int) -> None:
    """Refuse a blind-spot control the image cannot hold (an AT-BSN blind spot as large as the image)."""
    if isinstance(k, str):
        raise AtbsnError(f"k={k} works on whole images (denoise, denoise_files, evaluate), not on tensors")
    knob = model.config.family.knob
    why = knob.covers(k, h, w) if knob is not None and knob.covers is not None and k is not None else None
    if why:
        raise AtbsnError(why)


def resolve_k(model: nn.Module, k: int | str | None, rules: bool = False) -> int | str | None:
    """The blind-spot control to run ``model`` with (default the one recorded for inference), validated by its
    family's knob (an AT-BSN's k, an AP-BSN's PD stride); None for a non-blind network. ``rules``: "auto" and
    "adaptive" are accepted for a blind-spot network (per image or region, :func:`denoise` only)."""
    knob = model.config.family.knob
    if isinstance(k, str):
        if k not in K_RULES:
            raise AtbsnError(f"k={k!r}: give a number or one of {', '.join(K_RULES)}")
        if knob is None:
            raise AtbsnError(f"k={k} chooses a blind spot per image; {model.config.arch} is non-blind and has none")
        if not rules:
            raise AtbsnError(f"k={k} chooses the blind spot per image; this needs one value of {knob.name}")
        return k
    return methods.blind_spot(model.config, k)


def model_fn(model: nn.Module, k: int | None = None, r3: bool = False,
             ensemble: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function ``x -> denoised x``: a blind-spot network at its k or stride (default the recorded one,
    AP-BSN optionally with R3), or a non-blind network; with ``ensemble``, averaged over 8 flips/rotations."""
    kk = resolve_k(model, k)
    if r3:
        fn = lambda x: model(x, kk, r3=True)  # noqa: E731
    else:
        fn = model if kk is None else (lambda x: model(x, kk))
    return (lambda x: ensemble8(fn, x)) if ensemble else fn


def ensemble8(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The mean of ``fn`` over the 8 flips and rotations of ``x``, each undone (view i: flip rows if i >= 4,
    flip columns if i % 4 > 1, rotate a quarter turn if i is odd; the order of Spatially-Adaptive SSL's wrapper)."""
    outs = []
    for i in range(8):
        t = x.flip(2) if i >= 4 else x
        t = t.flip(3) if i % 4 > 1 else t
        t = torch.rot90(t, 1, (2, 3)) if i % 2 else t
        y = fn(t)
        y = torch.rot90(y, 3, (2, 3)) if i % 2 else y
        y = y.flip(3) if i % 4 > 1 else y
        outs.append(y.flip(2) if i >= 4 else y)
    return torch.stack(outs).mean(0)


def prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a model for inference: eval mode, the device, channels-last (faster convolutions)."""
    return model.eval().to(device=device, memory_format=torch.channels_last)


@torch.no_grad()
def denoise_tensor(x: torch.Tensor, model: nn.Module, options: InferenceOptions | None = None,
                   **kw) -> torch.Tensor:
    """Denoise a batch N x C x H x W of 0..255 values; returns float32 0..255 (unclipped) on x's device.

    Keyword arguments are :class:`InferenceOptions` fields (``k``, ``tile``, ``margin``, ``device``,
    ``precision``).
    """
    opts = InferenceOptions.of(options, **kw).for_model(model)
    if x.ndim != 4:
        raise AtbsnError(f"expected an N x C x H x W batch, got shape {tuple(x.shape)}")
    return _denoise_batch(x, model, opts)


def _denoise_batch(x: torch.Tensor, model: nn.Module, opts: InferenceOptions,
                   progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """``denoise_tensor`` with resolved options; gray through RGB models and colour through gray ones."""
    cin, c = model.config.in_channels, x.shape[1]
    if c != cin:
        if cin == 3 and c == 1:
            return _denoise_batch(x.expand(-1, 3, -1, -1), model, opts, progress).mean(1, keepdim=True)
        if cin == 1:
            n = x.shape[0]
            return _denoise_batch(x.reshape(n * c, 1, *x.shape[2:]), model, opts, progress).reshape(x.shape)
        raise AtbsnError(f"the model takes {cin} channels, the image has {c}")
    _check_k_fits(model, opts.k, x.shape[2], x.shape[3])
    net = engines.runner(model, opts.k, opts.engine, opts.precision, opts.device,
                         x.shape[0] * x.shape[2] * x.shape[3], opts.r3)
    return _tiled(model_fn(prepare(net, opts.device), opts.k, opts.r3, opts.ensemble), x, model, opts, progress)


def _tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, model: nn.Module, opts: InferenceOptions,
           progress: Callable[[int, int], None] | None) -> torch.Tensor:
    """``fn`` over ``x`` in the tiles planned for ``model``, each channels-last in float under the run's
    precision: the one way every inference path runs a network."""
    dev = opts.device
    ctx = autocast(dev, opts.precision)
    tile, margin = plan_tiles(model, dev, opts.tile, opts.margin)

    def run(t: torch.Tensor) -> torch.Tensor:
        with ctx:
            return fn(t.float().contiguous(memory_format=torch.channels_last))

    return run_tiled(run, x, tile, margin, device=dev, progress=progress)


def _finite(y: np.ndarray, model: nn.Module) -> np.ndarray:
    """``y``, unless the network returned NaN or infinities (broken weights): then an error, never an image."""
    if not np.isfinite(y).all():
        name = model.config.training.get("released") or f"the {model.config.arch} network"
        raise AtbsnError(f"{name} produced NaN or infinite values (broken weights?); nothing written")
    return y


def denoise(image: np.ndarray, model: nn.Module, options: InferenceOptions | None = None, *,
            progress: Callable[[int, int], None] | None = None, report: dict | None = None, **kw) -> np.ndarray:
    """Denoise one H x W (x C) image in its own dtype (uint8, uint16, float); same dtype and range back.

    Gray and RGB are denoised; an alpha channel (the last of 2 or 4) is passed through untouched.
    Keyword arguments are :class:`InferenceOptions` fields (``k=3`` for a teacher, ``k="auto"``, ``tile``,
    ...); ``progress(done, total)`` is called after each tile. ``report``, when given, receives what was done
    to the image (the k chosen, the safeguard's blend, the measured noise). A network that returns NaN or
    infinities (broken weights) is an error, never an image.
    """
    opts = InferenceOptions.of(options, **kw).for_model(model)
    t, back = _as_input(image)
    return back(_denoised(t, model, opts, progress, report if report is not None else {}))


def denoise_255(image: np.ndarray, model: nn.Module, options: InferenceOptions | None = None, **kw) -> np.ndarray:
    """:func:`denoise` for an H x W x C float array already on 0..255, values beyond it allowed (a recorrupted
    photo): no range read off the data, the same per-image rules, safeguard and colour kept; float32 back on
    0..255, unclipped. Keyword arguments are :class:`InferenceOptions` fields."""
    opts = InferenceOptions.of(options, **kw).for_model(model)
    t = torch.from_numpy(np.ascontiguousarray(np.asarray(image, np.float32).transpose(2, 0, 1)))[None]
    return _denoised(t, model, opts, None, {})


@torch.no_grad()
def _denoised(t: torch.Tensor, model: nn.Module, opts: InferenceOptions, progress, report: dict) -> np.ndarray:
    """One 1 x C x H x W batch on 0..255 as denoise runs it (resolved ``opts``): H x W x C on 0..255."""
    if isinstance(opts.k, str) or opts.safeguard or opts.keep_colour or opts.colour_guard != "off":
        return _adapted(t, model, opts, progress, report)
    return _hwc(_denoise_batch(t, model, opts, progress), model)


def _as_input(image: np.ndarray) -> tuple[torch.Tensor, Callable[[np.ndarray], np.ndarray]]:
    """An image's colour channels as a 1 x C x H x W batch in 0..255, and the function that turns an output
    (H x W x C, 0..255) back into the image's dtype, range and layout, its alpha channel put back untouched."""
    a = np.asarray(image)
    a3 = a[:, :, None] if a.ndim == 2 else a
    if a3.ndim != 3 or a3.shape[2] not in (1, 2, 3, 4):
        raise AtbsnError(f"expected an H x W x C image with C in 1..4, got shape {a.shape}")
    if a3.shape[0] == 0 or a3.shape[1] == 0:
        raise AtbsnError(f"an empty image ({a3.shape[1]} x {a3.shape[0]} pixels): nothing to denoise")
    colour, alpha = (a3[:, :, :-1], a3[:, :, -1:]) if a3.shape[2] in (2, 4) else (a3, None)
    t, factor = as_batch(colour)

    def back(y: np.ndarray) -> np.ndarray:
        out = from_model_range(y, factor, a.dtype)
        out = np.concatenate([out, alpha], axis=2) if alpha is not None else out
        return out[:, :, 0] if a.ndim == 2 else out

    return t, back


def _hwc(y: torch.Tensor, model: nn.Module) -> np.ndarray:
    """The first image of a network's output batch as H x W x C numpy, refused when not finite."""
    return _finite(y[0].permute(1, 2, 0).numpy(), model)


def _adapted(t: torch.Tensor, model: nn.Module, opts: InferenceOptions, progress, report: dict) -> np.ndarray:
    """``--k auto`` / ``adaptive`` and ``--safeguard`` on one image (1 x C x H x W, 0..255): see :mod:`atbsn.adapt`."""
    noisy = t[0].permute(1, 2, 0).numpy().astype(np.float64)
    noise = measure_noise(noisy, factor=1.0)
    report["noise"] = noise.as_dict()
    if isinstance(opts.k, str):
        outs = _every_k(t, model, opts, progress)
        y = _rule(opts.k, noisy, outs, noise, report)
    else:
        y = _hwc(_denoise_batch(t, model, opts, progress), model)
    if opts.safeguard:
        y, report["blend"] = adapt.safeguard(noisy, y, noise)
    if opts.keep_colour:
        y = adapt.keep_colour(noisy, y)
    y = adapt.guard_colour(noisy, y, opts.colour_guard)  # the last step: "off" leaves y as it is
    return y.astype(np.float32)


def _every_k(t: torch.Tensor, model: nn.Module, opts: InferenceOptions, progress) -> dict[int, np.ndarray]:
    """A blind-spot network's outputs at every value of its control that fits the image, from one pass."""
    knob = model.config.family.knob
    h, w = t.shape[2:]
    ks = sorted(k for k in {*knob.sweep, resolve_k(model, None)} if knob.covers is None or not knob.covers(k, h, w))
    return _ks_batch(t, model, ks, replace(opts, k=None, safeguard=False), progress)


def _rule(rule: str, noisy: np.ndarray, outs: dict[int, np.ndarray], noise, report: dict) -> np.ndarray:
    if rule == "auto":
        report["k"] = k = adapt.choose_k(noisy, outs, noise)
        return outs[k]
    flat, textured = (adapt.nearest(list(outs), k) for k in adapt.ADAPTIVE[:2])
    report["k"] = f"{flat} (flat) / {textured} (textured)"
    return adapt.fuse(outs, noise, flat, textured, adapt.ADAPTIVE[2])


def denoise_every_k(image: np.ndarray, model: nn.Module, options: InferenceOptions | None = None, *,
                    progress: Callable[[int, int], None] | None = None, **kw) -> dict[int | str, np.ndarray]:
    """A blind-spot network's output at every value of its control (its sweep and its default) and by each rule
    of ``--k`` ("auto", "adaptive"), all from one pass, each equal to ``denoise(image, model, k=...)`` with the
    same options, the safeguard included (the rules exactly; a fixed k up to float round-off, as
    :func:`denoise_ks`)."""
    opts = InferenceOptions.of(options, **kw, k=None).for_model(model)
    if model.config.family.knob is None:
        raise AtbsnError(f"{model.config.arch} is non-blind: it has one output, not one per blind spot")
    t, back = _as_input(image)
    noisy = t[0].permute(1, 2, 0).numpy().astype(np.float64)
    with torch.no_grad():
        outs = _every_k(t, model, opts, progress)
    noise = measure_noise(noisy, factor=1.0)
    results: dict[int | str, np.ndarray] = {**outs, **{r: _rule(r, noisy, outs, noise, {}) for r in K_RULES}}
    if opts.safeguard:
        results = {key: adapt.safeguard(noisy, y, noise)[0].astype(np.float32) for key, y in results.items()}
    return {key: back(y) for key, y in results.items()}


def _ks_batch(t: torch.Tensor, model: nn.Module, ks: list[int], opts: InferenceOptions,
              progress: Callable[[int, int], None] | None) -> dict[int, np.ndarray]:
    """The outputs (H x W x C float32, 0..255) of a 1 x C x H x W batch at every k: one backbone pass for an
    AT-BSN (``ATBSN.teachers``), one call per k otherwise."""
    if (not model.config.is_teacher or isinstance(model, engines.OnnxNet) or opts.ensemble
            or t.shape[1] != model.config.in_channels):
        return {k: _hwc(_denoise_batch(t, model, replace(opts, k=k), progress), model) for k in ks}
    ks = [resolve_k(model, k) for k in ks]
    for k in ks:
        _check_k_fits(model, k, t.shape[2], t.shape[3])
    net = prepare(model, opts.device)
    y = _hwc(_tiled(lambda w: torch.cat(net.teachers(w, ks), 1), t, model, opts, progress), model)
    c = t.shape[1]
    return {k: y[:, :, i * c:(i + 1) * c] for i, k in enumerate(ks)}


def denoise_ks(image: np.ndarray, model: nn.Module, ks: list[int], options: InferenceOptions | None = None, *,
               progress: Callable[[int, int], None] | None = None, **kw) -> dict[int, np.ndarray]:
    """``denoise(image, model, k=k)`` for every k in ``ks``. For an AT-BSN (alpha passed through, as there) the
    backbone runs once per tile for all k (``ATBSN.teachers``: equal to separate calls up to float round-off);
    otherwise one call per k. ``progress(done, total)`` is called after each tile of the one pass (or of
    each call)."""
    opts = InferenceOptions.of(options, **kw, k=None).for_model(model)  # the ks given replace any k
    if opts.safeguard:  # the safeguard measures each output: one call per k
        return {k: denoise(image, model, replace(opts, k=k), progress=progress) for k in ks}
    t, back = _as_input(image)
    with torch.no_grad():
        outs = _ks_batch(t, model, ks, opts, progress)
    return {k: back(y) for k, y in outs.items()}


BIG_IMAGE_TILES = 16  # an image with more tiles than this gets its own progress bar


def denoise_files(
    inputs: list[str | Path],
    out_dir: str | Path,
    model: nn.Module,
    options: InferenceOptions | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    on_error: Callable[[str], None] | None = None,
    video_codec: str | None = None,
    crf: int | None = None,
    **kw,
) -> tuple[list[Path], list[str]]:
    """Denoise files, folders (recursively, keeping their layout) and globs into ``out_dir``.

    Outputs keep name, format, size, bit depth, alpha, colour profile, EXIF and every page of a TIFF (what a
    format cannot hold is said on one line). Nothing is ever replaced that was not asked for: an output that
    would replace its input, or two inputs that would share an output name, are refused before any work;
    existing outputs, also ones another process writes meanwhile, are skipped unless ``overwrite``. A file
    that fails is reported (one line naming it) and the rest go on. Video clips among the inputs are denoised
    frame by frame (:func:`denoise_clip`; ``video_codec`` and ``crf`` choose their encoding). Returns (written
    files, error lines).
    """
    opts = InferenceOptions.of(options, **kw).for_model(model)  # a bad k or option fails before any work
    jobs = expand_inputs(inputs)
    if not jobs:
        raise AtbsnError(f"no image files ({READABLE}) found in {', '.join(map(str, inputs))}")
    check_apart([out_dir], [*inputs, *(src for src, _ in jobs)])  # never onto or inside what it reads
    out_root = check_writable(out_dir, folder=True)
    _refuse_collisions(jobs, out_root)
    written, errors = [], []
    for src, rel in progress_bar(jobs, desc="denoise", unit="img", show=progress):
        dst = out_root / rel.with_suffix(output_suffix(rel))  # a RAW file's output: 16-bit TIFF
        try:
            if dst.exists() and not overwrite:
                log.info("skip %s (exists; --overwrite to replace)", dst)
                continue
            if is_clip(src):
                written.append(denoise_clip(src, dst, model, opts, codec=video_codec, crf=crf, progress=progress))
                continue
            pages, info = read_photo(src)
            reports = [{} for _ in pages]
            out = [_denoise_one(page, model, opts, src, progress, r) for page, r in zip(pages, reports)]
            if reports[0]:
                log.info("%s: %s", src, "; ".join(adapt.describe(r) for r in reports))
            try:
                notes = write_photo(dst, out, info, exclusive=not overwrite)
            except FileExistsError:
                log.info("skip %s (written meanwhile by another process; --overwrite to replace)", dst)
                continue
            if notes:
                log.warning("%s: %s", dst, "; ".join(notes))
            written.append(dst)
        except AtbsnError as e:
            msg = str(e) if str(src) in str(e) else f"{src}: {e}"
            errors.append(msg)
            if on_error is not None:
                on_error(msg)
    return written, errors


def denoise_clip(src: str | Path, dst: str | Path, model: nn.Module, options: InferenceOptions | None = None, *,
                 codec: str | None = None, crf: int | None = None, progress: bool = True, **kw) -> Path:
    """Denoise a video clip frame by frame into ``dst`` (:mod:`atbsn.clips`: the input's size, frame rate,
    timestamps and audio; its codec family at a high quality, or ``codec`` / ``crf``). Each frame goes through
    :func:`denoise` (tiles, ``k`` rules, the safeguard), a chunk of frames at a time; an interrupted clip resumes
    at its last whole chunk, and ``dst`` appears only when the whole clip is written."""
    opts = InferenceOptions.of(options, **kw).for_model(model)
    src, dst = Path(src), Path(dst)
    check_apart([dst], [src])
    info = clips.probe(src)
    log.info("%s: %s", src, info.describe())

    def run(batch: list[np.ndarray]) -> list[np.ndarray]:
        return [_finite(denoise(a, model, opts), model) for a in batch]

    how = {f: getattr(opts, f) for f in ("k", "r3", "ensemble", "safeguard", "precision", "engine")}
    key = f"{engines.digest(model)}|{json.dumps(how, sort_keys=True, default=str)}"  # a resume needs the same
    with progress_bar(total=info.frames, desc=src.name, unit="frame", show=progress) as bar:
        return clips.rewrite(src, dst, run, codec=codec, crf=crf, progress=bar.update, key=key, info=info)


def _refuse_collisions(jobs: list[tuple[Path, Path]], out_root: Path) -> None:
    """Two inputs for one output name: refused before anything is written (an output onto its own input is
    refused by ``check_apart``: the output folder would hold the input)."""
    seen: dict[Path, Path] = {}
    for src, rel in jobs:
        dst = (out_root / rel.with_suffix(output_suffix(rel))).resolve()
        if dst in seen:
            raise AtbsnError(f"{seen[dst]} and {src} would both be written to {dst}; "
                             "denoise them into separate output folders")
        seen[dst] = src


def _denoise_one(page: np.ndarray, model: nn.Module, opts: InferenceOptions, src: Path, progress: bool,
                 report: dict) -> np.ndarray:
    """One page; a big one shows its own progress over tiles."""
    tile, margin = plan_tiles(model, opts.device, opts.tile, opts.margin)
    n = -(-page.shape[0] // tile) * -(-page.shape[1] // tile)
    if not progress or n <= BIG_IMAGE_TILES:
        return denoise(page, model, opts, report=report)
    with progress_bar(total=n, desc=src.name, unit="tile", leave=False) as bar:
        return denoise(page, model, opts, progress=lambda done, total: bar.update(1), report=report)
