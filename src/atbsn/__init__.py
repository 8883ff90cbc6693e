"""atbsn: self-supervised real-world sRGB denoising with the Asymmetric Tunable Blind-Spot Network.

The public API, listed explicitly:

- networks: :class:`ATBSN` (the meta-teacher, blind spot k at run time), :func:`Student` (A, B, C)
- checkpoints: :func:`load` (ours and the authors' files), :func:`save`
- inference: :func:`denoise` (numpy, any size, tiled), :func:`denoise_tensor` (torch batches),
  :func:`denoise_files`
- learning: :func:`train`, :func:`distill`, :class:`RunConfig`, :func:`fit`, :class:`FitConfig`
- scoring and submissions: :func:`evaluate`, :func:`sweep`, :func:`submit_sidd`, :func:`submit_dnd`,
  :func:`export_onnx`; the camera-noise simulator :func:`add_camera_noise`
"""

import os

# Large tensors on transparent huge pages: PyTorch's CPU allocator does this when THP_MEM_ALLOC_ENABLE is
# set, reading it once, at its first allocation (importing torch does not allocate, so the order of imports
# does not matter; allocating tensors before importing atbsn does). Page faults on fresh buffers of hundreds
# of MB otherwise dominate big images: measured 1.5x (student C) to 1.9x (student A) faster at 1024^2 on a
# 2-core machine, and the fp32 convolution ceiling rises from ~145 to ~215 GMAC/s. Opt out with
# THP_MEM_ALLOC_ENABLE=0.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from .blindspot import validate_k  # noqa: E402
from .checkpoint import load, save  # noqa: E402
from .config import ModelConfig  # noqa: E402
from .distill import distill  # noqa: E402
from .engine import RunConfig  # noqa: E402
from .errors import AtbsnError  # noqa: E402
from .evaluate import evaluate, sweep  # noqa: E402
from .export import export_onnx  # noqa: E402
from .fit import FitConfig, fit  # noqa: E402
from .inference import denoise, denoise_files, denoise_tensor  # noqa: E402
from .noise import add_camera_noise  # noqa: E402
from .students import Student, init_from_teacher  # noqa: E402
from .submit import submit_dnd, submit_sidd  # noqa: E402
from .teacher import ATBSN  # noqa: E402
from .train import train  # noqa: E402

__all__ = [
    "ATBSN", "AtbsnError", "FitConfig", "ModelConfig", "RunConfig", "Student", "add_camera_noise", "denoise",
    "denoise_files", "denoise_tensor", "distill", "evaluate", "export_onnx", "fit", "init_from_teacher", "load",
    "save", "submit_dnd", "submit_sidd", "sweep", "train", "validate_k",
]
__version__ = "0.1.0"
