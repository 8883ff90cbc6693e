"""Multi-teacher distillation: a non-blind student learns from one frozen AT-BSN at several blind spots."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import torch
from torch import nn

from . import methods
from .checkpoint import load
from .classical import ClassicalTeacher, bm3d_teacher, nlm_teacher
from .config import RunConfig
from .engine import Trainer, saved_config
from .errors import AtbsnError
from .files import file_sha256
from .losses import DistillL1
from .methods import Method, start_from
from .released import resolve
from .students import Student, init_from_teacher


def distill_loss(teacher: nn.Module, config: RunConfig) -> DistillL1:
    """The distillation loss a run's options ask for, with non-local means (``--nlm-h``) or BM3D
    (``--bm3d-sigma``) as a classical teacher."""
    classical, weight = classical_teacher(config)
    return DistillL1(teacher, config.ks, config.loss, config.texture_threshold, classical, weight)


def classical_teacher(config: RunConfig) -> tuple[ClassicalTeacher | None, float]:
    """The classical teacher a run's options ask for (a function of the noisy batch) and its weight."""
    if config.nlm_h and config.bm3d_sigma:
        raise AtbsnError("--nlm-h and --bm3d-sigma: give one classical teacher")
    if config.bm3d_sigma:
        return bm3d_teacher(config.bm3d_sigma), config.bm3d_weight
    if config.nlm_h:
        return nlm_teacher(config.nlm_h), config.nlm_weight
    return None, 0.0


def classical_words(config: RunConfig) -> str:
    """The classical teacher in words, for the log ('' without one)."""
    if config.bm3d_sigma and config.bm3d_weight:
        return f", each target moved {config.bm3d_weight:g} of the way to BM3D at sigma {config.bm3d_sigma:.1f}"
    if config.nlm_h and config.nlm_weight:
        return f", each target moved {config.nlm_weight:g} of the way to NLM at h = {config.nlm_h:.1f}"
    return ""


def distill_method(config: RunConfig, device: torch.device, teacher: nn.Module | None = None,
                   init: nn.Module | None = None) -> Method:
    """Student ``config.student`` (fresh, or starting from the student ``init``) and the distillation loss from
    ``teacher`` (else ``config.teacher``: a file or a released model's name)."""
    if teacher is None:
        if not config.teacher:
            raise AtbsnError("distillation needs a teacher checkpoint (--teacher)")
        teacher = load(config.teacher, part="teacher")
    if not teacher.config.is_teacher:
        raise AtbsnError(f"{config.teacher or 'teacher'}: distillation needs an AT-BSN teacher (its blind spot k is "
                         f"chosen per call; also {methods.titles(lambda a: a.teacher)}), not a "
                         f"{teacher.config.arch!r} network")
    teacher = teacher.to(device, memory_format=torch.channels_last)
    loss = distill_loss(teacher, config)
    tc = teacher.config
    width = init.config.width if init is not None else tc.width  # C: the teacher's UNet
    model = Student(config.student, in_channels=tc.in_channels, width=width)
    if init is not None:
        start_from(model, init)
    elif config.init_from_teacher:
        init_from_teacher(model, teacher)
    model.config.ks = list(loss.ks)
    model.config.train_crop = config.crop
    n = sum(p.numel() for p in model.parameters())
    return Method(model, loss, f"distilling student {config.student} ({n:,} parameters) from "
                               f"{config.teacher or 'the given teacher'} at k in {loss.ks} ({config.loss} loss)"
                               + classical_words(config)
                               + (", starting from the given student" if init is not None else
                                  ", initialised from the teacher" if config.init_from_teacher else ""))


def distill(config: RunConfig, resume: bool = False, stop_after: int | None = None, progress: bool = True,
            init: nn.Module | None = None) -> dict:
    """Distill (or resume) a student, fresh or from ``init``; leaves ``last.safetensors`` and
    ``best.safetensors`` in ``config.out``. The teacher file's digest goes with the run: a resume finds the
    teacher by the saved path (or a new ``teacher``) and refuses one whose contents changed."""
    if resume and not config.teacher:
        saved = saved_config(config.out)
        config = replace(config, teacher=saved.teacher if saved else None)
    if config.teacher:
        config = replace(config, teacher_sha256=file_sha256(resolve(config.teacher)[0], config.teacher))
    return Trainer(config, partial(distill_method, init=init), resume=resume).run(stop_after=stop_after,
                                                                                   progress=progress)
