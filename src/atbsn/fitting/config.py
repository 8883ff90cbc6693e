"""The options of ``fit`` (:class:`FitConfig`), each defined once: the command line is generated from them."""

from __future__ import annotations

from dataclasses import dataclass

from .. import methods
from ..adapt import COLOUR_BOUND, COLOUR_GUARDS
from ..config import MINUTES_MAX, PRECISION_CHOICES, PRECISION_HELP, SEED_MAX, STEPS_MAX, check_options, option
from ..errors import AtbsnError


@dataclass
class FitConfig:
    """Defaults: a laptop-sized recipe found by measurement (``benchmarks/recipe.py``, results in
    ``benchmarks/results/recipe.md``): width 16, 64-pixel crops, lr 2e-3, the precision by measurement (bf16
    where the device computes it natively and a probe finds it faster: twice the steps in the same minutes),
    and the student distilled by the partition loss: flat areas from the teacher at its own k_b, textured ones
    from k = 0. After minutes, not days, of training the teacher is far from converged and every extra pixel of
    blind spot costs texture: on the demo's photos its output falls from 28.3 dB at k = 0 to 22.8 at k = 11, so
    the paper's k in 0..11 (right for a converged teacher) gave a blurred student (``benchmarks/fit_targets.py``
    compares the partition with the mean of k = 0 and 1, the default before).
    """

    width: int = option(16, "channels of the teacher's UNet", low=1)
    crop: int = option(64, "patch side in pixels", low=8)
    batch: int = option(8, "patches per step", low=1)
    teacher_steps: int = option(1_500, "teacher training steps", low=1, high=STEPS_MAX)
    student_steps: int = option(600, "distillation steps", low=1, high=STEPS_MAX)
    student: str = option("C", "student network (from a released model: its own student when it has one)",
                          choices=methods.student_names)
    ks: list[int] | None = option(None, "teacher blind-spot sizes the student learns from (default: the partition's "
                                  "k_b and 0 from scratch, 0 1 for --loss mean or multi; from a released model the "
                                  "paper's 0 1 3 5 7 9 11)", low=0)
    loss: str | None = option(None, "distillation loss: multi (one L1 per teacher), mean (L1 to their mean) or "
                              "partition (--ks FLAT TEXTURED by a texture map; without --ks: the teacher's k_b and "
                              "0); default partition from scratch, multi (the paper's) from a released model",
                              choices=("multi", "mean", "partition"))
    nlm_weight: float | None = option(None, "a classical teacher: how far each distillation target moves toward OpenCV "
                                      "non-local means at 1.5x the photos' measured noise (0, the default: the "
                                      "blind-spot teachers alone; 1: NLM alone)", low=0.0, high=1.0)
    bm3d_weight: float | None = option(None, "a classical teacher instead: how far each distillation target moves "
                                       "toward BM3D at the photos' measured noise (0, the default: none; seconds a "
                                       "photo, computed once per photo with the targets)", low=0.0, high=1.0)
    k_train: int | None = option(None, "blind-spot size k_a for training (default: from the photos' measured noise, 9 "
                                 "for heavy noise; from a released model: the one it records)", low=1)
    k_infer: int | None = option(None, "blind-spot size k_b of the teacher (default: from the photos' measured noise, "
                                 "3 for heavy noise; from a released model: its own)", low=0)
    safeguard: bool | None = option(None, "make the model blend outputs toward the input where it removed clearly "
                                    "more than the measured noise (denoise's --safeguard, recorded in the file; "
                                    "default: on for mild noise)")
    keep_colour: bool | None = option(None, "make the model put back the smooth part of what it removed (denoise's "
                                      "--keep-colour: outputs keep the input's local mean colour; recorded in the "
                                      "file; default: on for mild noise)")
    colour_guard: str | None = option(None, "make the model bound how far each channel's mean may move from the "
                                      f"input's, {COLOUR_BOUND:g} of 255 (denoise's --colour-guard, recorded in the "
                                      "file; default: darkening for heavy noise, off for mild noise, where "
                                      "--keep-colour holds it)", choices=COLOUR_GUARDS)
    stop_at_noise: bool | None = option(None, "stop the teacher early once its outputs remove less than the photos' "
                                        "measured noise (it has begun to copy correlated noise; default: on for "
                                        "mild noise)")
    lr: float = option(2e-3, "Adam learning rate of both phases (from a released model: --finetune-lr)", low=0.0)
    seed: int = option(0, "random seed", low=0, high=SEED_MAX)
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    precision: str = option("auto", PRECISION_HELP + "; fit times both where bf16 is native and keeps the faster",
                            choices=PRECISION_CHOICES)
    on_bad_file: str = option("fail", "an unreadable image stops the run or is skipped", choices=("fail", "skip"))
    init_from_teacher: bool = option(True, "start a student that shares the teacher's UNet (C) from it", cli=False)
    cache_targets: bool = option(True, "the student learns from the teacher's targets computed once per photo, not "
                                 "on every batch, where that is less work (distill --cache-targets; "
                                 "benchmarks/results/cached_targets.md)", cli=False)
    from_model: str | None = option(None, "a released model (name or file): one with a teacher is fine-tuned on the "
                                    "photos instead of training from scratch; a student alone is weighed against "
                                    "the fitted one; 'best' downloads every released student to weigh (released "
                                    "students already in the cache are always weighed)", flag="--from")
    fitted_only: bool = option(False, "write the fitted student, without weighing the released students in the cache "
                               "(or --from's student alone) against it on the photos")
    finetune_lr: float = option(1e-4, "learning rate of both phases when starting from a released model",
                                low=0.0)
    minutes: float | None = option(None, "time budget for both phases (sets the step counts)", low=0.1,
                                   high=MINUTES_MAX)
    step_cap: list[int] | None = option(None, "the most teacher and student steps a fit takes, whatever --minutes "
                                        "or the step counts say (default: 400 700 for mild noise, where longer "
                                        "fits lose; none for heavy noise)", low=1, high=STEPS_MAX)
    student_share: float = option(0.3, "share of the budget for distillation", low=0.0, high=1.0)

    def __post_init__(self) -> None:
        check_options(self)
        knob = methods.arch("atbsn").knob  # fit trains an AT-BSN teacher: its rules for k
        given = [("--k-train", self.k_train), ("--k-infer", self.k_infer), *(("--ks", k) for k in self.ks or ())]
        if self.loss == "partition" and self.ks is not None and len(self.ks) != 2:
            raise AtbsnError(f"--loss partition takes two k, for flat and for textured areas (--ks 3 0), got {self.ks}")
        if self.step_cap is not None and len(self.step_cap) != 2:
            raise AtbsnError(f"--step-cap takes two numbers (teacher steps, student steps), got {self.step_cap}")
        for flag, k in (g for g in given if g[1] is not None):
            knob.check(flag, k, train=flag == "--k-train", crop=None if flag == "--k-infer" else self.crop)
