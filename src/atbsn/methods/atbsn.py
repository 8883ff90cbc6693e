"""AT-BSN (Chen et al., CVPR 2024): the meta-teacher and the non-blind students of AT-BSN(D), registered.

The networks live in :mod:`atbsn.teacher` and :mod:`atbsn.students`; this file declares them to the registry:
the teacher's blind-spot size k (0 or odd; trained at k_a = 9, run at k_b = 3, the paper's SIDD choice), how
the authors' files are recognised (bare state dicts on 0..255; APR-RD's ``{"model_state_dict"}`` wrapper on
0..1), the tiling constants measured for each network, and the ``atbsn`` training method with the paper's
recipes.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..blindspot import validate_k, validate_k_train
from ..config import SIDD_KS, ModelConfig, RunConfig
from ..losses import BlindSpotL1
from ..students import Student
from ..teacher import ATBSN
from . import Arch, Knob, Method, MethodSpec, conv_weight, knob_values, parameters, register, start
from .common import CPU_BUDGET


def _covers(k: int, h: int, w: int) -> str | None:
    """A blind spot over a third of the image's shorter side leaves too little to see: a 96-pixel photo denoised at
    k = 33 to 95 came out near-black (mean 6 against 49), while k up to the paper's 11 needs 33 pixels."""
    if 3 * k > min(h, w):
        largest = max(x for x in range(0, min(h, w) // 3 + 1) if x == 0 or x % 2)
        return (f"k={k} hides a {k} x {k} square, more than a third of the {w} x {h} image: too little would be left "
                f"to see (the output would not be a denoised photo); choose k up to {largest}")
    return None


K = Knob("k", "blind-spot size", train=9, infer=3, sweep=SIDD_KS, validate=validate_k, validate_train=validate_k_train,
         covers=_covers, span=lambda k: k)


def _unwrap(obj: Mapping) -> tuple[Mapping, float] | None:
    """APR-RD releases its AT-BSN networks as ``{"model_state_dict": ...}``, trained on 0..1 inputs (one unwrap
    serves every network of the family: the checkpoint floor peels wrappers before it detects the network)."""
    return (obj["model_state_dict"], 1.0) if "model_state_dict" in obj else None


def _detect_teacher(sd, value_range: float) -> ModelConfig | None:
    if "nin_A.weight" in sd and "unet.intro.conv.weight" in sd:
        w = conv_weight(sd, "unet.intro.conv.weight")
        return ModelConfig("atbsn", width=w.shape[0], in_channels=w.shape[1], value_range=value_range)
    return None


def _detect_c(sd, value_range: float) -> ModelConfig | None:
    if "unet.intro.conv.weight" in sd and "nin_A.weight" not in sd:
        w = conv_weight(sd, "unet.intro.conv.weight")
        return ModelConfig("C", width=w.shape[0], in_channels=w.shape[1], value_range=value_range)
    return None


def _detect_c102(sd, value_range: float) -> ModelConfig | None:  # noqa: ARG001 - released for 0..1 only
    if "enc1.conv.weight" in sd and "dec1_1.weight" in sd:
        w = conv_weight(sd, "enc1.conv.weight")
        return ModelConfig("C102", width=w.shape[0], in_channels=w.shape[1], value_range=1.0)
    return None


def _detect_small(kind: str, key: str):
    def detect(sd, value_range: float) -> ModelConfig | None:
        if key in sd:
            return ModelConfig(kind, in_channels=conv_weight(sd, key).shape[1], value_range=value_range)
        return None
    return detect


# Tiling: peak bytes per input pixel under no_grad, fp32, CPU, measured on one 512 x 512 window (teacher 2,700
# since its head runs in bands; C 1,400, kept at the earlier 2,400; A 1,170; B 2,300), rounded up;
# benchmarks/memory.py checks the whole tiled path on a 24 MP photo. Context per tile so that tiled and untiled
# outputs agree (the released SIDD student C: 96 px gives 0.05/255 max difference; the teacher's half-plane
# backbone reaches about twice as far vertically; students A and B see +-16 px).
register(Arch("atbsn", "AT-BSN", lambda c: ATBSN(config=c), _detect_teacher, bytes_per_pixel=3000, margin=128,
              knob=K, teacher=True, unwrap=_unwrap))
register(Arch("A", "student A", lambda c: Student(config=c), _detect_small("A", "enc1.conv.conv.weight"),
              bytes_per_pixel=1200, margin=32, student=True))
register(Arch("B", "student B", lambda c: Student(config=c), _detect_small("B", "enc1.conv1.conv.weight"),
              bytes_per_pixel=2400, margin=32, student=True))
register(Arch("C", "student C", lambda c: Student(config=c), _detect_c, bytes_per_pixel=2400, margin=96,
              student=True))
register(Arch("C102", "student C (1.02M layout)", lambda c: Student(config=c), _detect_c102, bytes_per_pixel=2400,
              margin=96, student=True))


def make(config: RunConfig, init=None) -> Method:
    """An AT-BSN of ``config.width`` (fresh, or starting from the teacher ``init``) and the L1 loss at k_a."""
    k_train, k_infer = knob_values(config, SPEC)
    model = ATBSN(config=ModelConfig("atbsn", width=config.width, k_infer=k_infer, k_train=k_train,
                                     train_crop=config.crop))
    how = start(model, init)
    return Method(model, BlindSpotL1(k_train),
                  f"training AT-BSN (width {config.width}, {parameters(model)} parameters, {how}): blind spot "
                  f"k_a = {k_train} for training, k_b = {k_infer} for inference")


# The paper's recipes (sidd, dnd) and a laptop-sized one (cpu).
_PAPER = {"steps": 400_000, "batch": 8, "crop": 256, "width": 48, "k_train": 9, "k_infer": 3, "lr": 3e-4}
SPEC = register(MethodSpec("atbsn", "AT-BSN", "atbsn", make, presets={
    "sidd": _PAPER, "dnd": _PAPER,
    "cpu": {**CPU_BUDGET, "k_train": 9, "k_infer": 3},
}))
