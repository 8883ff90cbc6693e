"""AP-BSN (Lee, Son and Lee, CVPR 2022): pixel-shuffle downsampling around a dilated blind-spot network.

Real sRGB noise is spatially correlated, so a one-pixel blind spot does not hide it. AP-BSN breaks the
correlation by pixel-shuffle downsampling (PD): the image is split into ``s x s`` sub-images (every s-th
pixel), laid out as a mosaic with ``pad`` zeros between them, and a blind-spot network with a one-pixel
blind spot runs on the mosaic. Training uses a large stride (5) that decorrelates the noise; inference a
small one (2) that keeps detail: the downsampling-based asymmetry of AT-BSN's Table S1.

The blind-spot network is DBSNl, as the authors' repository (wooseoklee4/AP-BSN, MIT, ``src/model``)
builds it: a 1x1 head, two branches that open with a centre-masked convolution (3x3 with dilation-2
modules, 5x5 with dilation-3 modules) followed by nine residual dilated modules, and a 1x1 tail; ReLU
throughout; 128 base channels. Constants from their ``conf/APBSN_SIDD.yaml``: PD stride 5 (train) / 2
(inference), ``pd_pad`` 2, R3 with T = 8 masks and p = 0.16, Adam lr 1e-4, batch 8 of 120 x 120 crops, L1 to
the noisy input. Module names equal theirs (``bsn.head.0``, ``bsn.branch1.body.N``, ...) so their
checkpoints load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..blindspot import execution_path, multiple_pad
from ..config import ModelConfig, RunConfig
from ..errors import AtbsnError
from ..losses import SelfL1
from . import Arch, Knob, Method, MethodSpec, blind_spot, conv_weight, knob_values, parameters, register, start
from .common import CPU_BUDGET

PD_PAD = 2  # zeros between sub-images of the mosaic
MODULES = 9  # residual dilated modules per branch
R3_T, R3_P = 8, 0.16  # random-replacing refinement: masks averaged, share of pixels put back
R3_SEED = 0  # R3 is random; a fixed generator makes denoising reproducible
SWEEP_STRIDES = (1, 2, 3, 4, 5)  # inference strides a sweep tries by default


def validate_stride(stride: object) -> int:
    """A PD stride: a positive integer (1 = no downsampling)."""
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise AtbsnError(f"invalid PD stride {stride!r}: AP-BSN's stride is a positive integer (2 and 5 in the paper)")
    return stride


def pd_down(x: torch.Tensor, stride: int, pad: int = PD_PAD) -> torch.Tensor:
    """Pixel-shuffle downsampling: N x C x H x W -> a mosaic of ``stride^2`` sub-images, ``pad`` zeros around each.

    Sub-image (i, j) holds the pixels at rows i, i + s, ... and columns j, j + s, ...; it sits at block row
    i, block column j of the mosaic. H and W must be multiples of the stride.
    """
    n, c, h, w = x.shape
    s = stride
    sub = F.pixel_unshuffle(x, s)  # N x (C s s) x H/s x W/s, channel index c * s * s + i * s + j
    if pad:
        sub = F.pad(sub, (pad, pad, pad, pad))
    hh, ww = sub.shape[-2:]
    return sub.reshape(n, c, s, s, hh, ww).permute(0, 1, 2, 4, 3, 5).reshape(n, c, s * hh, s * ww)


def pd_up(mosaic: torch.Tensor, stride: int, pad: int = PD_PAD) -> torch.Tensor:
    """The inverse of :func:`pd_down`: drop the padding of each sub-image and interleave them back."""
    n, c, mh, mw = mosaic.shape
    s = stride
    hh, ww = mh // s, mw // s
    sub = mosaic.reshape(n, c, s, hh, s, ww).permute(0, 1, 2, 4, 3, 5).reshape(n, c * s * s, hh, ww)
    if pad:
        sub = sub[..., pad:-pad, pad:-pad]
    return F.pixel_shuffle(sub, s)


class CentreMaskedConv(nn.Conv2d):
    """A convolution whose centre tap is always zero (the ``mask`` buffer multiplies the weight in every
    forward): the output at a pixel never sees that pixel. The authors' checkpoints store the mask too."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__(channels, channels, size, padding=size // 2)
        mask = torch.ones_like(self.weight)
        mask[:, :, size // 2, size // 2] = 0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class DilatedResidual(nn.Module):
    """x + 1x1(ReLU(3x3 conv with dilation d)): dilation d keeps the one-pixel blind spot of the branch."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation),
                                  nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Branch(nn.Module):
    """Masked (2d - 1) x (2d - 1) conv, two 1x1s, ``modules`` dilated residual modules (dilation d), a 1x1.

    An offset a + d b (a inside the masked kernel, not 0) is never 0, so no path reaches the centre.
    """

    def __init__(self, dilation: int, channels: int, modules: int = MODULES) -> None:
        super().__init__()
        layers: list[nn.Module] = [CentreMaskedConv(channels, 2 * dilation - 1), nn.ReLU(inplace=True)]
        for _ in range(2):
            layers += [nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True)]
        layers += [DilatedResidual(channels, dilation) for _ in range(modules)]
        layers += [nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class DBSNl(nn.Module):
    """The dilated blind-spot network of AP-BSN: a one-pixel blind spot, no pooling, no size constraint."""

    def __init__(self, in_channels: int = 3, channels: int = 128, modules: int = MODULES) -> None:
        super().__init__()
        if channels % 2:
            raise AtbsnError(f"AP-BSN's base width must be even, got {channels}")
        self.head = nn.Sequential(nn.Conv2d(in_channels, channels, 1), nn.ReLU(inplace=True))
        self.branch1 = Branch(2, channels, modules)
        self.branch2 = Branch(3, channels, modules)
        half = channels // 2
        self.tail = nn.Sequential(
            nn.Conv2d(2 * channels, channels, 1), nn.ReLU(inplace=True), nn.Conv2d(channels, half, 1),
            nn.ReLU(inplace=True), nn.Conv2d(half, half, 1), nn.ReLU(inplace=True), nn.Conv2d(half, in_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        return self.tail(torch.cat((self.branch1(x), self.branch2(x)), dim=1))


class APBSN(nn.Module):
    """AP-BSN: ``forward(x, stride=None, r3=False)`` on N x C x H x W in 0..255 (the authors' scale).

    ``config.k_train`` / ``config.k_infer`` hold the PD strides for training and inference (5 / 2); the
    stride is chosen per call like AT-BSN's k. H and W are zero-padded at the bottom and right to a
    multiple of the stride and cropped back, as the authors' ``denoise`` does. ``r3`` adds random-replacing
    refinement: T = 8 copies of the PD result with p = 0.16 of the pixels put back to the noisy input, each
    denoised by the blind-spot network without PD, averaged.
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig("apbsn", width=128, k_train=5, k_infer=2)
        self.bsn = DBSNl(self.config.in_channels, self.config.width)
        with torch.no_grad():
            for m in self.modules():  # the authors' initialisation (their "Liyong version")
                if isinstance(m, nn.Conv2d):
                    m.weight.normal_(0.0, (2 / (9.0 * 64)) ** 0.5)

    def forward(self, x: torch.Tensor, stride: int | None = None, r3: bool = False) -> torch.Tensor:
        s = blind_spot(self.config, stride)
        h, w = x.shape[-2:]
        ph, pw = multiple_pad(h, s), multiple_pad(w, s)
        if ph or pw or execution_path() == "export":  # exporting: H and W are symbolic, pad unconditionally
            x = F.pad(x, (0, pw, 0, ph))
        y = self._pd_bsn(x, s)
        if r3:
            y = self._refine(x, y)
        return y[..., :h, :w]

    def _pd_bsn(self, x: torch.Tensor, s: int) -> torch.Tensor:
        if s == 1:
            return self.bsn(F.pad(x, (PD_PAD,) * 4))[..., PD_PAD:-PD_PAD, PD_PAD:-PD_PAD]
        return pd_up(self.bsn(pd_down(x, s)), s)

    def _refine(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """R3: average of T re-denoisings of y with a random p of its pixels replaced by the noisy x."""
        g = torch.Generator().manual_seed(R3_SEED)
        total = torch.zeros_like(y)
        for _ in range(R3_T):
            keep = (torch.rand(x.shape, generator=g) < R3_P).to(x.device)
            z = F.pad(torch.where(keep, x, y), (PD_PAD,) * 4, mode="reflect")
            total += self.bsn(z)[..., PD_PAD:-PD_PAD, PD_PAD:-PD_PAD]
        return total / R3_T


class PDBlindSpotL1(SelfL1):
    """AP-BSN's loss: L1 between the PD blind-spot output at the training stride and the noisy input."""

    def __init__(self, stride: int) -> None:
        super().__init__(validate_stride(stride))
        self.stride = self.control


def _unwrap(obj) -> tuple[dict, float] | None:
    """AP-BSN's trainer saves ``{"epoch", "model_weight": {"denoiser": state dict}, ...}``."""
    weights = obj.get("model_weight")
    return (weights["denoiser"], 255.0) if isinstance(weights, dict) and "denoiser" in weights else None


def _detect(sd, value_range: float) -> ModelConfig | None:
    """The authors' DBSNl keys (``bsn.head.0``, masked ``bsn.branch1.body.0``): strides 5 / 2 as published."""
    if "bsn.head.0.weight" in sd and "bsn.branch1.body.0.mask" in sd:
        w = conv_weight(sd, "bsn.head.0.weight")
        return ModelConfig("apbsn", width=w.shape[0], in_channels=w.shape[1], value_range=value_range,
                           k_train=5, k_infer=2)
    return None


STRIDE = Knob("stride", "PD stride", train=5, infer=2, sweep=SWEEP_STRIDES, validate=validate_stride,
               span=lambda s: 2 * s)
# Tiling: DBSNl has no pooling, so a training crop shows it no border and it is tiled from free memory
# (1,200 bytes per pixel at width 48, scaled with the width); 128 px of context (the dilated branches reach far).
register(Arch("apbsn", "AP-BSN", APBSN, _detect, bytes_per_pixel=1200, margin=128, knob=STRIDE,
              refinements=("r3",), tile_at_train_crop=False, unwrap=_unwrap))


def make(config: RunConfig, init=None) -> Method:
    """AP-BSN of base width ``config.width``: PD stride ``k_train`` in training, ``k_infer`` recorded."""
    stride_train, stride_infer = knob_values(config, SPEC)
    model = APBSN(ModelConfig("apbsn", width=config.width, k_train=stride_train, k_infer=stride_infer))
    how = start(model, init)
    return Method(model, PDBlindSpotL1(stride_train),
                  f"training AP-BSN (base width {config.width}, {parameters(model)} parameters, {how}): PD stride "
                  f"{stride_train} for training, {stride_infer} for inference")


SPEC = register(MethodSpec("apbsn", "AP-BSN", "apbsn", make, presets={
    "sidd": {"steps": 80_000, "batch": 8, "crop": 120, "width": 128, "lr": 1e-4, "k_train": 5, "k_infer": 2},
    "cpu": {**CPU_BUDGET, "crop": 60, "width": 32, "k_train": 5, "k_infer": 2},
}))
