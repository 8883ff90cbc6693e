"""ONNX export with dynamic height and width, verified against PyTorch with onnxruntime."""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import AtbsnError
from .files import atomic_write
from .inference import model_fn


class _Fixed(nn.Module):
    """A model with its blind-spot size frozen in: ONNX graphs take one input, the image."""

    def __init__(self, model: nn.Module, k: int | None) -> None:
        super().__init__()
        self.model = model
        self.fn = model_fn(model, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def export_onnx(
    model: nn.Module, path: str | Path, k: int | None = None, check_size: tuple[int, int] = (67, 93),
    tolerance: float = 1e-3,
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
