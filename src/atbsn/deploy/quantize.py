"""int8 models calibrated and fine-tuned on the user's own noisy photos (no clean image).

The network is exported to ONNX, its channels equalized between convolutions (:func:`equalize`), and quantized by
ONNX Runtime's static quantizer (QDQ format: int8 weights per output channel, uint8 activations per tensor at
each convolution's input, ranges at the 99.99th percentile of what the photos produce; outputs stay float). A
denoiser's output is an image at 35 to 40 dB, so int8 rounding inside it shows: on request the int8 network is
fine-tuned to match the fp32 one on the photos (:func:`finetune`, through :mod:`atbsn.deploy.qdq`), and the most
sensitive convolutions stay in fp32 until the whole network's error is within ``max_error`` (RMS, on
0..255). The file written is an ONNX model like
``atbsn export``'s, with its configuration and how it was made in its metadata; ``atbsn denoise`` takes it
like any model and runs it through OpenVINO or ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from torch import nn

from .. import clips
from ..clips import is_clip
from ..datasets import expand_inputs
from ..errors import AtbsnError
from ..files import OwnedFolder, atomic_write, check_apart, reason, source_of
from ..images import READABLE, read_photo
from ..methods import blind_spot
from ..ranges import as_batch
from ..runtime import log, progress_bar
from .engines import OnnxNet, installed, ort_runner, ov_runner, remember_int8
from .export import export_onnx, metadata, set_metadata
from .qdq import QDQGraph, UnsupportedError

# RMS difference from fp32 on 0..255. Were the int8 error independent of the network's own, e would cost
# 10 log10(1 + e^2 / MSE) dB: 0.35 would be 0.05 dB at 38 dB (MSE 10.3). It is not: it leans the way the network
# errs, and the released C102 at 0.344 on sidd9's crops lost 0.073 dB on the whole photos (1.4x the independent
# cost). 0.25 leaves that factor room: about 0.04 dB at 38 dB.
MAX_ERROR = 0.25
CROPS, CROP = 24, 256
PERCENTILE = 99.99
MIN_SIDE = 32  # a calibration photo's smallest side: the exported students reflect-pad to 32
# quantization-aware fine-tuning: steps (off by default: in one trial, student C on sidd9's folder, 200 steps took the
# all-int8 error against fp32 from 0.92 to 0.86 RMS on the whole photos but PSNR from 37.87 to 37.81 dB), crop
# side, batch, learning rate (the scales' is FT_SCALE_LR times it), rounds
FT_STEPS, FT_CROP, FT_BATCH, FT_LR, FT_SCALE_LR, FT_ROUNDS = 0, 128, 4, 1e-4, 10, 3
EQ_ALPHA, EQ_MAX_SCALE = 1.0, 32.0  # channel equalization (equalize): C's int8 error 1.18 -> 0.87 (0.5, 16: 1.00)


def _first_images(files: list[Path]):
    """Each file's first image; a clip's frames sampled over it (a folder of photos may hold clips too)."""
    for src in files:
        yield from clips.sampled(src) if is_clip(src) else [read_photo(src)[0][0]]


def calibration_crops(photos: Iterable[str | Path], crops: int = CROPS, crop: int = CROP, channels: int = 3,
                      seed: int = 0) -> list[np.ndarray]:
    """Up to ``crops`` windows of ``crop`` x ``crop`` (1 x C x H x W float32, 0..255) spread over the photos
    (whole photos when smaller), at positions drawn from ``seed``."""
    files = [src for src, _ in expand_inputs(list(photos))]
    if not files:
        raise AtbsnError(f"no image files ({READABLE}) found in {', '.join(map(str, photos))}")
    rng = np.random.default_rng(seed)
    per = max(1, math.ceil(crops / len(files)))
    out: list[np.ndarray] = []
    for image in _first_images(files[:crops]):
        a = image[:, :, None] if image.ndim == 2 else image
        a = a[:, :, :-1] if a.shape[2] in (2, 4) else a  # alpha is not denoised
        t = as_batch(a)[0]
        if t.shape[1] != channels:
            t = t.expand(-1, channels, -1, -1) if t.shape[1] == 1 else t.mean(1, keepdim=True)
        h, w = t.shape[2:]
        if min(h, w) < MIN_SIDE:
            continue
        for _ in range(per if h > crop or w > crop else 1):
            y = int(rng.integers(0, max(h - crop, 0) + 1))
            x = int(rng.integers(0, max(w - crop, 0) + 1))
            out.append(np.ascontiguousarray(t[:, :, y:y + crop, x:x + crop].numpy(), dtype=np.float32))
    if not out:
        raise AtbsnError(f"no photo of at least {MIN_SIDE} x {MIN_SIDE} pixels to calibrate on in "
                         f"{', '.join(map(str, photos))}")
    return out[:crops]


def _shapes(model, names: list[str], channels: int, side: int = 64) -> dict[str, tuple[int, ...]]:
    """The shapes of the named tensors on a ``side`` x ``side`` input, from one ONNX Runtime run (the exporter's
    shapes are symbolic)."""
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                          for n in dict.fromkeys(names) if n not in have)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = session.run(None, {session.get_inputs()[0].name: np.zeros((1, channels, side, side), np.float32)})
    return {o.name: v.shape for o, v in zip(session.get_outputs(), outs)}


def split_concat_convs(model, channels: int):
    """Rewrite every convolution of a channel concatenation as one convolution per part, summed (the same
    function): each part then gets its own int8 range (an upsampled decoder map and a skip connection, or the
    input image, have very different ones) and a cheap part (the 3-channel image) can stay in fp32."""
    import onnx
    from onnx import helper, numpy_helper

    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    users: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    splits = [n for n in g.node if n.op_type == "Conv" and n.input[0] in producer
              and producer[n.input[0]].op_type == "Concat" and users[n.input[0]] == 1
              and all(a.i == 1 for a in producer[n.input[0]].attribute if a.name == "axis")]
    if not splits:
        return model
    shapes = _shapes(model, [i for n in splits for i in producer[n.input[0]].input], channels)
    weights = {t.name: t for t in g.initializer}
    nodes, dropped = [], set()
    for n in g.node:
        if n not in splits:
            nodes.append(n)
            continue
        concat = producer[n.input[0]]
        w = numpy_helper.to_array(weights[n.input[1]])
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        parts, start = [], 0
        for j, src in enumerate(concat.input):
            c = shapes[src][1]
            name = f"{n.input[1]}.part{j}"
            g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w[:, start:start + c]), name))
            start += c
            bias = [n.input[2]] if j == 0 and len(n.input) > 2 else []
            parts.append(f"{n.output[0]}.part{j}")
            nodes.append(helper.make_node("Conv", [src, name, *bias], [parts[-1]], name=f"{n.name}.part{j}", **attrs))
        total = parts[0]
        for j, part in enumerate(parts[1:], 1):
            out = n.output[0] if j == len(parts) - 1 else f"{n.output[0]}.sum{j}"
            nodes.append(helper.make_node("Add", [total, part], [out], name=f"{n.name}.sum{j}"))
            total = out
        dropped.add(id(concat))
        if weights[n.input[1]].name not in {i for m in g.node if m is not n for i in m.input}:
            g.initializer.remove(weights[n.input[1]])
    del g.node[:]
    g.node.extend(n for n in nodes if id(n) not in dropped)
    onnx.checker.check_model(model)
    return model


def equalize(model, samples: list[np.ndarray], alpha: float = EQ_ALPHA, max_scale: float = EQ_MAX_SCALE):
    """Rescale the channels between convolutions so that one int8 range per tensor fits them all (the same
    function: LeakyReLU, max-pooling and nearest upsampling commute with a positive scale per channel).

    A feature map's channels span ranges 35x apart in the released students; one uint8 range per tensor then
    leaves the narrow channels a few levels. Channel c of a convolution's output is multiplied by
    s_c = (R / r_c) ** alpha (r_c its range on the photos, R the widest, at most ``max_scale``) and every
    convolution reading it divides that input channel's weights by s_c. ``alpha`` shares the difficulty between
    the activation and the next weights (as SmoothQuant's migration strength)."""
    import onnx
    from onnx import numpy_helper

    g = model.graph
    users: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    weights = {t.name: t for t in g.initializer}

    def readers(t: str) -> list | None:
        """The convolutions that read ``t`` through per-channel homogeneous ops; None if anything else does."""
        out = []
        for u in users.get(t, []):
            if u.op_type == "Conv" and u.input[0] == t:
                out.append(u)
            elif u.op_type in ("MaxPool", "Resize") and u.input[0] == t:
                more = readers(u.output[0])
                if more is None:
                    return None
                out += more
            else:
                return None
        return out or None

    pairs = []
    for n in g.node:
        if n.op_type != "Conv" or len(users.get(n.output[0], [])) != 1:
            continue
        act = users[n.output[0]][0]
        if act.op_type != "LeakyRelu" or n.input[1] not in weights:
            continue
        convs = readers(act.output[0])
        if convs and all(c.input[1] in weights for c in convs):
            pairs.append((n, act.output[0], convs))
    if not pairs:
        return model
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for _, t, _ in pairs)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [t for _, t, _ in pairs]
    ranges = {t: 0.0 for t in names}
    for x in samples:
        for t, a in zip(names, session.run(names, {session.get_inputs()[0].name: x})):
            lo, hi = np.percentile(a, [100 - PERCENTILE, PERCENTILE], axis=(0, 2, 3))
            ranges[t] = np.maximum(ranges[t], hi - lo)
    for conv, t, convs in pairs:
        r = np.maximum(ranges[t], 1e-8)
        s = np.clip((r.max() / r) ** alpha, 1, max_scale).astype(np.float32)
        w = numpy_helper.to_array(weights[conv.input[1]]) * s[:, None, None, None]
        weights[conv.input[1]].CopyFrom(numpy_helper.from_array(w.astype(np.float32), conv.input[1]))
        if len(conv.input) > 2 and conv.input[2] in weights:
            b = numpy_helper.to_array(weights[conv.input[2]]) * s
            weights[conv.input[2]].CopyFrom(numpy_helper.from_array(b.astype(np.float32), conv.input[2]))
        for c in {c.input[1]: c for c in convs}.values():
            w = numpy_helper.to_array(weights[c.input[1]]) / s[None, :, None, None]
            weights[c.input[1]].CopyFrom(numpy_helper.from_array(w.astype(np.float32), c.input[1]))
    return model


def conv_costs(model, channels: int, name: str = "this network") -> dict[str, float]:
    """Multiply-adds per input pixel of every convolution (its weights times its output's share of the input
    area): what keeping it in fp32 costs."""
    from onnx import numpy_helper

    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    side = 64
    shapes = _shapes(model, [n.output[0] for n in convs], channels, side)
    weights = {t.name: t for t in model.graph.initializer}
    out = {}
    computed = [n.name for n in convs if n.input[1] not in weights]
    if computed:
        raise AtbsnError(f"{name}: computes the weights of {len(computed)} convolution(s) in the graph "
                         f"({computed[0]}); int8 quantization takes networks whose weights are constants")
    for n in convs:
        w = numpy_helper.to_array(weights[n.input[1]])
        h, wd = shapes[n.output[0]][2:]
        out[n.name] = float(w.size) * h * wd / side**2
    return out


class _Reader:
    """ONNX Runtime's calibration data reader over the crops."""

    def __init__(self, samples: list[np.ndarray]) -> None:
        self.it = iter(samples)

    def get_next(self):
        x = next(self.it, None)
        return None if x is None else {"image": x}


def _rms(path: Path, samples: list[np.ndarray], refs: list[np.ndarray]) -> float:
    run = ort_runner(path, int8=True)
    err = [np.mean((np.clip(run(x), 0, 255) - r) ** 2) for x, r in zip(samples, refs)]
    return float(np.sqrt(np.mean(err)))


def finetune(int8_path: Path, fp32_model, photos: list[np.ndarray], reference, steps: int, crop: int = FT_CROP,
             batch: int = FT_BATCH, lr: float = FT_LR, seed: int = 0, progress: bool = True):
    """Quantization-aware fine-tuning of an int8 QDQ model (self-distillation: its output is trained to match the
    fp32 network's, ``reference``, on random ``crop`` windows of the noisy ``photos``; no clean image). Returns
    the int8 ModelProto with the trained weights, or None where the graph holds an operator :mod:`atbsn.deploy.qdq` does
    not run."""
    import onnx
    import torch

    try:
        net = QDQGraph(onnx.load(str(int8_path)), fp32_model)
    except UnsupportedError as e:
        log.info("quantize: no fine-tuning (%s)", e)
        return None
    gen = torch.Generator().manual_seed(seed)
    windows = [torch.from_numpy(p) for p in photos]
    crop = min(crop, *(min(w.shape[2:]) for w in windows))
    opt = torch.optim.Adam([{"params": net.weight_params()},
                            {"params": list(net.log_scales.values()), "lr": lr * FT_SCALE_LR}], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    bar = progress_bar(range(steps), desc="quantize: fine-tuning int8 against fp32", unit="step", show=progress)
    for _ in bar:
        xs = []
        for _ in range(batch):
            w = windows[int(torch.randint(len(windows), (), generator=gen))]
            y, x = (int(torch.randint(s - crop + 1, (), generator=gen)) for s in w.shape[2:])
            xs.append(w[:, :, y:y + crop, x:x + crop])
        x = torch.cat(xs)
        with torch.no_grad():
            target = torch.from_numpy(np.clip(reference(x.numpy()), 0, 255))
        loss = torch.mean((net(x).clamp(0, 255) - target) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.write()


def quantize(model: nn.Module, photos: Iterable[str | Path], output: str | Path, k: int | None = None,
             max_error: float = MAX_ERROR, crops: int = CROPS, crop: int = CROP, finetune_steps: int = FT_STEPS,
             all_int8: bool = False, progress: bool = True) -> dict:
    """Write ``model`` (a student, or a blind-spot network at ``k``) as an int8 ONNX model calibrated on ``photos``.

    Every convolution is first put in int8 and, where the error is above ``max_error``, the int8 network is
    fine-tuned for ``finetune_steps`` to match the fp32 one on the photos (:func:`finetune`); while the error is
    still above the bound, the most sensitive convolutions go back to fp32 and the rest is fine-tuned again (at
    most ``FT_ROUNDS`` times). ``all_int8`` keeps every convolution in int8 (fine-tuned once, whatever the
    error). Returns what was done (also stored
    in the file): the fine-tuning, the convolutions kept in fp32, the error measured against the fp32 network on
    the calibration crops, and the runtimes that load the file.
    """
    if not installed("onnxruntime"):
        raise AtbsnError("atbsn quantize needs onnx, onnxscript and onnxruntime: pip install 'atbsn[cpu]'")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if max_error <= 0:
        raise AtbsnError(f"--max-error must be above 0, got {max_error}")
    if finetune_steps < 0:
        raise AtbsnError(f"--finetune-steps must be 0 or more, got {finetune_steps}")
    output = Path(output)
    if isinstance(model, OnnxNet):
        raise AtbsnError(f"{model.path}: already an ONNX file; quantize takes the PyTorch checkpoint it was "
                         "written from")
    photos = list(photos)
    check_apart([output], [*photos, source_of(model)])
    k = blind_spot(model.config, k)
    samples = calibration_crops(photos, crops, crop, model.config.in_channels)
    with OwnedFolder("atbsn-quantize-") as tmp:  # a killed quantize's folder goes at the next one's start
        fp32 = tmp / "fp32.onnx"
        export_onnx(model, fp32, k=k)
        import onnx

        c = model.config.in_channels
        m = onnx.load(str(fp32))
        del m.graph.value_info[:]  # the exporter's example shapes: the quantizer's own shape inference redoes them
        m = equalize(split_concat_convs(m, c), samples)
        onnx.save(m, str(fp32))
        ref_run = ort_runner(fp32)
        refs = [np.clip(ref_run(x), 0, 255) for x in samples]
        cost = conv_costs(m, c, source_of(model) or "this network")
        convs = list(cost)
        cache = tmp / "ranges.json"

        def build(nodes: list[str], name: str) -> Path:  # the ranges are calibrated once, then read from cache
            dst = tmp / name
            with contextlib.redirect_stdout(io.StringIO()), _quiet():
                quantize_static(
                    str(fp32), str(dst), _Reader(samples), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=True,  # weights in -64..64: qdq.WEIGHT_QMAX says why
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.Percentile, op_types_to_quantize=["Conv"],
                    nodes_to_quantize=nodes, calibration_cache_path=str(cache),
                    extra_options={"CalibPercentile": PERCENTILE, "OpTypesToExcludeOutputQuantization": ["Conv"]})
            return dst

        try:
            quantized = list(convs)
            path = build(quantized, "int8.onnx")
            err = ptq_err = untuned = _rms(path, samples, refs)
            sensitivity: dict[str, float] = {}
            tuned_steps, rounds = 0, 0
            while err > max_error and quantized:
                if finetune_steps and rounds < FT_ROUNDS:
                    rounds += 1
                    tuned = finetune(path, m, samples, ref_run, finetune_steps, progress=progress)
                    if tuned is not None:
                        onnx.save(tuned, str(tmp / "tuned.onnx"))
                        if (e := _rms(tmp / "tuned.onnx", samples, refs)) < err:
                            path, err, tuned_steps = tmp / "tuned.onnx", e, finetune_steps
                    if err <= max_error:
                        break
                if all_int8:
                    break
                if not sensitivity:  # each convolution's error alone, to choose what stays in fp32
                    for c in progress_bar(convs, desc="quantize: error of each conv alone", unit="conv",
                                          show=progress):
                        sensitivity[c] = _rms(build([c], "one.onnx"), samples, refs)
                # fine-tuning divides the error by about err_untuned / err: ask the untuned one for that much less
                target = untuned * max_error / err if tuned_steps and rounds < FT_ROUNDS else max_error
                tuned_steps = 0
                # errors add about in quadrature: keep in fp32 what removes the most squared error per multiply-add
                while untuned > target and quantized:
                    quantized.remove(max(quantized, key=lambda n: sensitivity[n] ** 2 / cost[n]))
                    path = build(quantized, "int8.onnx") if quantized else fp32
                    untuned = _rms(path, samples, refs)
                err = untuned
            if not all_int8 and not tuned_steps and sensitivity:
                quantized, path, err = _refill(quantized, convs, cost, sensitivity, path, err, max_error, build,
                                                lambda p: _rms(p, samples, refs))
        except AtbsnError:
            raise
        except Exception as e:  # the quantizer's own errors
            raise AtbsnError(f"quantization failed ({reason(e, 200)})") from None
        kept = [c for c in convs if c not in quantized]
        runs_on = ["onnxruntime"] + (["openvino"] if _openvino_loads(path) else [])
        provenance = {
            "made_by": "atbsn quantize",
            "source": model.config.training.get("released") or model.config.arch,
            "quantization": {
                "method": "onnxruntime static QDQ: int8 weights per channel in -64..64, uint8 activations per tensor, "
                          f"percentile {PERCENTILE} ranges, the last convolution's output in float",
                "calibration_crops": len(samples), "crop": crop, "rms_error_before_finetuning": round(ptq_err, 4),
                "finetune_steps": tuned_steps,
                "convs": len(convs), "int8_convs": len(quantized), "fp32_convs": kept,
                "int8_share_of_macs": round(sum(cost[n] for n in quantized) / sum(cost.values()), 3),
                "rms_error_vs_fp32": round(err, 4), "max_error": None if all_int8 else max_error,
                "runs_on": runs_on},
        }
        set_metadata(path, metadata(model, k, provenance))
        atomic_write(output, lambda t: shutil.copyfile(path, t))
    remember_int8(model, k, output)  # --engine auto runs it where the CPU has VNNI
    q = provenance["quantization"]
    log.info("%s: %d of %d convolutions in int8 (%.0f%% of the work; %d kept in fp32), RMS error "
             "against fp32 %.3f on 0..255 over %d calibration crops; runs on %s", output, q["int8_convs"], q["convs"],
             100 * q["int8_share_of_macs"],
             len(kept), err, len(samples),
             " and ".join(runs_on))
    return provenance


def _refill(quantized: list[str], convs: list[str], cost: dict[str, float], sensitivity: dict[str, float],
            path: Path, err: float, bound: float, build, measure) -> tuple[list[str], Path, float]:
    """Put back into int8 what the removal took out needlessly, the costliest first, each where the network's
    error stays within ``bound``. The removal goes by squared error per multiply-add, so it may take out a costly
    convolution after cheaper ones whose removal its own then made unnecessary (released C102 on sidd9 at 0.25: 14% of
    the work in int8 before, 31% after)."""
    for i, c in enumerate(sorted((c for c in convs if c not in quantized), key=lambda c: -cost[c])):
        if math.hypot(err, sensitivity[c]) > 1.25 * bound:  # errors add about in quadrature: not worth a build
            continue
        trial = [n for n in convs if n in quantized or n == c]
        p = build(trial, f"refill{i}.onnx")
        if (e := measure(p)) <= bound:
            quantized, path, err = trial, p, e
    return quantized, path, err


def _openvino_loads(path: Path) -> bool:
    if not installed("openvino"):
        return False
    try:
        ov_runner(path)
        return True
    except Exception:  # OpenVINO's own error types: it cannot compile this graph
        return False


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's quantizer logs on the root logger (and may give it a handler): both undone afterwards."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
