"""LG-BPN (Wang, Fu, Liu and Zhang, CVPR 2023): local and global blind-patch branches around masked convolutions.

A 1x1 head (24 channels) feeds two branches, each opening with a large masked convolution at full resolution
that hides a patch around every pixel, followed by pixel-shuffle downsampling (PD) and a body:

- local: a 9 x 9 convolution that ignores the diamond |dy| + |dx| <= 4, then AP-BSN-style dilated residual
  modules (nine, dilation 2);
- global: a 21 x 21 convolution that sees only a stride-2 grid outside the same diamond, then a dilated
  transformer (six Restormer-style blocks: bias-free layer norm, two-head channel attention and a gated
  feed-forward of 340 hidden channels, each with depthwise 3 x 3 convolutions of dilation 3) and a 3 x 3
  convolution of dilation 3;
- a 1x1 tail on both (256 -> 128 -> 64 -> 64 -> 3).

Training runs the masked convolutions with the masked taps zeroed in place (as the authors' code does at every
forward) and the branches' PD in AP-BSN's mosaic layout at strides 4 (local, 2 zeros between sub-images) and 5
(global). Inference applies *no* mask: the whole kernel is used at sampling positions shrunk toward the centre
by a ratio (bilinear, on the reflect-padded input), then PD with the sub-images stacked in the batch, each
reflect-padded (2 local, 7 global). Here that sampling is one ordinary convolution whose kernel is the
authors' kernel resampled by the same bilinear weights (the same sum in another order); at ratio 1 their
sampler counts the last padded row and column twice, and so does this one. R3 refinement (T = 8, p = 0.16)
re-denoises with "refine" strides and ratios.

The blind-spot control (``--k``/``--pd``) picks one of the authors' inference settings by the local branch's
PD stride: 3, their SIDD setting (local 3 at ratio 0.72, global 4 at 0.8; refine 2 at 0.46 and 4 at 0.43), the
default; 4, the symmetric setting (inference strides equal to training's, 4 and 5, ratio 1); 2, their DND
setting (2 at 0.5, 4 at 0.65; refine 2 at 0.4, 2 at 0.35). Constants from the authors' repository
(Wang-XIaoDingdd/LGBPN, no licence: facts only; ``src/model/DBSNl.py``, ``APBSN.py``, ``restormer_arch.py``,
``conf/APBSN_SIDD/BSN_SIDD.yaml``): base width 128, 9 local modules, 6 transformer blocks, Adam lr 1e-4, batch
8 of 120 x 120 crops (AP-BSN's recipe, which their config keeps), L1 to the noisy input, inputs in 0..255.
Their code crops both dimensions by the padding computed from the height and leaves a row uninitialised at
odd padded sizes; here each dimension is padded and cropped by its own amount.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..blindspot import execution_path, multiple_pad
from ..config import ModelConfig, RunConfig
from ..errors import AtbsnError
from ..losses import SelfL1
from . import Arch, Knob, Method, MethodSpec, blind_spot, conv_weight, knob_values, parameters, register, start
from .apbsn import R3_P, R3_T, pd_down, pd_up
from .common import CPU_BUDGET

HEAD, MODULES, BLOCKS, HEADS, FFN = 24, 9, 6, 2, 2.66
LOCAL_PAD, GLOBAL_PAD = 2, 7  # reflect padding around each sub-image at inference (training: 2 and 0 zeros)
# knob (the local branch's inference PD stride) -> ((local stride, ratio), (global stride, ratio)) for the
# plain inference and for R3's refinement passes
SETTINGS = {
    3: (((3, 0.72), (4, 0.8)), ((2, 0.46), (4, 0.43))),
    4: (((4, 1.0), (5, 1.0)), ((2, 0.46), (4, 0.43))),
    2: (((2, 0.5), (4, 0.65)), ((2, 0.4), (2, 0.35))),
}
R3_SEED = 0


def validate_setting(value: object) -> int:
    if isinstance(value, bool) or value not in SETTINGS:
        raise AtbsnError(f"invalid LG-BPN setting {value!r}: the local branch's inference PD stride, one of "
                         f"{', '.join(map(str, sorted(SETTINGS)))} (3: the authors' SIDD setting)")
    return int(value)


def validate_train_stride(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise AtbsnError(f"invalid LG-BPN training stride {value!r}: an integer >= 2 (4 in the paper; the global "
                         "branch takes one more)")
    return value


def diamond(k: int, radius: int) -> torch.Tensor:
    r = torch.arange(k) - k // 2
    return ((r[:, None].abs() + r[None, :].abs()) <= radius).float()


def local_mask() -> torch.Tensor:
    return 1 - diamond(9, 4)


def global_mask() -> torch.Tensor:
    grid = torch.zeros(21, 21)
    grid[::2, ::2] = 1
    return grid * (1 - diamond(21, 4))


def _taps(k: int, ratio: float) -> torch.Tensor:
    """k x k: how much tap a (sampled at offset ratio * (a - k//2) from the centre) takes from padded position u."""
    c = k // 2
    out = torch.zeros(k, k, dtype=torch.float64)
    for a in range(k):
        pos = c + ratio * (a - c)
        lo = math.floor(pos)
        frac = pos - lo
        out[a, lo] += 1 - frac
        if frac:
            out[a, lo + 1] += frac
    return out


def shrunk_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ratio: float) -> torch.Tensor:
    """The authors' inference of a masked convolution: every tap of ``weight``, sampled bilinearly at offsets
    shrunk by ``ratio`` on the reflect-padded input; as one convolution with the resampled kernel."""
    k = weight.shape[-1]
    c = k // 2
    xp = F.pad(x, (c,) * 4, mode="reflect")
    if ratio == 1:  # their sampler clamps the neighbour of the last row and column onto itself: counted twice
        scale = torch.ones(xp.shape[-2:], dtype=xp.dtype, device=xp.device)
        scale[-1, :] *= 2
        scale[:, -1] *= 2
        xp = xp * scale
    taps = _taps(k, ratio).to(weight.device)
    kernel = torch.einsum("oiab,au,bv->oiuv", weight.double(), taps, taps).to(weight.dtype)
    return F.conv2d(xp, kernel, bias)


class MaskedConv(nn.Conv2d):
    """A masked convolution (reflect padding): training zeroes the masked taps in place, then convolves;
    inference samples the whole kernel at shrunk positions (:func:`shrunk_conv`)."""

    def __init__(self, cin: int, cout: int, mask: torch.Tensor) -> None:
        k = mask.shape[-1]
        super().__init__(cin, cout, k, padding=k // 2, padding_mode="reflect")
        self.register_buffer("mask", mask.expand(cout, cin, k, k).clone())

    def _load_from_state_dict(self, state, prefix, *args, **kwargs):
        for name in ("weight", "bias"):  # the authors' files also hold these tensors as test_conv.*: the same
            state.pop(f"{prefix}test_conv.{name}", None)
        super()._load_from_state_dict(state, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor, ratio: float | None = None) -> torch.Tensor:
        if ratio is None:
            with torch.no_grad():
                self.weight.mul_(self.mask)
            return super().forward(x)
        return shrunk_conv(x, self.weight, self.bias, ratio)


class DilatedResidual(nn.Module):
    def __init__(self, c: int, dilation: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True),
                                  nn.Conv2d(c, c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class LayerNorm(nn.Module):
    """Bias-free layer norm over the channels of each pixel."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Module()
        self.body.weight = nn.Parameter(torch.ones(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.var(1, keepdim=True, unbiased=False)
        return x / torch.sqrt(var + 1e-5) * self.body.weight[:, None, None]


class Attention(nn.Module):
    """Channel attention (transposed: heads x c x c over all pixels), depthwise 3 x 3 of dilation ``d``."""

    def __init__(self, c: int, heads: int, d: int) -> None:
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(c, 3 * c, 1, bias=False)
        self.qkv_dwconv = nn.Conv2d(3 * c, 3 * c, 3, padding=d, dilation=d, groups=3 * c, bias=False)
        self.project_out = nn.Conv2d(c, c, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = (t.reshape(n, self.heads, c // self.heads, h * w) for t in self.qkv_dwconv(self.qkv(x)).chunk(3, 1))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(-1)
        return self.project_out((attn @ v).reshape(n, c, h, w))


class FeedForward(nn.Module):
    def __init__(self, c: int, d: int) -> None:
        super().__init__()
        hidden = int(c * FFN)
        self.project_in = nn.Conv2d(c, 2 * hidden, 1, bias=False)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=d, dilation=d, groups=2 * hidden, bias=False)
        self.project_out = nn.Conv2d(hidden, c, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.dwconv(self.project_in(x)).chunk(2, 1)
        return self.project_out(F.gelu(a) * b)


class Block(nn.Module):
    def __init__(self, c: int, d: int) -> None:
        super().__init__()
        self.norm1, self.attn = LayerNorm(c), Attention(c, HEADS, d)
        self.norm2, self.ffn = LayerNorm(c), FeedForward(c, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, c: int, d: int = 3, blocks: int = BLOCKS) -> None:
        super().__init__()
        self.encoder_level1 = nn.Sequential(*[Block(c, d) for _ in range(blocks)])
        self.output = nn.Conv2d(c, c, 3, padding=d, dilation=d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.encoder_level1(x))


def _reflect(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """Reflect padding; replicate where an image is too small to reflect (the authors' code stops there)."""
    small = execution_path() != "export" and min(x.shape[-2:]) <= max(pad)
    return F.pad(x, pad, mode="replicate" if small else "reflect")


def pd_batch(x: torch.Tensor, s: int, pad: int) -> torch.Tensor:
    """Inference PD: the s*s sub-images in the batch (index n*s*s + i*s + j), each reflect-padded by ``pad``."""
    n, c, h, w = x.shape
    sub = F.pixel_unshuffle(x, s)
    if pad:
        sub = _reflect(sub, (pad,) * 4)
    hh, ww = sub.shape[-2:]
    return sub.reshape(n, c, s, s, hh, ww).permute(0, 2, 3, 1, 4, 5).reshape(n * s * s, c, hh, ww)


def pd_batch_up(y: torch.Tensor, s: int, pad: int) -> torch.Tensor:
    ns, c, hh, ww = y.shape
    n = ns // (s * s)
    sub = y.reshape(n, s, s, c, hh, ww).permute(0, 3, 1, 2, 4, 5).reshape(n, c * s * s, hh, ww)
    if pad:
        sub = sub[..., pad:-pad, pad:-pad]
    return F.pixel_shuffle(sub, s)


class Branch(nn.Module):
    """A masked convolution at full resolution, then PD around the body (padded to a multiple of the stride)."""

    def __init__(self, maskconv: MaskedConv, body: nn.Module, train_pad: int, infer_pad: int) -> None:
        super().__init__()
        self.Maskconv = maskconv  # noqa: N815 - the authors' name
        self.body = body
        self.train_pad, self.infer_pad = train_pad, infer_pad

    def forward(self, x: torch.Tensor, stride: int, ratio: float | None) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = multiple_pad(h, stride), multiple_pad(w, stride)
        if ph or pw or execution_path() == "export":  # exporting: the sizes are symbolic, pad always
            x = _reflect(x, (0, pw, 0, ph))
        x = self.Maskconv(x, ratio)
        if ratio is None:  # training: AP-BSN's mosaic with zeros between the sub-images
            x = pd_up(self.body(pd_down(x, stride, self.train_pad)), stride, self.train_pad)
        elif stride > 1:
            x = pd_batch_up(self.body(pd_batch(x, stride, self.infer_pad)), stride, self.infer_pad)
        else:
            x = self.body(x)
        return x[..., :h, :w]


class Net(nn.Module):
    """The authors' ``LGBPN`` network (kept under ``bsn.``, as their wrapper holds it)."""

    def __init__(self, cin: int, c: int) -> None:
        super().__init__()
        if c % 2:
            raise AtbsnError(f"LG-BPN's base width must be even, got {c}")
        self.head = nn.Sequential(nn.Conv2d(cin, HEAD, 1), nn.ReLU(inplace=True))
        body: list[nn.Module] = [nn.ReLU(inplace=True)]
        for _ in range(2):
            body += [nn.Conv2d(c, c, 1), nn.ReLU(inplace=True)]
        body += [DilatedResidual(c, 2) for _ in range(MODULES)] + [nn.Conv2d(c, c, 1), nn.ReLU(inplace=True)]
        self.branch1 = Branch(MaskedConv(HEAD, c, local_mask()), nn.Sequential(*body), 2, LOCAL_PAD)
        self.branch2 = Branch(MaskedConv(HEAD, c, global_mask()), Transformer(c), 0, GLOBAL_PAD)
        self.tail = nn.Sequential(nn.Conv2d(2 * c, c, 1), nn.ReLU(inplace=True), nn.Conv2d(c, c // 2, 1),
                                  nn.ReLU(inplace=True), nn.Conv2d(c // 2, c // 2, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(c // 2, cin, 1))

    def forward(self, x: torch.Tensor, local: tuple[int, float | None], glob: tuple[int, float | None]) -> torch.Tensor:
        x = self.head(x)
        return self.tail(torch.cat((self.branch1(x, *local), self.branch2(x, *glob)), 1))


class LGBPN(nn.Module):
    """LG-BPN: ``forward(x, k=None, r3=False)`` on N x C x H x W in 0..255. In training mode, the training path
    at strides ``config.k_train`` and one more; in eval mode, the inference setting ``k`` (:data:`SETTINGS`,
    default ``config.k_infer``), with R3 when asked."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig("lgbpn", width=128, k_train=4, k_infer=3)
        self.bsn = Net(self.config.in_channels, self.config.width)
        self.r3_seed = R3_SEED

    def forward(self, x: torch.Tensor, k: int | None = None, r3: bool = False) -> torch.Tensor:
        if self.training:
            s = validate_train_stride(self.config.k_train or 4)
            return self.bsn(x, (s, None), (s + 1, None))
        infer, refine = SETTINGS[blind_spot(self.config, k)]
        y = self.bsn(x, *infer)
        return self._refine(x, y, refine) if r3 else y

    def _refine(self, x: torch.Tensor, y: torch.Tensor, refine, masks: torch.Tensor | None = None) -> torch.Tensor:
        """R3: the mean of T re-denoisings of y with a random p of its values put back to the noisy x (``masks``:
        the T draws, T x N x C x H x W bool, else drawn from ``r3_seed``)."""
        if masks is None:
            g = torch.Generator().manual_seed(self.r3_seed)
            masks = torch.stack([torch.rand(x.shape, generator=g) < R3_P for _ in range(R3_T)])
        total = torch.zeros_like(y)
        for keep in masks.to(x.device):
            z = _reflect(torch.where(keep, x, y), (2,) * 4)
            total += self.bsn(z, *refine)[..., 2:-2, 2:-2]
        return total / R3_T


def _detect(sd, value_range: float) -> ModelConfig | None:
    """The authors' wrapper (AP-BSN's ``{"model_weight": {"denoiser"}}``, peeled by AP-BSN's file) holds ``bsn.``."""
    if "bsn.branch1.Maskconv.weight" in sd and "bsn.branch2.body.output.weight" in sd:
        w = conv_weight(sd, "bsn.head.0.weight")
        c = conv_weight(sd, "bsn.tail.0.weight").shape[0]
        return ModelConfig("lgbpn", width=c, in_channels=w.shape[1], value_range=value_range, k_train=4, k_infer=3)
    return None


SETTING = Knob("pd", "inference setting (the local branch's PD stride)", train=4, infer=3, sweep=(2, 3, 4),
               validate=validate_setting, validate_train=validate_train_stride, span=lambda s: 2 * (s + 1))
# Tiling: the transformer's channel attention sums over every pixel of a sub-image, so no margin makes tiled and
# untiled outputs equal; 128 px of context keeps the masked convolutions' and dilated bodies' reach, and tiles
# are as large as memory allows (bytes per pixel at width 48, scaled: about 4 KB a pixel at the base width 128).
register(Arch("lgbpn", "LG-BPN", LGBPN, _detect, bytes_per_pixel=1500, margin=128, knob=SETTING,
              refinements=("r3",), tile_at_train_crop=False))


def make(config: RunConfig, init=None) -> Method:
    """LG-BPN of base width ``config.width``: PD strides ``k_train`` and one more in training."""
    stride, setting = knob_values(config, SPEC)
    model = LGBPN(ModelConfig("lgbpn", width=config.width, k_train=stride, k_infer=setting))
    how = start(model, init)
    return Method(model, SelfL1(),  # L1 to the noisy input; the training path is the model's own in train mode
                  f"training LG-BPN (base width {config.width}, {parameters(model)} parameters, {how}): PD strides "
                  f"{stride} (local) and {stride + 1} (global) for training, setting {setting} for inference")


SPEC = register(MethodSpec("lgbpn", "LG-BPN", "lgbpn", make, presets={
    "sidd": {"steps": 80_000, "batch": 8, "crop": 120, "width": 128, "lr": 1e-4, "k_train": 4, "k_infer": 3},
    "cpu": {**CPU_BUDGET, "crop": 60, "width": 32, "k_train": 4, "k_infer": 3},
}))
