"""CPU runtimes: a network run by ONNX Runtime or OpenVINO instead of PyTorch, the fastest chosen by measuring.

On a CPU, PyTorch's eager path is not the fastest way to run these plain convolutional networks: OpenVINO
runs the students 1.4x to 1.6x faster on an AVX2 CPU (``benchmarks/results/cpu_runtime.md``). A model runs
through a runtime from an ONNX file: one that ``atbsn export`` or ``atbsn quantize`` wrote (:class:`OnnxNet`,
loaded by :func:`atbsn.load`), or one exported here once per network and kept in the cache.

``engine="auto"`` (the default) takes, per network, machine and precision, what a short probe measured fastest
(:func:`probe`; remembered in ``engines.json`` in the cache). A job smaller than :data:`PROBE_PIXELS` does not
pay for a probe (an export takes seconds): it uses what was remembered, else PyTorch (an ONNX file: OpenVINO
if installed, else ONNX Runtime). The runtimes are optional (``pip install 'atbsn[cpu]'``); without them
``auto`` is PyTorch. Outputs agree with PyTorch's to float round-off (the export is checked at 1e-3 of 255).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..errors import AtbsnError
from ..files import atomic_write, reason
from ..methods import blind_spot
from ..runtime import autocast, cache_dir, int8_support, log, native_bf16
from .export import CONFIG_KEY, EXTRA_KEY, K_KEY, MULTIPLE_KEY, export_onnx
from .qdq import WEIGHT_QMAX

ENGINES = ("auto", "torch", "onnxruntime", "openvino")
RUNTIMES = ("onnxruntime", "openvino")
PROBE_PIXELS = 2_000_000  # auto probes for a job of at least this many pixels (about one 12 MP photo's tile grid)
PROBE_SIDE = 512  # the probe's image side
_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def installed(engine: str) -> bool:
    """Whether a runtime's Python package is importable here (PyTorch always is)."""
    return engine == "torch" or importlib.util.find_spec(_PACKAGES[engine]) is not None


def _require(engine: str) -> None:
    if not installed(engine):
        raise AtbsnError(f"--engine {engine}: {_PACKAGES[engine]} is not installed (pip install 'atbsn[cpu]')")


def _threads() -> int:
    return torch.get_num_threads()


def ort_runner(path: Path, precision: str = "fp32", int8: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """An ONNX Runtime session on ``path`` as a function of one N x C x H x W float32 array."""
    import onnxruntime as ort

    if precision != "fp32":
        raise AtbsnError("onnxruntime runs these networks in fp32 only on a CPU; for bf16 use --engine openvino")
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = _threads(), 1
    so.log_severity_level = 3
    # the arena keeps every tile size's buffers (7 GB for a tiled 24 MP photo in fp32); an int8 graph's many small
    # tensors need it (3x slower without: benchmarks/results/cpu_runtime.md)
    so.enable_cpu_mem_arena = int8
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy threads between tiles
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def ov_runner(path: Path, precision: str = "fp32") -> Callable[[np.ndarray], np.ndarray]:
    """An OpenVINO compiled model on ``path`` as a function of one N x C x H x W float32 array."""
    import openvino as ov

    hint = {"fp32": "f32", "bf16": "bf16"}.get(precision)
    if hint is None:
        raise AtbsnError(f"openvino runs on the CPU in fp32 or bf16, not {precision}")
    compiled = ov.Core().compile_model(str(path), "CPU", {
        "INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": _threads(), "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    lock = threading.Lock()  # one request, and the page (atbsn ui) may denoise from two threads at once

    def run(x: np.ndarray) -> np.ndarray:
        with lock:
            request.infer({0: x})
            return request.get_output_tensor(0).data.copy()  # the request reuses its buffer

    return run


class OnnxNet(nn.Module):
    """An atbsn ONNX file as a network: N x C x H x W in 0..255 in, the same out, run on the CPU by ONNX Runtime
    or OpenVINO (:meth:`use`). ``config`` is the network's own (tiling, value range, what it is); ``k`` the
    blind-spot control frozen into the graph (None: non-blind). Sessions are made on first use and kept."""

    def __init__(self, path: str | Path, config: ModelConfig, k: int | None = None,
                 provenance: dict | None = None, multiple: int = 1) -> None:
        super().__init__()
        self.path, self.config, self.k, self.multiple = Path(path), config, k, multiple
        self.provenance = provenance or {}
        self.engine, self.precision = None, "fp32"
        self.digest = None  # set by :func:`digest` on first use (the file does not change under a loaded model)
        self._runners: dict[tuple[str, str], Callable[[np.ndarray], np.ndarray]] = {}

    @property
    def int8(self) -> bool:
        """Written by ``atbsn quantize``."""
        return self.provenance.get("quantization") is not None

    @property
    def runs_on(self) -> tuple[str, ...]:
        """The runtimes that load this file (an int8 file records them; OpenVINO does not take every graph)."""
        return tuple((self.provenance.get("quantization") or {}).get("runs_on", RUNTIMES))

    def use(self, engine: str, precision: str = "fp32") -> OnnxNet:
        """Run through ``engine`` ("onnxruntime" or "openvino") in ``precision`` from now on."""
        if engine not in RUNTIMES:
            raise AtbsnError(f"{self.path}: an ONNX model runs through {' or '.join(RUNTIMES)}, not {engine}")
        _require(engine)
        key = (engine, precision)
        if key not in self._runners:
            try:
                self._runners[key] = (ort_runner(self.path, precision, self.int8) if engine == "onnxruntime"
                                      else ov_runner(self.path, precision))
            except AtbsnError:
                raise
            except Exception as e:  # the runtimes raise their own types
                raise AtbsnError(f"{self.path}: {engine} cannot run this file ({reason(e, 160)})") from None
        self.engine, self.precision = key
        return self

    def forward(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        if k is not None and k != self.k:
            raise AtbsnError(f"{self.path}: the blind spot is frozen at k={self.k} in this file; export again "
                             f"with --k {k}" if self.k is not None else f"{self.path}: a non-blind network has no k")
        if self.engine is None:
            self.use(default_runtime(self.runs_on))
        h, w = x.shape[-2:]
        ph, pw = -h % self.multiple, -w % self.multiple
        if (ph or pw) and not (ph < h and pw < w):  # too small to reflect: replicate first, as the network does
            x = F.pad(x.float(), (0, pw, 0, ph), mode="replicate")
        y = self._runners[(self.engine, self.precision)](np.ascontiguousarray(x.detach().float().cpu().numpy()))
        return torch.from_numpy(np.asarray(y, dtype=np.float32)[..., :h, :w]).to(x.device)


def default_runtime(allowed: tuple[str, ...] = RUNTIMES) -> str:
    """The runtime an ONNX file runs through when nothing was measured: OpenVINO if installed (the faster one
    in ``benchmarks/results/cpu_runtime.md``), else ONNX Runtime."""
    for engine in ("openvino", "onnxruntime"):
        if engine in allowed and installed(engine):
            return engine
    raise AtbsnError("running an ONNX model needs openvino or onnxruntime: pip install 'atbsn[cpu]'")


def load_onnx(path: str | Path) -> OnnxNet:
    """An ONNX file written by ``atbsn export`` or ``atbsn quantize`` as a model (its configuration from the file's
    metadata). Parsing a protobuf runs no code from the file."""
    path = Path(path)
    try:
        import onnx
    except ImportError:
        raise AtbsnError(f"{path}: reading an ONNX model needs onnx: pip install 'atbsn[cpu]'") from None
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # DecodeError and friends
        raise AtbsnError(f"{path}: not a readable ONNX file, truncated or corrupt ({reason(e)})") from None
    meta = {p.key: p.value for p in m.metadata_props}
    if CONFIG_KEY not in meta:
        raise AtbsnError(f"{path}: an ONNX file without atbsn's model configuration (write it with atbsn export)")
    try:
        config = ModelConfig.from_json(meta[CONFIG_KEY])
        k = int(meta[K_KEY]) if K_KEY in meta else None
        provenance = json.loads(meta.get(EXTRA_KEY, "{}"))
    except (ValueError, TypeError) as e:
        raise AtbsnError(f"{path}: broken atbsn metadata in the ONNX file ({reason(e, 100)})") from None
    if k is not None:
        config.k_infer = k  # the file runs at the k frozen into it
    if provenance.get("quantization") is not None and _full_range_weights(m):
        log.warning("%s: int8 weights beyond -%d..%d (written by an atbsn before 7-bit weights): on a CPU without "
                    "VNNI its convolutions saturate and the output drifts from what the file states; "
                    "run atbsn quantize again", path, WEIGHT_QMAX, WEIGHT_QMAX)
    return OnnxNet(path, config, k, provenance, int(meta.get(MULTIPLE_KEY, 1)))


def _full_range_weights(model) -> bool:
    """Whether a quantized model's int8 convolution weights use more than the 7 bits that every CPU's int8
    kernels compute exactly (:data:`atbsn.deploy.qdq.WEIGHT_QMAX` says why)."""
    from onnx import TensorProto, numpy_helper

    return any(t.data_type == TensorProto.INT8 and t.data_location != TensorProto.EXTERNAL  # never read from here
               and int(np.abs(numpy_helper.to_array(t).astype(np.int16)).max(initial=0)) > WEIGHT_QMAX
               for t in model.graph.initializer)


# ------------------------------------------------------------------------------------------- choosing
def digest(model: nn.Module) -> str:
    """A short hash of a network's configuration and weights: the name of its exported file and its choices."""
    if isinstance(model, OnnxNet) and model.digest is not None:
        return model.digest
    h = hashlib.sha256(model.config.to_json().encode())
    if isinstance(model, OnnxNet):
        h.update(model.path.read_bytes())
        model.digest = h.hexdigest()[:16]
        return model.digest
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@functools.cache
def machine() -> str:
    """This machine as the probe sees it: CPU model and SIMD flags, the ISA caps in the environment, threads and
    the versions of the engines."""
    cpu = platform.processor()
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        cpu = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), cpu)
        have = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
        flags = ",".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16")
                         if f in have)
    except OSError:
        pass
    versions = [torch.__version__]
    for engine in RUNTIMES:
        if installed(engine):
            versions.append(f"{engine}-{_version(engine)}")
    caps = [os.environ.get(v, "") for v in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")]
    return "|".join([cpu, flags, *caps, f"threads={_threads()}", *versions])


def _version(engine: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(_PACKAGES[engine])
    except PackageNotFoundError:
        return "?"


def _memory_file() -> Path:
    return cache_dir() / "engines.json"


def _remembered() -> dict:
    try:
        data = json.loads(_memory_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _remember(key: str, entry: dict) -> None:
    data = _remembered()
    data[key] = entry
    try:
        atomic_write(_memory_file(), lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1, sort_keys=True)))
    except OSError as e:
        log.warning("could not remember the engine choice in %s (%s)", _memory_file(), reason(e))


def candidates(model: nn.Module, precision: str) -> list[str]:
    """The engines that can run ``model`` here in ``precision``: PyTorch (not for an ONNX file) and the installed
    runtimes (bf16: OpenVINO only, and only where the CPU computes bf16 natively)."""
    out = [] if isinstance(model, OnnxNet) else ["torch"]
    for engine in model.runs_on if isinstance(model, OnnxNet) else RUNTIMES:
        if not installed(engine):
            continue
        if precision == "bf16" and (engine != "openvino" or not native_bf16(torch.device("cpu"))):
            continue
        out.append(engine)
    return out if precision in ("fp32", "bf16") else out[:1]


_NETS: dict[tuple[str, int | None], OnnxNet] = {}  # exported networks of this process, sessions kept
# One export and one engine choice per network, however many threads ask at once (the page's sessions): the first
# makes it, the others wait for it and reuse it.
_CHOOSING = threading.RLock()


def as_onnx(model: nn.Module, k: int | None) -> OnnxNet:
    """``model`` at blind spot ``k`` as an :class:`OnnxNet`: exported once per network into the cache
    (``onnx/``), verified against PyTorch on export, then reused."""
    if isinstance(model, OnnxNet):
        return model
    k = blind_spot(model.config, k)
    key = (digest(model), k)
    with _CHOOSING:
        if key not in _NETS:
            path = cache_dir() / "onnx" / f"{model.config.arch}-{key[0]}" f"{'' if k is None else f'-k{k}'}.onnx"
            if not path.is_file():
                log.info("exporting the network to ONNX once, for the CPU runtimes (%s)", path)
                export_onnx(model, path, k=k)
            _NETS[key] = OnnxNet(path, model.config, k, multiple=getattr(model, "multiple", 1))
        return _NETS[key]


def _runner(model: nn.Module, engine: str, k: int | None, precision: str) -> nn.Module:
    if engine == "torch":
        return model
    return as_onnx(model, k).use(engine, precision)


def probe(model: nn.Module, k: int | None, precision: str = "fp32", side: int = PROBE_SIDE,
          engines: list[str] | None = None, repeats: int = 2) -> dict[str, float]:
    """Seconds per image of ``side`` x ``side`` for each engine (the least of ``repeats`` runs after one warm-up)."""
    x = torch.rand(1, model.config.in_channels, side, side) * 255
    times = {}
    for engine in engines or candidates(model, precision):
        net = _runner(model, engine, k, precision)
        run = (lambda t, n=net: n(t)) if k is None else (lambda t, n=net: n(t, k))
        xe = x.contiguous(memory_format=torch.channels_last) if engine == "torch" else x
        best = float("inf")
        with torch.no_grad(), autocast(torch.device("cpu"), precision if engine == "torch" else "fp32"):
            for i in range(repeats + 1):
                t0 = time.perf_counter()
                run(xe)
                if i:
                    best = min(best, time.perf_counter() - t0)
        times[engine] = best
    return times


def check(model: nn.Module, engine: str, device: torch.device, r3: bool) -> None:
    """Refuse, on one line, an engine that cannot run ``model`` as asked (before any work)."""
    onnx_model = isinstance(model, OnnxNet)
    if onnx_model and device.type != "cpu":
        raise AtbsnError(f"{model.path}: an ONNX model runs on the CPU (--device cpu), not on {device}")
    if engine == "auto":
        return
    if engine == "torch" and onnx_model:
        raise AtbsnError(f"{model.path}: an ONNX model runs through {' or '.join(model.runs_on)}, not PyTorch")
    if engine in RUNTIMES:
        _require(engine)
        if onnx_model and engine not in model.runs_on:
            raise AtbsnError(f"{model.path}: {engine} cannot load this file; use --engine {model.runs_on[0]}")
        if device.type != "cpu":
            raise AtbsnError(f"--engine {engine} runs on the CPU; with --device {device} use --engine torch or auto")
        if r3:
            raise AtbsnError("--r3 draws random replacements each call: it runs in PyTorch (--engine torch)")


def runner(model: nn.Module, k: int | None, engine: str, precision: str, device: torch.device,
           pixels: int, r3: bool = False) -> nn.Module:
    """What to run ``model`` through for a job of ``pixels`` pixels: ``model`` itself (PyTorch) or an
    :class:`OnnxNet` on the engine asked for, or for ``auto`` the one remembered or probed fastest here. The
    engine was checked for the model when the options were resolved (:func:`check`, by
    ``InferenceOptions.for_model``)."""
    if engine != "auto":
        return _runner(model, engine, k, precision)
    if device.type != "cpu" or r3:
        return model
    int8 = int8_choice(model, k, precision)
    if int8 is not None:
        return int8
    options = candidates(model, precision)
    if options in ([], ["torch"]):
        return model
    k = None if isinstance(model, OnnxNet) else blind_spot(model.config, k)
    key = _choice_key(model, k, precision)
    with _CHOOSING:
        return _runner(model, _choose(model, k, precision, pixels, options, key), k, precision)


def _choice_key(model: nn.Module, k: int | None, precision: str) -> str:
    """Where the engine chosen for ``model`` at blind spot ``k`` on this machine is remembered."""
    return f"{digest(model)}|k={k}|{precision}|{machine()}"


def _int8_key(model: nn.Module, k: int | None) -> str:
    return f"int8|{digest(model)}|k={blind_spot(model.config, k)}"


def remember_int8(model: nn.Module, k: int | None, path: Path) -> None:
    """Record ``path`` as the int8 file of ``model`` at ``k`` (``atbsn quantize`` does), for ``--engine auto``."""
    _remember(_int8_key(model, k), {"path": str(Path(path).resolve())})


def int8_file(model: nn.Module, k: int | None) -> Path | None:
    """The int8 file ``atbsn quantize`` made of ``model`` at ``k``, if it is still there."""
    if isinstance(model, OnnxNet):
        return None
    entry = _remembered().get(_int8_key(model, k))
    path = Path(entry["path"]) if isinstance(entry, dict) and "path" in entry else None
    return path if path is not None and path.is_file() else None


def int8_choice(model: nn.Module, k: int | None, precision: str) -> nn.Module | None:
    """``--engine auto``'s int8 rule: the network's int8 file (made by ``atbsn quantize``) where this CPU computes
    int8 natively (VNNI or AMX) and fp32 was asked for; None otherwise (the fp32 engines are chosen as before)."""
    path = int8_file(model, k) if precision == "fp32" else None
    if path is None:
        return None
    native, why = int8_support()
    key = (str(path), native)
    if key not in _SAID:
        _SAID.add(key)
        log.info("engine: %s (%s: %s)", f"int8, {path.name}" if native else "fp32, not the int8 file", why, path)
    return load_onnx(path) if native else None


_SAID: set = set()  # the int8 decisions already said in this process


def explain(model: nn.Module, k: int | None = None) -> str:
    """What ``--engine auto`` runs ``model`` through on this machine, and why (``atbsn info``)."""
    if isinstance(model, OnnxNet):
        return f"{model.path.name} through {' or '.join(model.runs_on)}"
    native, why = int8_support()
    path = int8_file(model, k)
    if path is not None:
        return (f"int8 ({path}), since {why}" if native else f"fp32, not its int8 file {path}: {why}")
    entry = _remembered().get(_choice_key(model, blind_spot(model.config, k), "fp32"))
    if entry:
        return f"{entry['engine']} (measured fastest here: {entry['seconds']})"
    return ("PyTorch for jobs under 2 MP; the fastest of " + ", ".join(candidates(model, "fp32"))
            + " measured at the first larger job" + ("; int8 where `atbsn quantize` made its file, " + why
                                                    if native else ""))


def _choose(model: nn.Module, k: int | None, precision: str, pixels: int, options: list[str], key: str) -> str:
    """The engine for ``model`` from memory, else (a large job) from a probe it then remembers."""
    entry = _remembered().get(key)
    if entry is None or entry.get("engine") not in options:
        if pixels < PROBE_PIXELS:
            return "torch" if "torch" in options else default_runtime(model.runs_on)
        times = probe(model, k, precision)
        best = min(times, key=times.get)
        entry = {"engine": best, "seconds": {e: round(t, 4) for e, t in times.items()}, "side": PROBE_SIDE}
        _remember(key, entry)
        log.info("engine: %s (measured at %d^2: %s; remembered in %s)", best, PROBE_SIDE,
                 ", ".join(f"{e} {t:.2f} s" for e, t in times.items()), _memory_file())
    return entry["engine"]
