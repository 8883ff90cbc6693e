"""Where a fit starts, as data: from scratch, or from a released model (its teacher fine-tuned, its student the
distillation's start)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..checkpoint import load_parts
from ..errors import AtbsnError
from .candidates import BEST
from .config import FitConfig
from .rule import FROM_RELEASED, FROM_SCRATCH, HEAVY, SCRATCH_KS, partition_ks


@dataclass
class Start:
    """Where a fit starts, as data: the networks it begins from (none from scratch) and the choices that follow
    from them. Everything else in :func:`fit` is one recipe for both starts."""

    source: str | None  # the released model (name or file), None from scratch
    teacher: nn.Module | None
    student: nn.Module | None
    lr: float
    ks: list[int]
    loss: str
    teacher_shape: dict[str, Any]  # width, k_train, k_infer of the teacher
    student_arch: str


def start_parts(cfg: FitConfig) -> dict[str, nn.Module]:
    """The networks of ``--from`` (none from scratch or for ``--from best``), read once, checked: an AT-BSN teacher
    or AT-BSN(D) bundle to fine-tune, or a student alone (one more candidate for the end, :mod:`.candidates`)."""
    if not cfg.from_model or cfg.from_model == BEST:
        return {}
    parts = load_parts(cfg.from_model)
    other = next((m for m in parts.values() if m.config.knob not in (None, "k")), None)
    if other is not None:  # a blind-spot network of another method: not a teacher fit can tune
        raise AtbsnError(f"{cfg.from_model}: its network is {other.config.arch!r}, not AT-BSN; --from takes an AT-BSN "
                         "teacher or an AT-BSN(D) file (it can still denoise: atbsn denoise --model)")
    return parts


def start_of(cfg: FitConfig, parts: dict[str, nn.Module]) -> Start:
    """The start ``cfg`` asks for, from :func:`start_parts`: from scratch (also beside a student alone), or the
    released teacher fine-tuned (its shape the released one) and its student, if any, the distillation's start."""
    if "teacher" not in parts:
        loss = cfg.loss or FROM_SCRATCH["loss"]
        ks = cfg.ks or (partition_ks(cfg.k_infer) if loss == "partition" else SCRATCH_KS)
        return Start(None, None, None, cfg.lr, ks, loss,
                     {"width": cfg.width, "k_train": cfg.k_train, "k_infer": cfg.k_infer}, cfg.student)
    t, student = parts["teacher"].config, parts.get("student")
    ks = cfg.ks or (partition_ks(t.k_infer) if cfg.loss == "partition" else FROM_RELEASED["ks"])
    return Start(cfg.from_model, parts["teacher"], student, cfg.finetune_lr, ks,
                 cfg.loss or FROM_RELEASED["loss"],
                 {"width": t.width, "k_train": t.k_train or cfg.k_train or HEAVY["k_train"], "k_infer": t.k_infer},
                 student.config.arch if student is not None else cfg.student)
