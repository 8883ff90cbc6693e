"""Self-supervised training: the AT-BSN teacher (L1 between net(x, k_a) and the noisy x itself) and, in the
same engine, the rival methods the paper compares with (:mod:`atbsn.methods`)."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .blindspot import validate_k
from .config import ModelConfig, RunConfig
from .engine import Method, Trainer
from .errors import AtbsnError
from .losses import BlindSpotL1
from .methods.apbsn import APBSN, PDBlindSpotL1, validate_stride
from .methods.b2u import Blind2UnblindLoss
from .methods.n2n import Neighbor2NeighborLoss
from .students import Student
from .teacher import ATBSN


def teacher_method(config: RunConfig, device: torch.device | None = None,  # noqa: ARG001
                   init: nn.Module | None = None) -> Method:
    """An AT-BSN of ``config.width`` (fresh, or starting from the teacher ``init``) and the loss at k_a."""
    loss = BlindSpotL1(config.k_train)
    model = ATBSN(config=ModelConfig("atbsn", width=config.width, k_infer=validate_k(config.k_infer),
                                     k_train=loss.k_train, train_crop=config.crop))
    start = _start(model, init)
    return Method(model, loss, f"training AT-BSN (width {config.width}, {_params(model)} parameters, {start}): "
                               f"blind spot k_a = {loss.k_train} for training, k_b = {config.k_infer} for inference")


def apbsn_method(config: RunConfig, device: torch.device | None = None,  # noqa: ARG001
                 init: nn.Module | None = None) -> Method:
    """AP-BSN of base width ``config.width``: PD stride ``stride_train`` in training, ``stride_infer`` recorded."""
    loss = PDBlindSpotL1(config.stride_train)
    model = APBSN(ModelConfig("apbsn", width=config.width, k_train=loss.stride,
                              k_infer=validate_stride(config.stride_infer)))
    start = _start(model, init)
    return Method(model, loss, f"training AP-BSN (base width {config.width}, {_params(model)} parameters, {start}): "
                               f"PD stride {loss.stride} for training, {config.stride_infer} for inference")


def _plain_unet(config: RunConfig, init: nn.Module | None, loss, name: str) -> Method:
    """A rival trained on a plain UNet (student C's network) that sees 0..1 values, as its authors' does."""
    model = Student("C", width=config.width)
    model.config.value_range = 1.0
    start = _start(model, init)
    return Method(model, loss, f"training {name} (UNet width {config.width}, {_params(model)} parameters, {start}); "
                               "a non-blind network at inference")


def n2n_method(config: RunConfig, device: torch.device | None = None,  # noqa: ARG001
               init: nn.Module | None = None) -> Method:
    return _plain_unet(config, init, Neighbor2NeighborLoss(config.seed), "Neighbor2Neighbor")


def b2u_method(config: RunConfig, device: torch.device | None = None,  # noqa: ARG001
               init: nn.Module | None = None) -> Method:
    return _plain_unet(config, init, Blind2UnblindLoss(), "Blind2Unblind")


METHOD_FACTORIES = {"atbsn": teacher_method, "n2n": n2n_method, "b2u": b2u_method, "apbsn": apbsn_method}


def _params(model: nn.Module) -> str:
    return f"{sum(p.numel() for p in model.parameters()):,}"


def _start(model: nn.Module, init: nn.Module | None) -> str:
    if init is None:
        return "fresh"
    start_from(model, init)
    return f"starting from {init.config.training.get('released', 'the given network')}"


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
    """Train (or resume) ``config.method`` (the AT-BSN teacher by default), from scratch or from ``init``;
    leaves ``last.safetensors`` and ``best.safetensors`` in ``config.out``."""
    factory = partial(METHOD_FACTORIES[config.method], init=init)
    return Trainer(config, factory, resume=resume).run(stop_after=stop_after, progress=progress)
