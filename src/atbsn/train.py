"""Self-supervised training of the AT-BSN teacher: L1 between net(x, k_a) and the noisy x itself."""

from __future__ import annotations

import torch

from .blindspot import validate_k
from .config import ModelConfig, RunConfig
from .engine import Method, Trainer
from .losses import BlindSpotL1
from .teacher import ATBSN


def teacher_method(config: RunConfig, device: torch.device | None = None) -> Method:  # noqa: ARG001
    """A fresh AT-BSN of ``config.width`` and the blind-spot loss at k_a."""
    loss = BlindSpotL1(config.k_train)
    model = ATBSN(config=ModelConfig("atbsn", width=config.width, k_infer=validate_k(config.k_infer),
                                     k_train=loss.k_train, train_crop=config.crop))
    n = sum(p.numel() for p in model.parameters())
    return Method(model, loss, f"training AT-BSN (width {config.width}, {n:,} parameters): blind spot "
                               f"k_a = {loss.k_train} for training, k_b = {config.k_infer} for inference")


def train(config: RunConfig, resume: bool = False, stop_after: int | None = None, progress: bool = True) -> dict:
    """Train (or resume) a teacher; leaves ``last.safetensors`` and ``best.safetensors`` in ``config.out``."""
    return Trainer(config, teacher_method, resume=resume).run(stop_after=stop_after, progress=progress)
