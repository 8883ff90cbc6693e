"""Self-supervised training of any registered method (the AT-BSN teacher by default) by the one engine."""

from __future__ import annotations

from torch import nn

from . import methods
from .config import RunConfig
from .engine import Trainer


def train(config: RunConfig, resume: bool = False, stop_after: int | None = None, progress: bool = True,
          init: nn.Module | None = None) -> dict:
    """Train (or resume) ``config.method`` (the AT-BSN teacher by default), from scratch or from ``init``;
    leaves ``last.safetensors`` and ``best.safetensors`` in ``config.out``."""
    make = methods.method(config.method).make
    return Trainer(config, lambda cfg, device: make(cfg, init=init), resume=resume).run(
        stop_after=stop_after, progress=progress)
