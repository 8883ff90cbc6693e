"""Multi-teacher distillation: a non-blind student learns from one frozen AT-BSN at several blind spots.

The teacher's backbone runs once per batch (``ATBSN.teachers``); each k is a shift plus the 1x1 head.
Loss ``multi`` (the paper's): one L1 term per teacher; ``mean``: L1 to the teachers' average (ablation).
"""

from __future__ import annotations

import torch
from torch import nn

from .blindspot import validate_k
from .checkpoint import load
from .engine import RunConfig, Trainer, masked_l1
from .errors import AtbsnError
from .students import Student, init_from_teacher


class DistillTask:
    def __init__(self, config: RunConfig, device: torch.device) -> None:
        if not config.teacher:
            raise AtbsnError("distillation needs a teacher checkpoint (--teacher)")
        if config.loss not in ("multi", "mean"):
            raise AtbsnError(f"unknown distillation loss {config.loss!r} (multi or mean)")
        self.ks = [validate_k(k) for k in config.ks]
        if not self.ks:
            raise AtbsnError("distillation needs at least one k (--ks)")
        self.teacher = load(config.teacher, part="teacher").to(device).eval()
        if device.type == "cpu":
            self.teacher.to(memory_format=torch.channels_last)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.config = config
        tc = self.teacher.config
        self.model = Student(config.student, in_channels=tc.in_channels, width=tc.width)  # C: the teacher's UNet
        if config.init_from_teacher:
            init_from_teacher(self.model, self.teacher)
        self.model.config.ks = list(self.ks)
        self.model.config.train_crop = config.crop

    def loss(self, net: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            targets = self.teacher.teachers(x, self.ks)
        pred = net(x)
        if self.config.loss == "mean":
            return masked_l1(pred, torch.stack(targets).mean(0), mask)
        return sum(masked_l1(pred, t, mask) for t in targets)

    def describe(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return (f"distilling student {self.config.student} ({n:,} parameters) from {self.config.teacher} at "
                f"k in {self.ks} ({self.config.loss} loss)"
                + (", initialised from the teacher" if self.config.init_from_teacher else ""))


def distill(config: RunConfig, resume: bool = False, stop_after: int | None = None, progress: bool = True) -> dict:
    """Distill (or resume) a student; leaves ``last.safetensors`` and ``best.safetensors`` in ``config.out``."""
    return Trainer(config, DistillTask, resume=resume).run(stop_after=stop_after, progress=progress)
