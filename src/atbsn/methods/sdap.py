"""SDAP(E) (Pan et al., ICCV 2023): random sub-samples generation (RSG) around AP-BSN's blind-spot network.

Training cuts every noisy patch into p x p cells (p = 5) and, per cell, draws a random order of its 25 pixels:
sub-image j takes the j-th drawn pixel of every cell. Each of the 25 sub-images goes through the blind-spot
network alone, and sub-image j's output is pulled (L1) toward sub-image j + 1 (cyclically): two different
pixels of the same cell, so correlated noise is broken both by the sub-sampling and by the blind spot. There is
no pixel-shuffle downsampling (PD) in training. Inference is AP-BSN-like: PD with stride 2 (the four phase
images in the batch), the network, back; then the "(E)" enhancement, a second pass of the network on that
full-size result without PD.

Constants from the authors' repository (p1y2z3/SDAP, MIT: ``train.py``, ``test.py``, ``model/DBSNl.py``):
DBSNl with base width 128 and 9 modules (:mod:`atbsn.methods.apbsn`'s network; keys without AP-BSN's ``bsn.``
prefix), inputs in 0..1, RSG stride 5 on 160 x 160 patches, batch 16, Adam lr 1e-4 (constant), 50 epochs over
their SIDD crops (here a step count), inference PD stride 2 with the enhancement pass (``test.py``'s default).
Their draw uses numpy's global generator, one ``shuffle`` per cell in (image, cell row, cell column) order;
:func:`draw_cells` draws the same way from a given generator, seeded per (seed, step) here so a resumed run
draws what an uninterrupted one would. Their inference needs even sizes; here odd sizes are reflect-padded at
the bottom and right and cropped back.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..blindspot import execution_path, multiple_pad
from ..config import ModelConfig, RunConfig
from ..losses import Loss, masked_l1
from ..ranges import into_weights, out_of_weights
from . import Arch, Knob, Method, MethodSpec, blind_spot, conv_weight, knob_values, parameters, register, start
from .apbsn import MODULES, SWEEP_STRIDES, DBSNl, validate_stride
from .common import CPU_BUDGET

RSG_STRIDE = 5


def draw_cells(n: int, rows: int, cols: int, rng: np.random.RandomState, p: int = RSG_STRIDE) -> torch.Tensor:
    """p*p x N x rows x cols: for each cell, a random order of its p*p positions (one ``shuffle`` per cell, in
    image, cell row, cell column order, as the authors draw them)."""
    order = np.empty((n * rows * cols, p * p), dtype=np.int64)
    for i in range(len(order)):
        cell = np.arange(p * p)
        rng.shuffle(cell)
        order[i] = cell
    return torch.from_numpy(order.T.reshape(p * p, n, rows, cols).copy())


def subimages(x: torch.Tensor, index: torch.Tensor, p: int = RSG_STRIDE) -> torch.Tensor:
    """p*p x N x C x H/p x W/p: sub-image j takes, in each cell, the pixel at position ``index[j]`` (row-major
    within the p x p cell). H and W must be multiples of p."""
    n, c, h, w = x.shape
    cells = F.pixel_unshuffle(x, p).reshape(n, c, p * p, h // p, w // p)  # position a * p + b on dim 2
    idx = index.to(x.device)[:, :, None, None].expand(-1, -1, c, 1, -1, -1)  # J x N x C x 1 x rows x cols
    return torch.gather(cells[None].expand(p * p, -1, -1, -1, -1, -1), 3, idx).squeeze(3)


class SDAP(DBSNl):
    """SDAP(E): ``forward(x, stride=None, enhance=True)`` on N x C x H x W in 0..255; ``stride`` is the inference
    PD stride (``config.k_infer``, 2), ``enhance`` the second, PD-free pass; ``bare=True`` runs the network alone
    (training's path, through ``forward`` as data-parallel training needs). ``net(x)``: the same on the weights'
    scale."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        config = config or ModelConfig("sdap", width=128, value_range=1.0, k_train=RSG_STRIDE, k_infer=2)
        super().__init__(config.in_channels, config.width, MODULES)
        self.config = config
        with torch.no_grad():
            for m in self.modules():  # the authors' _initialize_weights
                if isinstance(m, nn.Conv2d):
                    m.weight.normal_(0.0, (2 / (9.0 * 64)) ** 0.5)

    def net(self, x: torch.Tensor) -> torch.Tensor:
        """The blind-spot network itself, on the weights' scale."""
        return super().forward(x)

    def forward(self, x: torch.Tensor, stride: int | None = None, enhance: bool = True,
                bare: bool = False) -> torch.Tensor:
        if bare:
            return out_of_weights(self.net(into_weights(x, self.config.value_range)), self.config.value_range)
        s = blind_spot(self.config, stride)
        h, w = x.shape[-2:]
        ph, pw = multiple_pad(h, s), multiple_pad(w, s)
        y = into_weights(x, self.config.value_range)
        exporting = execution_path() == "export"  # symbolic sizes: pad unconditionally
        if ph or pw or exporting:
            y = F.pad(y, (0, pw, 0, ph), mode="reflect" if exporting or ph < h and pw < w else "replicate")
        n, c, hh, ww = y.shape
        # the phase images in the batch, sub-image s*s*n + s*i + j = y[n, :, i::s, j::s] (the authors' order)
        phases = y.reshape(n, c, hh // s, s, ww // s, s).permute(0, 3, 5, 1, 2, 4).reshape(-1, c, hh // s, ww // s)
        out = self.net(phases).reshape(n, s, s, c, hh // s, ww // s).permute(0, 3, 4, 1, 5, 2).reshape(n, c, hh, ww)
        if enhance:
            out = self.net(out)
        return out_of_weights(out[..., :h, :w], self.config.value_range)


class RSGL1(Loss):
    """SDAP's cyclic loss: the sum over j of L1(net(sub-image j), sub-image j + 1) for a fresh RSG draw."""

    def __init__(self, seed: int = 0, p: int = RSG_STRIDE) -> None:
        super().__init__()
        self.seed, self.p = seed, p
        self.rng = np.random.RandomState(seed)

    def at(self, step: int, steps: int) -> None:
        self.rng = np.random.RandomState((self.seed * 1_000_003 + step) % 2**32)  # a function of (seed, step)

    def draw(self, n: int, rows: int, cols: int) -> torch.Tensor:
        """This step's random sub-sampling: each cell's positions in a random order (``draw_cells``)."""
        return draw_cells(n, rows, cols, self.rng, self.p)

    def forward(self, model: nn.Module, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        p = self.p
        h, w = y.shape[-2] // p * p, y.shape[-1] // p * p  # whole cells only
        y, mask = y[..., :h, :w], mask[..., :h, :w].expand(-1, 1, -1, -1).to(y.dtype)
        index = self.draw(y.shape[0], h // p, w // p)
        subs, masks = subimages(y, index, p), subimages(mask, index, p)
        j, n = p * p, y.shape[0]
        # the 25 sub-images in one batch (the network mixes no images: the same as the authors' 25 passes)
        flat = subs.reshape(j * n, *subs.shape[2:]).contiguous(memory_format=torch.channels_last)
        pred = model(flat, bare=True).reshape(subs.shape)
        target, weight = subs.roll(-1, 0), masks * masks.roll(-1, 0)  # sub-image j + 1 (cyclically)
        return sum(masked_l1(pred[i], target[i], weight[i]) for i in range(j))


def _detect(sd, value_range: float) -> ModelConfig | None:  # noqa: ARG001 - the authors' files are on 0..1
    """The authors' bare DBSNl state dict: AP-BSN's keys without its ``bsn.`` prefix."""
    if "head.0.weight" in sd and "branch1.body.0.mask" in sd:
        w = conv_weight(sd, "head.0.weight")
        return ModelConfig("sdap", width=w.shape[0], in_channels=w.shape[1], value_range=1.0, k_train=RSG_STRIDE,
                           k_infer=2)
    return None


# The control: the PD stride at inference (2); the RSG stride for training (5). DBSNl has no pooling: tiled from
# free memory (AP-BSN's constants: the same network); the enhancement pass doubles the reach of its context.
STRIDE = Knob("stride", "PD stride (inference) / RSG stride (training)", train=RSG_STRIDE, infer=2,
              sweep=SWEEP_STRIDES, validate=validate_stride, span=lambda s: 2 * s)
register(Arch("sdap", "SDAP(E)", SDAP, _detect, bytes_per_pixel=1200, margin=160, knob=STRIDE,
              tile_at_train_crop=False))


def make(config: RunConfig, init=None) -> Method:
    """SDAP of base width ``config.width``: RSG stride ``k_train`` in training, PD stride ``k_infer`` recorded."""
    p, stride = knob_values(config, SPEC)
    model = SDAP(ModelConfig("sdap", width=config.width, value_range=1.0, k_train=p, k_infer=stride))
    how = start(model, init)
    return Method(model, RSGL1(config.seed, p),
                  f"training SDAP (base width {config.width}, {parameters(model)} parameters, {how}): random "
                  f"sub-samples of stride {p} for training, PD stride {stride} and the enhancement pass for inference")


SPEC = register(MethodSpec("sdap", "SDAP(E)", "sdap", make, presets={
    "sidd": {"steps": 100_000, "batch": 16, "crop": 160, "width": 128, "lr": 1e-4, "k_train": 5, "k_infer": 2},
    "cpu": {**CPU_BUDGET, "crop": 60, "width": 32, "k_train": 5, "k_infer": 2},
}))
