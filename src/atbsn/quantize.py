"""int8 models: post-training quantization calibrated on the user's own noisy photos (no clean image).

The network is exported to ONNX and quantized by ONNX Runtime's static quantizer (QDQ format: int8 weights per
output channel, uint8 activations per tensor, ranges at the 99.99th percentile of what the photos produce). A
denoiser's output is an image at 35 to 40 dB, so int8 rounding inside it shows: each convolution's own
error is measured against the fp32 output on the same photos, and the most sensitive ones stay in fp32 until
the whole network's error is within ``max_error`` (RMS, on 0..255). The file written is an ONNX model like
``atbsn export``'s, with its configuration and how it was made in its metadata; ``atbsn denoise`` takes it
like any model and runs it through OpenVINO or ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from torch import nn

from .datasets import expand_inputs
from .engines import installed, ort_runner, ov_runner
from .errors import AtbsnError
from .export import export_onnx, frozen_k, metadata, set_metadata
from .files import atomic_write, reason
from .images import read_photo
from .ranges import as_batch
from .runtime import log, progress_bar

MAX_ERROR = 0.35  # RMS difference from fp32 on 0..255: about 0.05 dB at 38 dB PSNR (MSE 10.3: 10 log10(1 + e^2/MSE))
CROPS, CROP = 24, 256
PERCENTILE = 99.99
MIN_SIDE = 32  # a calibration photo's smallest side: the exported students reflect-pad to 32


def calibration_crops(photos: Iterable[str | Path], crops: int = CROPS, crop: int = CROP, channels: int = 3,
                      seed: int = 0) -> list[np.ndarray]:
    """Up to ``crops`` windows of ``crop`` x ``crop`` (1 x C x H x W float32, 0..255) spread over the photos
    (whole photos when smaller), at positions drawn from ``seed``."""
    files = [src for src, _ in expand_inputs(list(photos))]
    if not files:
        raise AtbsnError(f"no image files (PNG, JPEG, TIFF) found in {', '.join(map(str, photos))}")
    rng = np.random.default_rng(seed)
    per = max(1, math.ceil(crops / len(files)))
    out: list[np.ndarray] = []
    for src in files[:crops]:
        image = read_photo(src)[0][0]
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


def conv_costs(model, channels: int) -> dict[str, float]:
    """Multiply-adds per input pixel of every convolution (its weights times its output's share of the input
    area): what keeping it in fp32 costs."""
    from onnx import numpy_helper

    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    side = 64
    shapes = _shapes(model, [n.output[0] for n in convs], channels, side)
    weights = {t.name: t for t in model.graph.initializer}
    out = {}
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


def quantize(model: nn.Module, photos: Iterable[str | Path], output: str | Path, k: int | None = None,
             max_error: float = MAX_ERROR, crops: int = CROPS, crop: int = CROP, progress: bool = True) -> dict:
    """Write ``model`` (a student, or a blind-spot network at ``k``) as an int8 ONNX model calibrated on ``photos``.

    Returns what was done (also stored in the file): the convolutions kept in fp32, the error measured against
    the fp32 network on the calibration crops, and the runtimes that load the file.
    """
    if not installed("onnxruntime"):
        raise AtbsnError("atbsn quantize needs onnx, onnxscript and onnxruntime: pip install 'atbsn[cpu]'")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if max_error <= 0:
        raise AtbsnError(f"--max-error must be above 0, got {max_error}")
    output = Path(output)
    k = frozen_k(model, k)
    samples = calibration_crops(photos, crops, crop, model.config.in_channels)
    with tempfile.TemporaryDirectory(prefix="atbsn-quantize-") as tmp_dir:
        tmp = Path(tmp_dir)
        fp32 = tmp / "fp32.onnx"
        export_onnx(model, fp32, k=k)
        import onnx

        c = model.config.in_channels
        m = onnx.load(str(fp32))
        del m.graph.value_info[:]  # the exporter's example shapes: the quantizer's own shape inference redoes them
        m = split_concat_convs(m, c)
        onnx.save(m, str(fp32))
        ref_run = ort_runner(fp32)
        refs = [np.clip(ref_run(x), 0, 255) for x in samples]
        cost = conv_costs(m, c)
        convs = list(cost)
        cache = tmp / "ranges.json"

        def build(nodes: list[str], name: str) -> Path:
            dst = tmp / name
            with contextlib.redirect_stdout(io.StringIO()), _quiet():
                quantize_static(
                    str(fp32), str(dst), _Reader(samples), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.Percentile, op_types_to_quantize=["Conv"],
                    nodes_to_quantize=nodes, calibration_cache_path=str(cache),
                    extra_options={"CalibPercentile": PERCENTILE})
            return dst

        try:
            quantized = list(convs)
            path = build(quantized, "int8.onnx")
            err = _rms(path, samples, refs)
            sensitivity = {}
            if err > max_error:  # each convolution's error alone, to choose what stays in fp32
                for c in progress_bar(convs, desc="quantize: error of each conv alone", unit="conv", show=progress):
                    sensitivity[c] = _rms(build([c], "one.onnx"), samples, refs)
            # errors add about in quadrature: keep in fp32 what removes the most squared error per multiply-add
            while err > max_error and quantized:
                quantized.remove(max(quantized, key=lambda n: sensitivity[n] ** 2 / cost[n]))
                path = build(quantized, "int8.onnx") if quantized else fp32
                err = _rms(path, samples, refs)
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
                "method": "onnxruntime static QDQ: int8 weights per channel, uint8 activations per tensor, "
                          f"percentile {PERCENTILE} ranges", "calibration_crops": len(samples), "crop": crop,
                "convs": len(convs), "int8_convs": len(quantized), "fp32_convs": kept,
                "int8_share_of_macs": round(sum(cost[n] for n in quantized) / sum(cost.values()), 3),
                "rms_error_vs_fp32": round(err, 4), "max_error": max_error, "runs_on": runs_on},
        }
        set_metadata(path, metadata(model, k, provenance))
        atomic_write(output, lambda t: shutil.copyfile(path, t))
    q = provenance["quantization"]
    log.info("%s: %d of %d convolutions in int8 (%.0f%% of the work; %d kept in fp32), RMS error "
             "against fp32 %.3f on 0..255 over %d calibration crops; runs on %s", output, q["int8_convs"], q["convs"],
             100 * q["int8_share_of_macs"],
             len(kept), err, len(samples),
             " and ".join(runs_on))
    return provenance


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
