"""Value ranges, in one place: every network of this package takes and returns 0..255.

Images arrive as uint8 (0..255), uint16 (0..65535) or floats stored in 0..1, 0..255 or 0..65535 (decided from
the data); they are brought to 0..255 on the way in and back to their own range and dtype on the way out.
Weights may expect another input scale (``ModelConfig.value_range``: 1 for APR-RD's released students and the
rivals trained on 0..1): a network converts at its own input and output with :func:`into_weights` and
:func:`out_of_weights`, so callers never see it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import AtbsnError

MODEL_RANGE = 255.0  # what every network takes and returns
FLOAT_SCALES = (1.0, 255.0, 65535.0)  # float samples: 0..1, or integer ranges stored as floats
INT_SCALES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def float_scale(a: np.ndarray, path: str | Path = "image") -> float:
    """The range float samples are stored in (1, 255 or 65535), decided from the data; NaN, infinities and
    values beyond 65535 are refused rather than clipped."""
    if not np.isfinite(a).all():
        raise AtbsnError(f"{path}: holds NaN or infinite samples")
    peak = float(a.max(initial=0.0))
    for scale in FLOAT_SCALES:
        if peak <= scale * 1.01:  # a little overshoot from editing stays in its range
            return scale
    raise AtbsnError(f"{path}: float samples up to {peak:g}, beyond any known range (0..1, 0..255, 0..65535)")


def stored_scale(a: np.ndarray) -> float:
    """The full scale of an image's stored samples: 255, 65535, or a float image's :func:`float_scale`."""
    if np.issubdtype(a.dtype, np.floating):
        return float_scale(a)
    if a.dtype in INT_SCALES:
        return INT_SCALES[a.dtype]
    raise AtbsnError(f"unsupported image dtype {a.dtype} (use uint8, uint16 or float)")


def to_255(a: np.ndarray) -> float:
    """The factor that brings an image's stored samples to 0..255."""
    return MODEL_RANGE / stored_scale(a)


def to_model_range(image: np.ndarray) -> tuple[np.ndarray, float]:
    """A float32 copy of an image in 0..255, and the factor that maps 0..255 back to its own range."""
    scale = stored_scale(image)
    return image.astype(np.float32) * (MODEL_RANGE / scale), scale / MODEL_RANGE


def from_model_range(y: np.ndarray, factor: float, dtype: np.dtype) -> np.ndarray:
    """Back to the image's own range and dtype: clip, and round for integer types."""
    out = np.clip(y * factor, 0.0, factor * MODEL_RANGE)
    return np.round(out).astype(dtype) if np.issubdtype(dtype, np.integer) else out.astype(dtype)


def as_batch(image: np.ndarray) -> tuple[torch.Tensor, float]:
    """H x W x C in its own range -> a 1 x C x H x W float tensor in 0..255, and the factor back."""
    x, factor = to_model_range(image)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None], factor


def into_weights(x: torch.Tensor, value_range: float) -> torch.Tensor:
    """0..255 input -> the scale the weights were trained on (a no-op for 255)."""
    return x if value_range == MODEL_RANGE else x * (value_range / MODEL_RANGE)


def out_of_weights(y: torch.Tensor, value_range: float) -> torch.Tensor:
    """The weights' output scale -> 0..255 (a no-op for 255)."""
    return y if value_range == MODEL_RANGE else y * (MODEL_RANGE / value_range)
