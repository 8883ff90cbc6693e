"""ONNX export with dynamic height and width, verified against PyTorch with onnxruntime.

The file carries the model's :class:`~atbsn.config.ModelConfig` (and the blind-spot size frozen into it) in its
metadata, so that ``atbsn.load`` reads it back as a model that denoises like the checkpoint it came from
(through ONNX Runtime or OpenVINO: :mod:`atbsn.deploy.engines`).
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import AtbsnError
from ..files import atomic_write, check_apart, source_of
from ..methods import blind_spot

CONFIG_KEY = "atbsn_config"  # metadata: the ModelConfig as JSON
K_KEY = "atbsn_k"  # metadata: the blind-spot control frozen into the graph (absent for a non-blind network)
EXTRA_KEY = "atbsn_provenance"  # metadata: JSON, how the file was made (export, int8 quantization)
MULTIPLE_KEY = "atbsn_reflect_multiple"  # metadata: a student's size multiple, reached by a reflect pad in the graph
# torch.export keeps process-wide tracing state: two exports in parallel threads break each other (seen from the page:
# 4 sessions at once, 3 failed), so exports of one process run one at a time.
_EXPORTING = threading.RLock()


class _Fixed(nn.Module):
    """A model with its blind-spot size frozen in: ONNX graphs take one input, the image."""

    def __init__(self, model: nn.Module, k: int | None) -> None:
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) if self.k is None else self.model(x, self.k)


def metadata(model: nn.Module, k: int | None, provenance: dict | None = None) -> dict[str, str]:
    """The metadata an atbsn ONNX file carries."""
    meta = {CONFIG_KEY: model.config.to_json(), EXTRA_KEY: json.dumps(provenance or {"made_by": "atbsn export"})}
    if k is not None:
        meta[K_KEY] = str(k)
    if getattr(model, "multiple", 1) > 1:  # students pad to it: reflect in the graph, replicate when too small
        meta[MULTIPLE_KEY] = str(model.multiple)
    return meta


def set_metadata(path: str | Path, meta: dict[str, str]) -> None:
    """Write ``meta`` into the ONNX file at ``path`` (in place; callers write to a temporary file)."""
    import onnx

    m = onnx.load(str(path))
    old = {p.key: p.value for p in m.metadata_props}
    del m.metadata_props[:]
    for key, value in {**old, **meta}.items():
        m.metadata_props.add(key=key, value=value)
    onnx.save(m, str(path))


def check_export(model: nn.Module, path: str | Path) -> None:
    """What an export refuses before it traces: an ONNX model (already a graph), an output onto the model's file."""
    if getattr(model, "runs_on", None) is not None:  # an OnnxNet (engines): already a graph, nothing to trace
        raise AtbsnError(f"{model.path}: already an ONNX file; export (and quantize) take the PyTorch checkpoint it "
                         "was written from")
    check_apart([path], [source_of(model)])


def export_onnx(
    model: nn.Module, path: str | Path, k: int | None = None, check_size: tuple[int, int] = (67, 93),
    tolerance: float = 1e-3, provenance: dict | None = None,
) -> float:
    """Write ``model`` (teacher at blind spot k, or a student) as ONNX taking N x C x H x W in 0..255 for
    any H, W; run it with onnxruntime on a random image of ``check_size`` and compare with PyTorch.

    Returns the largest absolute difference (0..255 scale); raises if it exceeds ``tolerance`` times
    max(1, output scale / 255), so that the check stays meaningful for untrained weights.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise AtbsnError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'atbsn[export]'") from None
    check_export(model, path)
    k = blind_spot(model.config, k)  # the control frozen into the graph
    # a contiguous copy: channels-last weights make the exporter guard on the batch size
    plain = copy.deepcopy(model).eval().float().cpu().to(memory_format=torch.contiguous_format)
    wrapped = _Fixed(plain, k).eval()
    c = model.config.in_channels
    example = torch.rand(1, c, 64, 96) * 255
    dims = {"x": {0: torch.export.Dim("batch", min=1), 2: torch.export.Dim("height", min=1),
                  3: torch.export.Dim("width", min=1)}}
    path = Path(path)

    def write(tmp: str) -> None:
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapped, (example,), tmp, input_names=["image"], output_names=["denoised"],
                dynamic_shapes=dims, dynamo=True, external_data=False, verbose=False,
            )
        set_metadata(tmp, metadata(model, k, provenance))

    with _EXPORTING:
        atomic_write(path, write)
    x = torch.rand(1, c, *check_size) * 255
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        ref = wrapped(x).numpy()
    err = float(np.abs(got - ref).max())
    allowed = tolerance * max(1.0, float(np.abs(ref).max()) / 255.0)
    if not err <= allowed:
        path.unlink(missing_ok=True)
        raise AtbsnError(f"{path}: ONNX output differs from PyTorch by {err:.3g} (allowed {allowed:.3g}); not written")
    return err
