"""The non-blind students of AT-BSN(D): A (0.13M), B (0.86M), C (1.00M) and C102 (1.02M parameters).

Students see the centre pixel; they learn from the teachers, never from a blind spot. Inputs of any size
are reflect-padded (replicate for inputs too small to reflect) to the multiple their poolings need, and
cropped back.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .blindspot import NEG_SLOPE, Conv, execution_path, multiple_pad, upsample2
from .config import ModelConfig
from .errors import AtbsnError
from .ranges import into_weights, out_of_weights
from .unet import UNet, init_weights


def _stage(channels: list[int], single_name: bool) -> nn.Sequential:
    """A chain of replicate-padded, bias-free convs named like the authors' (``conv`` or ``conv1``..)."""
    pairs = list(zip(channels[:-1], channels[1:]))
    names = ["conv"] if single_name else [f"conv{i}" for i in range(1, len(pairs) + 1)]
    return nn.Sequential(
        OrderedDict((n, Conv(a, b, bias=False, padding_mode="replicate")) for n, (a, b) in zip(names, pairs))
    )


class _Student(nn.Module):
    multiple = 1

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    def net(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _channels_last(self) -> bool:
        w = next(self.parameters())
        return w.dim() == 4 and w.is_contiguous(memory_format=torch.channels_last)

    def _ready(self) -> None:
        """Call at the end of ``__init__``: weights in the channels-last layout, the fast one for convolutions."""
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Denoise N x C x H x W images in 0..255."""
        vr = self.config.value_range
        h, w = x.shape[-2:]
        ph, pw = multiple_pad(h, self.multiple), multiple_pad(w, self.multiple)
        exporting = execution_path() == "export"  # pad unconditionally: H and W are symbolic then
        if ph or pw or exporting:
            mode = "reflect" if exporting or ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        if not exporting and self._channels_last():
            x = x.contiguous(memory_format=torch.channels_last)  # the weights' layout: NCHW input is ~1.4x slower
        return out_of_weights(self.net(into_weights(x, vr)), vr)[..., :h, :w]


class StudentC(_Student):
    """The AT-BSN UNet with plain convs and 3 outputs (LeakyReLU after the last conv, as released)."""

    multiple = 32

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.unet = UNet(config.in_channels, config.width, config.in_channels, blind=False)
        with torch.no_grad():
            init_weights(self)
        self._ready()

    def net(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(x)


class StudentC102(_Student):
    """Student C as the AT-BSN paper's 1.02M describes it, in the layout APR-RD and TM-BSN release.

    A plain five-pool UNet without the input skip: ``enc1`` 3 -> w, then pool + conv five times (``enc2`` ..
    ``enc6``); each decoder stage upsamples, joins the encoder map of its size and runs two convs to 2w
    (``decN_2``, ``decN_1``); the last conv ``dec1_1`` maps 2w -> 3 without an activation. Zero-padded 3x3
    convs, LeakyReLU 0.1. The released files take inputs in 0..1 (``value_range`` 1).
    """

    multiple = 32

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        c, cin = config.width, config.in_channels
        self.enc1 = Conv(cin, c)
        for i in range(2, 7):
            setattr(self, f"enc{i}", Conv(c, c))
        for i in range(5, 0, -1):
            setattr(self, f"dec{i}_2", Conv(c + (c if i == 5 else 2 * c), 2 * c))
            setattr(self, f"dec{i}_1", Conv(2 * c, 2 * c) if i > 1 else nn.Conv2d(2 * c, cin, 3, padding=1))
        with torch.no_grad():
            init_weights(self)
        self._ready()

    def net(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.enc1(x)]
        for i in range(2, 6):
            skips.append(getattr(self, f"enc{i}")(F.max_pool2d(skips[-1], 2)))
        y = self.enc6(F.max_pool2d(skips[-1], 2))
        for i in range(5, 0, -1):
            y = getattr(self, f"dec{i}_2")(torch.cat((upsample2(y), skips[i - 1]), dim=1))
            y = getattr(self, f"dec{i}_1")(y)
        return y


class _SmallStudent(_Student):
    """Two poolings; A has one conv per stage, B three per encoder stage and four per decoder stage."""

    multiple = 4

    def __init__(self, config: ModelConfig, enc_convs: int, dec_convs: int) -> None:
        super().__init__(config)
        cin, single = config.in_channels, enc_convs == 1
        self.enc1 = _stage([cin] + [48] * enc_convs, single)
        self.enc2 = _stage([48] * (enc_convs + 1), single)
        self.enc3 = _stage([48] + [96] * (enc_convs - 1) + [48] if enc_convs > 1 else [48, 48], single)
        self.dec2 = _stage([96] * (dec_convs + 1), single)
        self.dec1 = _stage([96 + cin] + [96] * (dec_convs - 1) + [cin], single)
        with torch.no_grad():
            init_weights(self)
        self._ready()

    def net(self, x: torch.Tensor) -> torch.Tensor:
        x1 = F.max_pool2d(self.enc1(x), 2)
        x2 = F.max_pool2d(self.enc2(x1), 2)
        y = self.dec2(torch.cat((upsample2(self.enc3(x2)), x1), dim=1))
        if len(self.dec1) == 1:  # student A: its single full-resolution conv, without the upsampled copy
            return F.leaky_relu(_conv_after_upsample(self.dec1[0].conv.weight, y, x), NEG_SLOPE, inplace=True)
        return self.dec1(torch.cat((upsample2(y), x.to(y.dtype)), dim=1))  # (no fp32 promotion under autocast)


# Row (and column) taps of a 3x3 kernel applied to a nearest-upsampled map, seen from the low-resolution
# map: output phase 0 reads low-res rows i-1, i with kernel rows (0, 1 + 2); phase 1 reads rows i, i+1
# with kernel rows (0 + 1, 2). As 3-tap windows over the map padded by one: _PHASE_TAPS[phase][tap, row].
_PHASE_TAPS = torch.tensor([[[1.0, 0, 0], [0, 1, 1], [0, 0, 0]], [[0.0, 0, 0], [1, 1, 0], [0, 0, 1]]])


def _conv_after_upsample(weight: torch.Tensor, y: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``conv3x3(replicate_pad(cat(upsample2(y), skip)), weight)`` without building the upsampled stack.

    The upsampled part is four 2x2 convolutions on ``y`` itself, one per output phase, run as one 3x3
    convolution with 4 x C_out channels and interleaved by ``pixel_shuffle``; the skip part is an ordinary
    convolution. Replicate padding commutes with nearest upsampling, so the borders are exact. At 1024^2
    this saves three full-resolution 99-channel copies (upsample, concatenation, padding) in student A.
    """
    cy, cout = y.shape[1], weight.shape[0]
    taps = _PHASE_TAPS.to(weight)
    phases = torch.einsum("apr,bqs,ocrs->oabcpq", taps, taps, weight[:, :cy]).reshape(4 * cout, cy, 3, 3)
    if y.is_contiguous(memory_format=torch.channels_last):
        phases = phases.contiguous(memory_format=torch.channels_last)
    up = F.pixel_shuffle(F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), phases), 2)
    return up + F.conv2d(F.pad(skip, (1, 1, 1, 1), mode="replicate"), weight[:, cy:])


class StudentA(_SmallStudent):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, enc_convs=1, dec_convs=1)


class StudentB(_SmallStudent):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, enc_convs=3, dec_convs=4)


_CLASSES = {"A": StudentA, "B": StudentB, "C": StudentC, "C102": StudentC102}


def Student(  # noqa: N802
    kind: str = "C", in_channels: int = 3, width: int = 48, *, config: ModelConfig | None = None
) -> _Student:
    """Build student ``"A"``, ``"B"``, ``"C"`` or ``"C102"`` (a plain ``nn.Module``; C is AT-BSN(D)'s network).

    ``width`` applies to C, which is the teacher's UNet made non-blind, and to C102; A and B have fixed
    widths. C102 takes 0..1 inputs inside, like the files released for it.
    """
    if config is None:
        kind = str(kind).upper()
        if kind not in _CLASSES:
            raise AtbsnError(f"unknown student {kind!r}: choose A, B or C (or C102, the 1.02M layout)")
        config = ModelConfig(arch=kind, in_channels=in_channels, width=width if kind.startswith("C") else 48,
                             value_range=1.0 if kind == "C102" else 255.0)
    return _CLASSES[config.arch](config)


def _copy_unet(dst: nn.Module, src: nn.Module) -> None:
    """The UNet weights of ``src`` into ``dst``, all but dec1's two convs (where teacher and student differ)."""
    weights = {k: v for k, v in src.unet.state_dict().items() if not k.startswith("dec1.")}
    own = dst.unet.state_dict()
    mismatched = [k for k, v in weights.items() if own[k].shape != v.shape]
    if mismatched:
        raise AtbsnError(f"teacher and student widths differ ({mismatched[0]}); use the same width")
    dst.unet.load_state_dict(weights, strict=False)


def init_from_teacher(student: nn.Module, teacher: nn.Module) -> nn.Module:
    """Copy the teacher's UNet weights into student C, all but dec1's two convs (as the paper does)."""
    if not isinstance(student, StudentC):
        raise AtbsnError("only student C shares the teacher's UNet; A, B and C102 cannot be initialised from it")
    _copy_unet(student, teacher)
    return student


def init_teacher_from_student(teacher: nn.Module, student: nn.Module) -> nn.Module:
    """The reverse: start a teacher's UNet from a trained student C, all but dec1's two convs.

    Shifts and rotations act on feature maps only, so one UNet's weights serve both (the paper's supplementary
    notes this); the teacher takes over the student's input scale. ``benchmarks/warm_start.py`` measures
    whether it learns faster than a fresh teacher.
    """
    if not isinstance(student, StudentC):
        raise AtbsnError(f"only student C shares the teacher's UNet (got {student.config.arch})")
    _copy_unet(teacher, student)
    teacher.config.value_range = student.config.value_range
    return teacher
