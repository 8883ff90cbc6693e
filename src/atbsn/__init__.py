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

from .blindspot import validate_k
from .checkpoint import load, save
from .config import ModelConfig
from .distill import distill
from .engine import RunConfig
from .errors import AtbsnError
from .evaluate import evaluate, sweep
from .export import export_onnx
from .fit import FitConfig, fit
from .inference import denoise, denoise_files, denoise_tensor
from .noise import add_camera_noise
from .students import Student, init_from_teacher
from .submit import submit_dnd, submit_sidd
from .teacher import ATBSN
from .train import train

__all__ = [
    "ATBSN", "AtbsnError", "FitConfig", "ModelConfig", "RunConfig", "Student", "add_camera_noise", "denoise",
    "denoise_files", "denoise_tensor", "distill", "evaluate", "export_onnx", "fit", "init_from_teacher", "load",
    "save", "submit_dnd", "submit_sidd", "sweep", "train", "validate_k",
]
__version__ = "0.1.0"
