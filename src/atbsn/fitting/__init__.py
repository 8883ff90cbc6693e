"""``fit``: the whole method in one call, for someone with a folder of noisy photos and nothing else.

1. measure the photos' noise (:mod:`atbsn.measure`) and choose the blind spot from it (:func:`blind_spot_for`:
   the paper's k_a = 9 for heavy noise; for mild noise a small one, a short fit (``step_cap``), the stop at
   the noise and the safeguard; options the user gives win);
2. train the AT-BSN teacher on the photos (self-supervised), from scratch or, with ``from_model``,
   starting from a released teacher (fine-tuning to the user's camera);
3. distill a student (C by default) from it at several blind spots, starting from the released student
   when the file has one (AT-BSN(D)), else from the teacher's UNet as the paper does;
4. weigh the student against the released students in the cache (:mod:`.candidates`, no clean image) and
   write one bundle file: the better student (what ``denoise`` uses) with the teacher inside.

Starting from a released model, neither network may end worse than it started by the measure available
without clean images (the held-out self-supervised loss for the teacher, the held-out distillation loss for
the student): the better of start and result is kept, and the choice is logged and written to ``fit.json``.

Work happens in ``<output>.fit/`` (one run folder per phase); calling ``fit`` again with the same output
resumes an interrupted phase and skips finished ones. With ``minutes``, the number of steps is chosen
from a measured step time so that both phases fit the budget.
"""

from .checks import (
    REMOVAL_LIMIT,
    TARGET_PHOTOS,
    TARGET_SIDE,
    centre_crop,
    centre_crops,
    output_check,
    removal_ratio,
    target_ratio,
)
from .config import FitConfig
from .plan import OtherFitError
from .rule import (
    BM3D_STRENGTH,
    FROM_RELEASED,
    FROM_SCRATCH,
    HEAVY,
    MILD,
    MILD_SIGMA,
    MILD_STEP_CAP,
    NLM_STRENGTH,
    blind_spot_for,
    choose,
)
from .run import fit
from .stop import COOL_SHARE, STOP_EVERY, STOP_RATIO, cosine_lr

__all__ = ["BM3D_STRENGTH", "COOL_SHARE", "FROM_RELEASED", "FROM_SCRATCH", "FitConfig", "HEAVY", "MILD",
           "MILD_SIGMA", "MILD_STEP_CAP", "NLM_STRENGTH", "OtherFitError", "REMOVAL_LIMIT", "STOP_EVERY",
           "STOP_RATIO", "TARGET_PHOTOS", "TARGET_SIDE", "blind_spot_for", "centre_crop", "centre_crops", "choose",
           "cosine_lr", "fit", "output_check", "removal_ratio", "target_ratio"]
