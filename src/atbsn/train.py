"""Self-supervised training of the AT-BSN teacher: L1 between net(x, k_a) and the noisy x itself."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .blindspot import validate_k
from .config import ModelConfig, RunConfig
from .engine import Method, Trainer
from .errors import AtbsnError
from .losses import BlindSpotL1
from .teacher import ATBSN


def teacher_method(config: RunConfig, device: torch.device | None = None,  # noqa: ARG001
                   init: nn.Module | None = None) -> Method:
    """An AT-BSN of ``config.width`` (fresh, or starting from the teacher ``init``) and the loss at k_a."""
    loss = BlindSpotL1(config.k_train)
    model = ATBSN(config=ModelConfig("atbsn", width=config.width, k_infer=validate_k(config.k_infer),
                                     k_train=loss.k_train, train_crop=config.crop))
    start = "fresh"
    if init is not None:
        start_from(model, init)
        start = f"starting from {init.config.training.get('released', 'the given teacher')}"
    n = sum(p.numel() for p in model.parameters())
    return Method(model, loss, f"training AT-BSN (width {config.width}, {n:,} parameters, {start}): blind spot "
                               f"k_a = {loss.k_train} for training, k_b = {config.k_infer} for inference")


def start_from(model: nn.Module, init: nn.Module) -> nn.Module:
    """Copy the weights and input scale of ``init`` (same architecture and width) into ``model``."""
    if init.config.arch != model.config.arch or init.config.width != model.config.width:
        raise AtbsnError(f"cannot start a {model.config.arch} network of width {model.config.width} from a "
                         f"{init.config.arch} of width {init.config.width}")
    model.load_state_dict(init.state_dict())
    model.config.value_range = init.config.value_range
    return model


def train(config: RunConfig, resume: bool = False, stop_after: int | None = None, progress: bool = True,
          init: nn.Module | None = None) -> dict:
    """Train (or resume) a teacher, from scratch or from ``init``; leaves ``last.safetensors`` and
    ``best.safetensors`` in ``config.out``."""
    return Trainer(config, partial(teacher_method, init=init), resume=resume).run(stop_after=stop_after,
                                                                                   progress=progress)
