"""atbsn: self-supervised real-world sRGB denoising with the Asymmetric Tunable Blind-Spot Network.

The public API, listed explicitly (importing it changes nothing in the host process):

- networks: :class:`ATBSN` (the meta-teacher, blind spot k at run time), :func:`Student` (A, B, C), and the
  rival :class:`APBSN` (AP-BSN; Neighbor2Neighbor and Blind2Unblind train student C's UNet)
- checkpoints: :func:`load` (ours and the authors' files), :func:`save`
- inference: :func:`denoise` (numpy, any size, tiled), :func:`denoise_tensor` (torch batches),
  :func:`denoise_files`, all taking :class:`InferenceOptions` or its fields as keywords
- learning: :func:`train`, :func:`distill`, :class:`RunConfig`, :func:`fit`, :class:`FitConfig`; the
  losses :class:`SelfL1` (L1 to the noisy input at one value of a blind-spot control), :class:`BlindSpotL1`,
  :class:`DistillL1`, the rivals' :class:`PDBlindSpotL1`,
  :class:`Neighbor2NeighborLoss`, :class:`Blind2UnblindLoss`, and the :class:`Trainer` that runs any network + loss
- methods: :mod:`atbsn.methods`, the registry of network families and training methods (one file each)
- scoring and submissions: :func:`evaluate`, :func:`sweep`, :func:`submit_sidd`, :func:`submit_dnd`,
  :func:`export_onnx`; the camera-noise simulator :func:`add_camera_noise`
"""

from .blindspot import validate_k
from .checkpoint import load, save
from .config import ModelConfig, RunConfig
from .deploy.export import export_onnx
from .distill import distill
from .engine import Method, Trainer
from .errors import AtbsnError
from .evaluate import evaluate, sweep
from .fitting import FitConfig, fit
from .inference import InferenceOptions, denoise, denoise_files, denoise_tensor
from .losses import BlindSpotL1, DistillL1, Loss, SelfL1
from .methods import atbsn as _paper  # noqa: F401 - registered first: the paper's networks lead every listing
from .methods.apbsn import APBSN, PDBlindSpotL1
from .methods.b2u import Blind2UnblindLoss
from .methods.n2n import Neighbor2NeighborLoss
from .noise import add_camera_noise
from .runtime import enable_huge_pages
from .students import Student, init_from_teacher
from .submit import submit_dnd, submit_sidd
from .teacher import ATBSN
from .train import train

__all__ = [
    "APBSN", "ATBSN", "AtbsnError", "Blind2UnblindLoss", "BlindSpotL1", "DistillL1", "FitConfig",
    "InferenceOptions", "Loss", "Method", "ModelConfig", "Neighbor2NeighborLoss", "PDBlindSpotL1", "RunConfig",
    "SelfL1", "Student", "Trainer", "add_camera_noise", "denoise", "denoise_files", "denoise_tensor", "distill",
    "enable_huge_pages", "evaluate", "export_onnx", "fit", "init_from_teacher", "load", "save", "submit_dnd",
    "submit_sidd", "sweep", "train", "validate_k",
]
__version__ = "0.1.0"
