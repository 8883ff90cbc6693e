"""Self-supervised training of the AT-BSN teacher: L1 between net(x, k_a) and the noisy x itself."""

from __future__ import annotations

import torch
from torch import nn

from .blindspot import validate_k
from .config import ModelConfig
from .engine import RunConfig, Trainer, masked_l1
from .teacher import ATBSN


class TeacherTask:
    """The blind spot (k_a) hides the pixel being predicted, so the noisy image is its own target."""

    def __init__(self, config: RunConfig, device: torch.device) -> None:
        self.k_train = validate_k(config.k_train)
        validate_k(config.k_infer)
        if self.k_train == 0:
            raise ValueError("k_train = 0 hides nothing: the network would learn the identity; use k_a >= 1")
        self.config = config
        self.model = ATBSN(config=ModelConfig("atbsn", width=config.width, k_infer=config.k_infer,
                                              k_train=self.k_train, train_crop=config.crop))

    def loss(self, net: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_l1(net(x, self.k_train), x, mask)

    def describe(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return (f"training AT-BSN (width {self.config.width}, {n:,} parameters): blind spot k_a = {self.k_train} "
                f"for training, k_b = {self.config.k_infer} for inference")


def train(config: RunConfig, resume: bool = False, stop_after: int | None = None, progress: bool = True) -> dict:
    """Train (or resume) a teacher; leaves ``last.safetensors`` and ``best.safetensors`` in ``config.out``."""
    return Trainer(config, TeacherTask, resume=resume).run(stop_after=stop_after, progress=progress)
