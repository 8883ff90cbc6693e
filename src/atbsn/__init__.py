"""atbsn: self-supervised real-world sRGB denoising with the Asymmetric Tunable Blind-Spot Network."""

from .blindspot import validate_k
from .config import ModelConfig
from .students import Student, init_from_teacher
from .teacher import ATBSN

__all__ = ["ATBSN", "ModelConfig", "Student", "init_from_teacher", "validate_k"]
__version__ = "0.1.0"
