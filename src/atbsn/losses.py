"""Training losses. A loss is called as ``loss(model, y, mask)``: it runs ``model`` on the noisy batch
``y`` the way its method needs (a blind spot, a sub-sampler, a frozen teacher) and returns a scalar.

``mask`` is 1 on real pixels and 0 on the zero padding of patches cut from images smaller than the crop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .blindspot import validate_k_train
from .errors import AtbsnError
from .metrics import local_std


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the real pixels (mask 1) of zero-padded patches."""
    return ((pred.float() - target.float()).abs() * mask).sum() / (mask.sum() * pred.shape[1]).clamp_min(1.0)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real pixels (mask 1)."""
    return ((pred.float() - target.float()).square() * mask).sum() / (mask.sum() * pred.shape[1]).clamp_min(1.0)


class Loss(nn.Module):
    """The contract every method's loss keeps (the trainer knows nothing else about the method).

    The trainer calls :meth:`at` before each step: losses whose weights follow a schedule (Neighbor2Neighbor,
    Blind2Unblind) or that draw random masks read the step there, so a resumed run computes what an
    uninterrupted one would (validation on held-out patches uses ``at(0, 1)``).
    """

    def at(self, step: int, steps: int) -> None:
        """The step about to be taken (0-based) of ``steps``; most losses ignore it."""

    def forward(self, model: nn.Module, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class SelfL1(Loss):
    """L1 between the network's output and the noisy ``y`` itself, at one value of its blind-spot control
    (``control``; None: the network's training path decides). The self-supervised loss of every network whose
    blind spot hides the noise it predicts: AT-BSN, AP-BSN, LG-BPN, TM-BSN (each validates its own control)."""

    def __init__(self, control: int | None = None) -> None:
        super().__init__()
        self.control = control

    def forward(self, model: nn.Module, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_l1(model(y) if self.control is None else model(y, self.control), y, mask)


class BlindSpotL1(SelfL1):
    """AT-BSN's self-supervised loss: L1 between ``model(y, k_a)`` and the noisy ``y`` itself.

    The k_a x k_b blind spot hides the pixel being predicted and its correlated neighbours, so the noisy
    image can be its own target.
    """

    def __init__(self, k_train: int) -> None:
        super().__init__(validate_k_train(k_train))
        self.k_train = self.control


DISTILL_MODES = ("multi", "mean", "partition")


class DistillL1(Loss):
    """Distillation from one frozen multi-k teacher (AT-BSN; also TM-BSN) at several blind spots ``ks``.

    ``multi`` (the paper's): one L1 term per teacher; ``mean``: L1 to the teachers' average (ablation S4);
    ``partition`` (ablation S4, after the region partitioning of Spatially-Adaptive SSL, Li et al., CVPR
    2023): ``ks`` is (k for flat areas, k for textured ones), 9 and 0 in the paper; the partition comes from
    an initial result, the teacher at its own k_b: a pixel is textured where the local standard deviation of
    that result's luma (7 x 7 window, 0..255 scale) exceeds ``threshold``. The teacher's backbone runs once
    per batch (``ATBSN.teachers``); each k is a shift plus the 1x1 head. The teacher is held outside the
    module tree, so it is neither trained nor saved with the student.

    ``classical`` adds a classical teacher (issue 42; an ``atbsn.classical.ClassicalTeacher``, non-local means
    or BM3D at the photos' noise): a function of the noisy batch, and every target moves toward its output by
    ``classical_weight`` (0: the blind-spot teachers alone, 1: the classical one alone).
    """

    def __init__(self, teacher: nn.Module, ks: Sequence[int], mode: str = "multi", threshold: float = 5.0,
                 classical: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 classical_weight: float = 0.0) -> None:
        super().__init__()
        if mode not in DISTILL_MODES:
            raise AtbsnError(f"unknown distillation loss {mode!r} ({' or '.join(DISTILL_MODES)})")
        self.ks = [teacher.config.family.knob.check("--ks", k) for k in ks]  # the teacher's own rule (k, hole)
        if not self.ks:
            raise AtbsnError("distillation needs at least one k (--ks)")
        if mode == "partition" and len(self.ks) != 2:
            raise AtbsnError(f"--loss partition takes two k, for flat and for textured areas (the paper: --ks 9 0), "
                             f"got {self.ks}")
        if not 0.0 <= classical_weight <= 1.0:
            raise AtbsnError(f"the classical teacher's weight must be in 0..1, got {classical_weight}")
        self.mode, self.threshold = mode, float(threshold)
        self.classical, self.classical_weight = ((classical, float(classical_weight)) if classical and classical_weight
                                                 else (None, 0.0))
        self._teacher = [teacher.eval().requires_grad_(False)]

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def partition(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the combined target, the texture map: 1 textured, 0 flat) of the partition loss."""
        ks = [*self.ks, self.teacher.config.k_infer]  # the initial result is often the flat areas' k: run it once
        unique = list(dict.fromkeys(ks))
        out = dict(zip(unique, self.teacher.teachers(y, unique)))
        flat, texture, initial = (out[k] for k in ks)
        textured = (local_std(initial) > self.threshold).to(flat.dtype)
        return flat + textured * (texture - flat), textured

    def targets(self, y: torch.Tensor, classical: bool = True) -> list[torch.Tensor]:
        """What the student is taught on ``y``: one target per teacher (``multi``) or one combined target; with
        ``classical`` False, before the classical teacher moves them (:meth:`blend`)."""
        with torch.no_grad():
            if self.mode == "partition":
                targets = [self.partition(y)[0]]
            else:
                targets = self.teacher.teachers(y, self.ks)
                if self.mode == "mean":
                    targets = [torch.stack(targets).mean(0)]
            if classical and self.classical is not None:
                targets = self.blend(targets, self.classical(y))
        return targets

    def blend(self, targets: list[torch.Tensor], other: torch.Tensor) -> list[torch.Tensor]:
        """Each target moved toward the classical teacher's output ``other`` by its weight."""
        other = other.to(targets[0].device, targets[0].dtype)
        return [t.lerp(other, self.classical_weight) for t in targets]

    @property
    def n_targets(self) -> int:
        """How many targets :meth:`targets` returns."""
        return len(self.ks) if self.mode == "multi" else 1

    def forward(self, model: nn.Module, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``y``: the noisy batch, or the noisy batch with the targets appended as further channels (computed
        once per photo, :func:`atbsn.engine.photo_targets`), which are then used instead of the teacher."""
        c = self.teacher.config.in_channels
        if y.shape[1] > c:
            y, targets = y[:, :c], list(y[:, c:].split(c, 1))
        else:
            targets = self.targets(y)
        pred = model(y)
        return sum(masked_l1(pred, t, mask) for t in targets)
