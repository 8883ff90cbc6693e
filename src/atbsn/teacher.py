"""AT-BSN, the meta-teacher: one backbone, a blind spot of any size k chosen at run time."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blindspot import NEG_SLOPE, multiple_pad, rotate, shift_for_k, validate_k
from .config import ModelConfig
from .unet import UNet, init_weights

Features = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
DEFAULT_KS = (0, 1, 3, 5, 7, 9, 11)


def _shifted_cat(features: Sequence[torch.Tensor], s: int) -> torch.Tensor:
    """Concatenate the four directional maps along channels, each shifted by ``s`` pixels away from the
    half-plane it looks at (zeros fill in): direction 0 (the unrotated branch) moves down, 1 right,
    2 up, 3 left. This is the image-frame equivalent of the authors' "shift down in the rotated frame,
    then rotate back", written straight into one buffer (no separate pad and concat copies).
    """
    if s == 0:
        return torch.cat(list(features), dim=1)
    f0 = features[0]
    n, c, h, w = f0.shape
    fmt = torch.channels_last if f0.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    if torch.compiler.is_exporting() or torch.is_grad_enabled():
        # exporting: symbolic sizes need pad-and-slice; training: slice-assignments into a buffer would
        # each clone the whole gradient in the backward (measured), a concatenation of pads does not.
        # The pads come out in the layout of their input, so the two transposed maps are made
        # channels-last first, else the concatenation (and the 1x1 convolution after it) would not be.
        sh, sw = (s, s) if torch.compiler.is_exporting() else (min(s, h), min(s, w))  # tiny maps: all zeros
        pads = [(0, 0, sh, 0), (sw, 0, 0, 0), (0, 0, 0, sh), (0, sw, 0, 0)]
        cuts = [f0[:, :, : h - sh], features[1][..., : w - sw], features[2][:, :, sh:], features[3][..., sw:]]
        if fmt == torch.channels_last and not torch.compiler.is_exporting():
            cuts = [t.contiguous(memory_format=fmt) for t in cuts]
        return torch.cat([F.pad(t, p) for t, p in zip(cuts, pads)], dim=1)
    out = torch.empty((n, 4 * c, h, w), dtype=f0.dtype, device=f0.device, memory_format=fmt)
    sh, sw = min(s, h), min(s, w)
    out[:, 0:c, sh:, :] = f0[:, :, : h - sh, :]
    out[:, 0:c, :sh, :] = 0  # only the strips the shift uncovers are zeroed
    out[:, c : 2 * c, :, sw:] = features[1][:, :, :, : w - sw]
    out[:, c : 2 * c, :, :sw] = 0
    out[:, 2 * c : 3 * c, : h - sh, :] = features[2][:, :, sh:, :]
    out[:, 2 * c : 3 * c, h - sh :, :] = 0
    out[:, 3 * c :, :, : w - sw] = features[3][:, :, :, sw:]
    out[:, 3 * c :, :, w - sw :] = 0
    return out


def _batch(images: Sequence[torch.Tensor], fmt: torch.memory_format | None) -> torch.Tensor:
    x = torch.cat(list(images), dim=0)
    return x.contiguous(memory_format=fmt) if fmt is not None else x


class ATBSN(nn.Module):
    """Asymmetric Tunable Blind-Spot Network (Chen et al., CVPR 2024).

    ``net(x, k)`` takes N x C x H x W images in 0..255 of any size and hides a k x k square around each
    pixel (k = 0 hides nothing). The input is zero-padded to a multiple of 32 inside (zeros keep the blind
    spot exact) and the output cropped back.
    """

    def __init__(self, width: int = 48, in_channels: int = 3, *, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig(arch="atbsn", width=width, in_channels=in_channels)
        c, cin = self.config.width, self.config.in_channels
        self.unet = UNet(cin, c, 2 * c, blind=True)
        self.nin_A = nn.Conv2d(8 * c, 8 * c, 1)
        self.nin_B = nn.Conv2d(8 * c, 2 * c, 1)
        self.nin_C = nn.Conv2d(2 * c, cin, 1)
        with torch.no_grad():
            init_weights(self)
            nn.init.kaiming_normal_(self.nin_C.weight, nonlinearity="linear")

    @property
    def k_infer(self) -> int:
        return self.config.k_infer

    def features(self, x: torch.Tensor) -> Features:
        """The four directional feature maps (looking up, left, down, right), in the image's frame.

        Each map at a pixel depends only on input pixels on the looked-at side of it, its own row or
        column included; ``head`` shifts them to exclude the blind spot.
        """
        x = x * (self.config.value_range / 255.0) if self.config.value_range != 255.0 else x
        n, _, h, w = x.shape
        ph, pw = multiple_pad(h, 32), multiple_pad(w, 32)
        x = F.pad(x, (0, pw, 0, ph))  # bottom/right, so tiles on a 32-grid see the same pooling grid
        rotated = [rotate(x, q) for q in range(4)]
        # the rotated input joins the last decoder stage's concatenation: keep it in the weights' layout
        fmt = torch.channels_last if self.nin_A.weight.is_contiguous(memory_format=torch.channels_last) else None
        if torch.compiler.is_exporting():  # symbolic sizes: one branch per rotation, no batch juggling
            out = tuple(self.unet(r) for r in rotated)
        elif h + ph == w + pw:  # square after padding: one batch of four
            out = self.unet(_batch(rotated, fmt)).split(n, dim=0)
        else:  # two shapes: (0, 180) and (90, 270)
            a = self.unet(_batch((rotated[0], rotated[2]), fmt)).split(n, dim=0)
            b = self.unet(_batch((rotated[1], rotated[3]), fmt)).split(n, dim=0)
            out = (a[0], b[0], a[1], b[1])
        if ph or pw or torch.compiler.is_exporting():  # a no-op crop would still cost a copy in the backward
            out = tuple(rotate(f, -q)[..., :h, :w] for q, f in enumerate(out))
        else:
            out = tuple(rotate(f, -q) for q, f in enumerate(out))
        return out  # type: ignore[return-value]

    def head(self, features: Sequence[torch.Tensor], k: int | None = None) -> torch.Tensor:
        """Shift the directional maps for blind spot k and mix them with the 1x1 convolutions."""
        s = shift_for_k(self.config.k_infer if k is None else k)
        x = _shifted_cat(features, s)
        x = F.leaky_relu(self.nin_A(x), NEG_SLOPE, inplace=True)
        x = F.leaky_relu(self.nin_B(x), NEG_SLOPE, inplace=True)
        x = self.nin_C(x)
        return x * (255.0 / self.config.value_range) if self.config.value_range != 255.0 else x

    def forward(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Denoise with blind spot k (default: the configured inference size k_b)."""
        k = validate_k(self.config.k_infer if k is None else k)
        return self.head(self.features(x), k)

    def teachers(self, x: torch.Tensor, ks: Iterable[int] = DEFAULT_KS) -> list[torch.Tensor]:
        """One output per k from a single backbone pass: each k is only a shift plus the 1x1 head."""
        ks = [validate_k(k) for k in ks]
        feats = self.features(x)
        return [self.head(feats, k) for k in ks]
