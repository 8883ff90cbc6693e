"""Spatially-Adaptive SSL (Li et al., CVPR 2023): a blind network for flat areas, a local network for texture,
and a U-Net that learns from both, each where it is trusted.

Three stages (equal thirds of the run, each with its own cosine learning-rate decay, as the authors' three
optimisers have):

1. **BNN**, a Laine-style blind network with a 9-pixel blind spot (the four rotations of the image through a
   U-Net that sees only rows above, maps shifted down by (9 + 1) / 2 = 5 rows, rotated back, a 1x1 head),
   trained with L1 to the noisy input;
2. **LAN**, a local network with a 3 x 3 receptive field (1x1, one 3x3, six residual blocks of 1x1 convs with
   channel attention), trained with L1 to the frozen BNN's output: it cannot see far enough to learn the
   noise's structure, so it keeps texture the BNN loses;
3. **UNet**, a plain U-Net, trained with L1 to the BNN where the BNN's output is flat and to the LAN where it is
   textured: the weight ``alpha`` is 0.5, except sigmoid(std - 1) where the local standard deviation (7 x 7,
   channel mean, :func:`atbsn.metrics.local_std`) is below 1 and sigmoid(std - 5) where it is above 5.

The UNet denoises. Constants from the authors' repository (nagejacob/SpatiallyAdaptiveSSID, GPL-3.0; only the
facts are used: ``network/{bnn,lan,unet}.py``, ``model/three_stage.py``, ``option/three_stage.json``): width
48, blind spot 9, LAN blind spot 3 with 64 channels, lr 3e-4, 400k iterations per stage, batch 8 of 256 x 256,
inputs in 0..255 (not normalised), LeakyReLU 0.1 in BNN and UNet, the 8-fold flip/rotation ensemble in their
SIDD submission (``--ensemble`` here, for every network). Module names equal theirs, so their files load:
the three-stage checkpoint (``{"iter", "BNN", "LAN", "UNet", optimiser, scheduler}``) and each network's bare
state dict (``pretrained_models/LAN.pth``). Their networks need sizes that are multiples of 32: here the
input is padded at the bottom and right (zeros for the blind BNN, which keeps its blind spot exact; reflection
for the others) and cropped back. The BNN's hole is a knob like AT-BSN's k (k = 9: the authors' shift of 5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..blindspot import execution_path, multiple_pad, shift_for_k, validate_k
from ..config import ModelConfig, RunConfig
from ..losses import Loss, masked_l1
from ..metrics import local_std
from . import Arch, Method, MethodSpec, blind_spot, conv_weight, parameters, register, start
from .atbsn import K
from .common import CPU_BUDGET

LOWER, UPPER = 1.0, 5.0  # alpha's thresholds on the local standard deviation
BNN_K, LAN_K = 9, 3


def _down(x: torch.Tensor, rows: int) -> torch.Tensor:
    """Shift a map ``rows`` rows down (zeros come in at the top, the last rows fall off)."""
    if rows == 0:
        return x
    return F.pad(x, (0, 0, rows, 0))[..., : x.shape[-2], :]


class UpConv(nn.Conv2d):
    """A convolution that sees only rows at or above the output row (the blind network's) or, with
    ``blind=False``, a plain one."""

    def __init__(self, cin: int, cout: int, size: int = 3, blind: bool = True) -> None:
        super().__init__(cin, cout, size, padding=size // 2)
        self.rows = size // 2 if blind else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return super().forward(x)
        return super().forward(F.pad(x, (0, 0, self.rows, 0)))[..., : x.shape[-2], :]


class Down(nn.Module):
    """One row down before a pool (the blind network's), or nothing."""

    def __init__(self, blind: bool) -> None:
        super().__init__()
        self.blind = blind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _down(x, 1) if self.blind else x


def _act() -> nn.Module:
    return nn.LeakyReLU(0.1, inplace=True)


class LaineUNet(nn.Module):
    """The five-pool U-Net of BNN and UNet (module indices as the authors', so their keys load)."""

    def __init__(self, cin: int, dim: int, blind: bool) -> None:
        super().__init__()
        conv = lambda a, b: UpConv(a, b, 3, blind)  # noqa: E731
        pool = lambda: [Down(blind), nn.MaxPool2d(2)]  # noqa: E731
        up = lambda: nn.Upsample(scale_factor=2, mode="nearest")  # noqa: E731
        self.encode_block_1 = nn.Sequential(conv(cin, dim), _act(), conv(dim, dim), _act(), *pool())
        for i in range(2, 6):
            setattr(self, f"encode_block_{i}", nn.Sequential(conv(dim, dim), _act(), *pool()))
        self.encode_block_6 = nn.Sequential(conv(dim, dim), _act())
        self.decode_block_6 = nn.Sequential(up())
        self.decode_block_5 = nn.Sequential(conv(2 * dim, 2 * dim), _act(), conv(2 * dim, 2 * dim), _act(), up())
        for i in (4, 3, 2):
            setattr(self, f"decode_block_{i}",
                    nn.Sequential(conv(3 * dim, 2 * dim), _act(), conv(2 * dim, 2 * dim), _act(), up()))
        self.decode_block_1 = nn.Sequential(conv(2 * dim + cin, 2 * dim), _act(), conv(2 * dim, 2 * dim), _act())

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's output (2 x width channels) at the input's size (a multiple of 32)."""
        skips = [x]
        y = x
        for i in range(1, 6):
            y = getattr(self, f"encode_block_{i}")(y)
            skips.append(y)
        y = self.decode_block_6(self.encode_block_6(skips.pop()))
        for i in (5, 4, 3, 2, 1):
            y = getattr(self, f"decode_block_{i}")(torch.cat((y, skips.pop()), 1))
        return y


def _init(net: nn.Module, last: nn.Conv2d | None) -> None:
    """The authors' initialisation: Kaiming (a = 0.1), zero biases, a linear Kaiming last layer."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.1)
                m.bias.zero_()
        if last is not None:
            nn.init.kaiming_normal_(last.weight, nonlinearity="linear")


def _pad32(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Pad the bottom and right to a multiple of 32 (exporting: always, the sizes being symbolic)."""
    h, w = x.shape[-2:]
    ph, pw = multiple_pad(h, 32), multiple_pad(w, 32)
    exporting = execution_path() == "export"
    if not (ph or pw or exporting):
        return x
    if mode == "reflect" and not exporting and not (ph < h and pw < w):
        mode = "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


# The views of the blind network, in the authors' order (0, 90, 180, 270 degrees), and how each is undone.
_VIEWS = (lambda t: t, lambda t: t.flip(3).transpose(2, 3), lambda t: t.flip(3).flip(2),
          lambda t: t.flip(2).transpose(2, 3))
_UNDO = (lambda t: t, lambda t: t.flip(2).transpose(2, 3), lambda t: t.flip(3).flip(2),
         lambda t: t.flip(3).transpose(2, 3))


class BNN(LaineUNet):
    """The blind network: ``forward(x, k=None)`` on 0..255, blind spot ``k`` (odd; default ``config.k_infer``, 9)."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        config = config or ModelConfig("sasl-bnn", width=48, k_train=BNN_K, k_infer=BNN_K)
        super().__init__(config.in_channels, config.width, blind=True)
        self.config = config
        c, cin = config.width, config.in_channels
        self.output_conv = nn.Conv2d(2 * c, cin, 1)
        self.output_block = nn.Sequential(nn.Conv2d(8 * c, 8 * c, 1), _act(), nn.Conv2d(8 * c, 2 * c, 1), _act(),
                                          self.output_conv)
        _init(self, self.output_conv)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The decoder's map of each view, in its own frame (the input padded to a multiple of 32 with zeros)."""
        x = _pad32(x, "constant")
        views = [v(x) for v in _VIEWS]
        if x.shape[-1] == x.shape[-2]:
            return list(self.decode(torch.cat(views, 0)).chunk(4, 0))
        return [self.decode(v) for v in views]

    def head(self, maps: list[torch.Tensor], k: int, size: tuple[int, int]) -> torch.Tensor:
        rows = shift_for_k(k)
        y = self.output_block(torch.cat([undo(_down(f, rows)) for undo, f in zip(_UNDO, maps)], 1))
        return y[..., : size[0], : size[1]]

    def forward(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        return self.head(self.features(x), blind_spot(self.config, k), x.shape[-2:])

    def teachers(self, x: torch.Tensor, ks: Sequence[int]) -> list[torch.Tensor]:
        maps = self.features(x)
        return [self.head(maps, validate_k(k), x.shape[-2:]) for k in ks]


class CALayer(nn.Module):
    def __init__(self, c: int, reduction: int = 16) -> None:
        super().__init__()
        self.conv_du = nn.Sequential(nn.Conv2d(c, c // reduction, 1), nn.ReLU(inplace=True),
                                     nn.Conv2d(c // reduction, c, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_du(x.mean((2, 3), keepdim=True))


class RB(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.act, self.conv2, self.cuca = nn.Conv2d(c, c, 1), nn.ReLU(), nn.Conv2d(c, c, 1), CALayer(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cuca(self.conv2(self.act(self.conv1(x))))


class NRB(nn.Module):
    def __init__(self, n: int, c: int) -> None:
        super().__init__()
        self.body, self.tail = nn.Sequential(*[RB(c) for _ in range(n)]), nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.tail(self.body(x))


class LAN(nn.Module):
    """The local network: a (LAN_K x LAN_K) receptive field, 64 channels; non-blind."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig("sasl-lan", width=64)
        c, cin = self.config.width, self.config.in_channels
        layers: list[nn.Module] = [nn.Conv2d(cin, c, 1), nn.ReLU()]
        for _ in range(LAN_K // 2):
            layers += [nn.Conv2d(c, c, 3, 1, 1), nn.ReLU()]
        self.conv = nn.Sequential(*layers, NRB(6, c), nn.Conv2d(c, cin, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNet(LaineUNet):
    """The plain U-Net the method ends with (the authors' UNet: BNN's network without shifts or rotations)."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        config = config or ModelConfig("sasl-unet", width=48)
        super().__init__(config.in_channels, config.width, blind=False)
        self.config = config
        self.output_conv = nn.Conv2d(2 * config.width, config.in_channels, 1)
        _init(self, self.output_conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return self.output_conv(self.decode(_pad32(x, "reflect")))[..., :h, :w]


class SASL(nn.Module):
    """The three networks of the method; ``forward(x)`` is the UNet, which denoises once trained, and
    ``forward(x, part)`` runs "bnn", "lan" or "unet" (training goes through ``forward``, as DDP needs)."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig("sasl", width=48)
        c, cin = self.config.width, self.config.in_channels
        self.bnn = BNN(ModelConfig("sasl-bnn", width=c, in_channels=cin, k_train=BNN_K, k_infer=BNN_K))
        self.lan = LAN(ModelConfig("sasl-lan", width=64, in_channels=cin))
        self.unet = UNet(ModelConfig("sasl-unet", width=c, in_channels=cin))

    def forward(self, x: torch.Tensor, part: str = "unet") -> torch.Tensor:
        return getattr(self, part)(x)


def alpha(x: torch.Tensor) -> torch.Tensor:
    """Where to trust the LAN (1) or the BNN (0): 0.5, or a sigmoid of the local standard deviation's distance
    below ``LOWER`` or above ``UPPER`` (the authors' ``generate_alpha``), N x 1 x H x W."""
    std = local_std(x, gray="mean")
    middle = torch.full_like(std, 0.5)
    above = torch.where(std > UPPER, torch.sigmoid(std - UPPER), middle)
    return torch.where(std < LOWER, torch.sigmoid(std - LOWER), above)


STAGES = ("BNN", "LAN", "UNet")


def stage_at(step: int, steps: int) -> int:
    """The stage (0, 1, 2) of a 0-based step: equal thirds of the run."""
    return 0 if step < steps // 3 else 1 if step < 2 * steps // 3 else 2


def stage_cosine(step: int, steps: int) -> float:
    """The learning rate's factor: a cosine decay to 0 within each stage."""
    bounds = (0, steps // 3, 2 * steps // 3, steps)
    i = stage_at(step, steps)
    length = max(bounds[i + 1] - bounds[i], 1)
    return 0.5 * (1 + math.cos(math.pi * (step - bounds[i]) / length))


class ThreeStageL1(Loss):
    """The loss of the stage the step is in (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage = 0

    def at(self, step: int, steps: int) -> None:
        self.stage = stage_at(step, steps)

    def forward(self, model: nn.Module, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.stage == 0:
            return masked_l1(model(y, "bnn"), y, mask)
        with torch.no_grad():
            bnn = model(y, "bnn").float()
        if self.stage == 1:
            return masked_l1(model(y, "lan"), bnn, mask)
        with torch.no_grad():
            lan = model(y, "lan").float()
        a = alpha(bnn)
        out = model(y, "unet").float()
        return masked_l1(out * (1 - a), bnn * (1 - a), mask) + masked_l1(out * a, lan * a, mask)


def _unwrap(obj) -> tuple[dict, float] | None:
    """The authors' three-stage checkpoint: all three networks (the UNet stage) as one, else the stage's."""
    if "iter" not in obj or "BNN" not in obj:
        return None
    if "UNet" in obj:
        return {f"{part.lower()}.{k}": v for part in ("BNN", "LAN", "UNet") for k, v in obj[part].items()}, 255.0
    return obj["LAN" if "LAN" in obj else "BNN"], 255.0


def _detect(sd, value_range: float) -> ModelConfig | None:
    if "bnn.output_block.0.weight" in sd and "lan.conv.0.weight" in sd and "unet.output_conv.weight" in sd:
        w = conv_weight(sd, "unet.encode_block_1.0.weight")
        return ModelConfig("sasl", width=w.shape[0], in_channels=w.shape[1], value_range=value_range)
    return None


def _detect_bnn(sd, value_range: float) -> ModelConfig | None:
    if "output_block.0.weight" in sd and "encode_block_1.0.weight" in sd:
        w = conv_weight(sd, "encode_block_1.0.weight")
        return ModelConfig("sasl-bnn", width=w.shape[0], in_channels=w.shape[1], value_range=value_range,
                           k_train=BNN_K, k_infer=BNN_K)
    return None


def _detect_unet(sd, value_range: float) -> ModelConfig | None:
    if "encode_block_1.0.weight" in sd and "output_conv.weight" in sd and "output_block.0.weight" not in sd:
        w = conv_weight(sd, "encode_block_1.0.weight")
        return ModelConfig("sasl-unet", width=w.shape[0], in_channels=w.shape[1], value_range=value_range)
    return None


def _detect_lan(sd, value_range: float) -> ModelConfig | None:
    if "conv.4.tail.weight" in sd and "conv.0.weight" in sd:
        w = conv_weight(sd, "conv.0.weight")
        return ModelConfig("sasl-lan", width=w.shape[0], in_channels=w.shape[1], value_range=value_range)
    return None


# Tiling: the UNet (what denoises) and BNN pool five times, like AT-BSN's networks (their constants); the LAN
# reaches 1 pixel.
register(Arch("sasl", "Spatially-Adaptive SSL", SASL, _detect, bytes_per_pixel=2400, margin=96, unwrap=_unwrap))
register(Arch("sasl-bnn", "Spatially-Adaptive SSL's BNN", BNN, _detect_bnn, bytes_per_pixel=3000, margin=128,
              knob=K, teacher=True))
register(Arch("sasl-lan", "Spatially-Adaptive SSL's LAN", LAN, _detect_lan, bytes_per_pixel=1200, margin=4,
              tile_at_train_crop=False))
register(Arch("sasl-unet", "Spatially-Adaptive SSL's UNet", UNet, _detect_unet, bytes_per_pixel=2400, margin=96))


def make(config: RunConfig, init=None) -> Method:
    """The three networks at ``config.width`` (the LAN at its 64 channels), trained in three stages."""
    model = SASL(ModelConfig("sasl", width=config.width))
    how = start(model, init)
    return Method(model, ThreeStageL1(),
                  f"training Spatially-Adaptive SSL (width {config.width}, {parameters(model)} parameters, {how}): "
                  f"BNN (blind spot {BNN_K}), then LAN, then the UNet, a third of {config.steps} steps each",
                  schedule=stage_cosine, partial=True)


SPEC = register(MethodSpec("sasl", "Spatially-Adaptive SSL", "sasl", make, presets={
    "sidd": {"steps": 1_200_000, "batch": 8, "crop": 256, "width": 48, "lr": 3e-4},
    "cpu": CPU_BUDGET,
}))
