"""An int8 QDQ ONNX model run in PyTorch, with its weights trainable: quantization-aware fine-tuning.

ONNX Runtime's static quantizer writes a graph where every quantized tensor passes through a QuantizeLinear /
DequantizeLinear pair and every convolution reads int8 weights (per output channel, symmetric, 7 bits: scale =
max|w| / WEIGHT_QMAX) and an int32 bias (scale = input scale x weight scale). :class:`QDQGraph` executes that graph
with PyTorch ops, rounding where the int8 runtimes round (round half to even, then clamp), and keeps the fp32
weights and the activation scales as parameters: a straight-through estimator carries the gradient past each
rounding (for a scale it is then the gradient of learned step size quantization, Esser et al. 2020). Training it to
match the fp32 network's output on the user's noisy photos (self-distillation, no clean image) moves the weights to
where int8 rounding costs least; :meth:`QDQGraph.write` stores them back into the int8 model, quantized the same
way. The zero points stay those the quantizer calibrated.

Only the operators atbsn's exported students use are implemented; any other raises :class:`UnsupportedError`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WEIGHT_QMAX = 64
"""Weights are quantized to -64..64 (ONNX Runtime's ``reduce_range``), not -127..127: CPUs without VNNI multiply
uint8 activations by int8 weights with an instruction (``vpmaddubsw``) that adds two products in int16 and
saturates above 32767; 255 x 64 x 2 stays below it, so the file computes the same on every CPU. Measured before
this choice: an int8 student whose error ONNX Runtime measured at 0.38 (on 0..255) gave 1.05 through OpenVINO on
an AVX2 CPU (tests/test_quantize.py)."""


class UnsupportedError(Exception):
    """The graph holds an operator this runner does not implement."""


def _round(x: torch.Tensor) -> torch.Tensor:
    """Round half to even in the forward pass, identity in the backward one."""
    return x + (torch.round(x) - x).detach()


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """QuantizeLinear then DequantizeLinear (``scale`` and ``zero`` broadcast over ``x``); the gradient passes
    where ``x`` was in range."""
    q = _round(x / scale) + zero
    return (torch.clamp(q, lo, hi) - zero) * scale


def weight_scale(w: torch.Tensor) -> torch.Tensor:
    """Per output channel, symmetric (ONNX Runtime's rule): max |w| / WEIGHT_QMAX, never 0."""
    absmax = w.detach().abs().flatten(1).amax(1)
    return torch.where(absmax > 0, absmax / WEIGHT_QMAX, torch.ones_like(absmax))


def weight_levels(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A conv weight's int8 levels (float, straight-through gradient) and per-channel scales: what the file
    stores, and what the forward pass multiplies back."""
    s = weight_scale(w)
    return torch.clamp(_round(w / s[:, None, None, None]), -WEIGHT_QMAX, WEIGHT_QMAX), s


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class QDQGraph(nn.Module):
    """The int8 model ``qdq`` (a ModelProto from ``quantize_static``, QDQ format) as a PyTorch module whose conv
    weights are the fp32 ones of ``fp32`` (the model it was quantized from), trainable."""

    def __init__(self, qdq, fp32) -> None:
        super().__init__()
        from onnx import numpy_helper

        self.model = qdq
        g = qdq.graph
        self.consts = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in g.initializer}
        fp = {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer}
        producer = {o: n for n in g.node for o in n.output}
        self.params = nn.ParameterDict()
        self.names: dict[str, str] = {}  # parameter key -> ONNX name of the fp32 tensor
        self.convs: dict[str, dict] = {}  # conv output -> its weight, bias and input scale
        skip: set[int] = set()
        for n in g.node:
            if n.op_type != "Conv" or len(n.input) < 2:
                continue
            spec: dict = {"attrs": _attrs(n), "scale_in": None}
            for role, name in (("w", n.input[1]), ("b", n.input[2] if len(n.input) > 2 else "")):
                src = producer.get(name)
                if src is not None and src.op_type == "DequantizeLinear" and src.input[0] in self.consts:
                    original = src.input[0].removesuffix("_quantized")
                    if original not in fp:
                        raise UnsupportedError(f"no fp32 tensor {original} for {src.input[0]}")
                    skip.add(id(src))
                    key = original.replace(".", "_")
                    self.names[key] = original
                    self.params[key] = nn.Parameter(torch.from_numpy(fp[original].copy()))
                    spec[role], spec[role + "_q"] = key, True
                elif name in self.consts:
                    spec[role], spec[role + "_q"] = name, False
                else:
                    spec[role] = None if role == "b" and not name else name
                    spec[role + "_q"] = False
            x_src = producer.get(n.input[0])
            if x_src is not None and x_src.op_type == "DequantizeLinear":
                spec["scale_in"] = x_src.input[1]
            if spec.get("b_q") and spec["scale_in"] is None:
                raise UnsupportedError(f"conv {n.name}: an int8 bias without an int8 input")
            self.convs[n.output[0]] = spec
        self.nodes = [n for n in g.node if id(n) not in skip]
        # every activation's scale, trainable through the logarithm of its change (an Adam step is a relative one)
        self.log_scales = nn.ParameterDict()
        self._scale_key: dict[str, str] = {}  # the graph's name of a scale -> its parameter's key
        for n in self.nodes:
            if n.op_type == "QuantizeLinear" and n.input[1] not in self._scale_key:
                self._scale_key[n.input[1]] = key = f"s{len(self._scale_key)}"
                self.log_scales[key] = nn.Parameter(torch.zeros(()))  # log of the change from the calibrated one
        for n in self.nodes:
            if n.op_type not in _OPS and n.op_type not in ("Conv", "QuantizeLinear", "DequantizeLinear"):
                raise UnsupportedError(f"operator {n.op_type}")
            src = producer.get(n.input[0])
            if n.op_type == "DequantizeLinear" and (src is None or src.op_type != "QuantizeLinear"):
                raise UnsupportedError(f"{n.input[0]}: a quantized constant that is not a conv weight or bias")
        self.input = g.input[0].name
        self.output = g.output[0].name

    def scale(self, name: str) -> torch.Tensor:
        """The activation scale stored under ``name`` in the graph, as trained."""
        return self.consts[name] * torch.exp(self.log_scales[self._scale_key[name]])

    def weight_params(self) -> list[nn.Parameter]:
        return list(self.params.values())

    def _weight(self, spec: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = self.params[spec["w"]] if spec["w_q"] else self.consts[spec["w"]]
        b = None
        if spec["b"] is not None:
            b = self.params[spec["b"]] if spec["b_q"] else self.consts[spec["b"]]
        if spec["w_q"]:
            q, s = weight_levels(w)
            w = q * s[:, None, None, None]
            if b is not None and spec["b_q"]:
                sb = self.scale(spec["scale_in"]) * s
                b = fake_quant(b, sb, torch.zeros(()), -(2**31), 2**31 - 1)
        return w, b

    def _conv(self, x: torch.Tensor, spec: dict) -> torch.Tensor:
        w, b = self._weight(spec)
        a = spec["attrs"]
        p = a.get("pads", [0, 0, 0, 0])
        if p[0] != p[2] or p[1] != p[3]:
            x, p = F.pad(x, (p[1], p[3], p[0], p[2])), [0, 0, 0, 0]
        return F.conv2d(x, w, b, a.get("strides", [1, 1]), (p[0], p[1]), a.get("dilations", [1, 1]), a.get("group", 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, torch.Tensor] = dict(self.consts)
        env[self.input] = x
        for n in self.nodes:
            if n.op_type == "Conv":  # its weight and bias come from the parameters
                env[n.output[0]] = self._conv(env[n.input[0]], self.convs[n.output[0]])
                continue
            ins = [env[i] if i else None for i in n.input]
            if n.op_type == "QuantizeLinear":  # always followed by its DequantizeLinear: fused below
                out = ins
            elif n.op_type == "DequantizeLinear":  # the pair Q -> DQ on an activation (__init__ checked)
                x_q, zero = ins[0][0], ins[0][2]
                lo, hi = _range_of(zero)
                out = fake_quant(x_q, self.scale(n.input[1]), zero.to(torch.float32), lo, hi)
            else:
                out = _OPS[n.op_type](ins, _attrs(n))
            env[n.output[0]] = out
        return env[self.output]

    @torch.no_grad()
    def write(self):
        """The int8 model with the trained weights, quantized as the forward pass rounds them (a new ModelProto)."""
        import onnx
        from onnx import numpy_helper

        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        inits = {t.name: t for t in m.graph.initializer}

        def put(name: str, array: np.ndarray) -> None:
            inits[name].CopyFrom(numpy_helper.from_array(array, name))

        for name in self._scale_key:
            put(name, np.asarray(self.scale(name).numpy(), dtype=np.float32))
        for spec in self.convs.values():
            if not spec["w_q"]:
                continue
            w = self.params[spec["w"]]
            q, s = weight_levels(w)
            wname = self.names[spec["w"]]
            put(f"{wname}_quantized", q.numpy().astype(np.int8))
            put(f"{wname}_scale", s.numpy().astype(np.float32))
            if spec["b"] is not None and spec["b_q"]:
                bname = self.names[spec["b"]]
                sb = (self.scale(spec["scale_in"]) * s).to(torch.float64)
                b = self.params[spec["b"]].to(torch.float64)
                put(f"{bname}_quantized", torch.round(b / sb).numpy().astype(np.int32))
                put(f"{bname}_quantized_scale", sb.numpy().astype(np.float32))
        return m


def _range_of(zero: torch.Tensor) -> tuple[int, int]:
    return (0, 255) if zero.dtype == torch.uint8 else (-128, 127)


def _pads(p: list[int] | torch.Tensor, rank: int) -> list[int]:
    """ONNX pads (begins for every axis, then ends) as F.pad's (last axis first)."""
    p = [int(v) for v in p]
    out: list[int] = []
    for axis in reversed(range(rank)):
        out += [p[axis], p[axis + rank]]
    return out


def _pad(ins, a):
    x, pads = ins[0], _pads(ins[1].tolist(), ins[0].dim())
    mode = a.get("mode", b"constant").decode()
    while pads and pads[-2:] == [0, 0]:
        pads = pads[:-2]
    if not any(pads):
        return x
    if mode == "constant":
        value = float(ins[2]) if len(ins) > 2 and ins[2] is not None else 0.0
        return F.pad(x, pads, value=value)
    return F.pad(x, pads, mode={"reflect": "reflect", "edge": "replicate"}[mode])


def _slice(ins, a):
    x, starts, ends = ins[0], ins[1].tolist(), ins[2].tolist()
    axes = ins[3].tolist() if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
    steps = ins[4].tolist() if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st != 1:
            raise UnsupportedError("Slice with a step")
        index[ax] = slice(int(s), min(int(e), x.shape[ax]))
    return x[tuple(index)]


def _resize(ins, a):
    if a.get("mode", b"nearest") != b"nearest" or a.get("coordinate_transformation_mode") != b"asymmetric":
        raise UnsupportedError("Resize other than nearest / asymmetric")
    scales = ins[2].tolist() if len(ins) > 2 and ins[2] is not None and ins[2].numel() else None
    if scales is None or scales[:2] != [1.0, 1.0]:
        raise UnsupportedError("Resize without scales")
    return F.interpolate(ins[0], scale_factor=tuple(scales[2:]), mode="nearest")


def _maxpool(ins, a):
    p = a.get("pads", [0, 0, 0, 0])
    if a.get("ceil_mode", 0) or p[0] != p[2] or p[1] != p[3]:
        raise UnsupportedError("MaxPool with ceil_mode or uneven pads")
    return F.max_pool2d(ins[0], a["kernel_shape"], a.get("strides", a["kernel_shape"]), (p[0], p[1]),
                        a.get("dilations", [1, 1]))


def _squeeze(ins, a):
    axes = ins[1].tolist() if len(ins) > 1 and ins[1] is not None else a.get("axes")
    x = ins[0]
    for ax in sorted(axes or [], reverse=True):
        x = x.squeeze(ax)
    return x if axes else x.squeeze()


_OPS = {
    "Shape": lambda ins, a: torch.tensor(ins[0].shape[a.get("start", 0):a.get("end")], dtype=torch.int64),
    "Squeeze": _squeeze,
    "Reshape": lambda ins, a: ins[0].reshape([int(v) if v != 0 else ins[0].shape[i]
                                              for i, v in enumerate(ins[1].tolist())]),
    "Mod": lambda ins, a: torch.remainder(ins[0], ins[1]) if not a.get("fmod") else torch.fmod(ins[0], ins[1]),
    "Mul": lambda ins, a: ins[0] * ins[1],
    "Add": lambda ins, a: ins[0] + ins[1],
    "Sub": lambda ins, a: ins[0] - ins[1],
    "Div": lambda ins, a: ins[0] / ins[1],
    "Concat": lambda ins, a: torch.cat(ins, a["axis"]),
    "LeakyRelu": lambda ins, a: F.leaky_relu(ins[0], a.get("alpha", 0.01)),
    "Relu": lambda ins, a: F.relu(ins[0]),
    "Clip": lambda ins, a: torch.clamp(ins[0], *(None if v is None else float(v) for v in (ins + [None, None])[1:3])),
    "MaxPool": _maxpool,
    "Resize": _resize,
    "Pad": _pad,
    "Slice": _slice,
    "Identity": lambda ins, a: ins[0],
}
