"""AT-BSN, the meta-teacher: one backbone, a blind spot of any size k chosen at run time.

``forward(x, k)`` is the paper's method: rotate the image four ways, run the blind backbone on each (every
output pixel then sees only its own half-plane), shift each map ``s = (k + 1) // 2`` pixels away from the
half-plane it looks at, rotate back, and mix the four with three 1x1 convolutions. The helpers below the
class build the same result faster; which one runs is decided once per call, from
:func:`~atbsn.blindspot.execution_path` (see :meth:`ATBSN._plan`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blindspot import NEG_SLOPE, execution_path, multiple_pad, rotate, shift_for_k
from .config import SIDD_KS, ModelConfig
from .methods import blind_spot
from .ranges import into_weights, out_of_weights
from .unet import UNet, init_weights

Features = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
TURNS = (0, 1, 2, 3)  # the four rotations: looking up, left, down, right
_PROJECTED_HEAD_BYTES = 1 << 30  # above this, teachers() runs the banded head once per k (bounded memory)
_HEAD_BAND_PIXELS = 4096  # pixels per band of the inference head (a 6 MB stack at width 48; 2k to 16k measured alike)


class ATBSN(nn.Module):
    """Asymmetric Tunable Blind-Spot Network (Chen et al., CVPR 2024).

    ``net(x, k)`` takes N x C x H x W images in 0..255 of any size and hides a k x k square around each
    pixel (k = 0 hides nothing). The input is zero-padded to a multiple of 32 inside (zeros keep the blind
    spot exact) and the output cropped back. Weights are channels-last (the fast layout for convolutions).
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
        self.to(memory_format=torch.channels_last)

    @property
    def k_infer(self) -> int:
        return self.config.k_infer

    # ------------------------------------------------------------------------------------ the method
    def forward(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Denoise with blind spot k (default: the configured inference size k_b)."""
        s = shift_for_k(blind_spot(self.config, k))
        plan = self._plan(x)
        maps = self._backbone(x, plan)  # rotate, blind UNet (each map still in its rotated frame)
        return self._head(maps, x.shape[-2:], s, plan)  # shift, rotate back, 1x1 mixing

    def features(self, x: torch.Tensor) -> Features:
        """The four directional feature maps (looking up, left, down, right), in the image's frame.

        Each map at a pixel depends only on input pixels on the looked-at side of it, its own row or
        column included; ``head`` shifts them to exclude the blind spot.
        """
        return _to_image_frame(self._backbone(x, self._plan(x)), TURNS, *x.shape[-2:])

    def head(self, features: Sequence[torch.Tensor], k: int | None = None) -> torch.Tensor:
        """Shift the directional maps (image frame) for blind spot k and mix them with the 1x1 convolutions."""
        s = shift_for_k(blind_spot(self.config, k))
        return self._head(features, features[0].shape[-2:], s, self._plan(features[0]), turns=(0, 0, 0, 0))

    def teachers(self, x: torch.Tensor, ks: Iterable[int] = SIDD_KS) -> list[torch.Tensor]:
        """One output per k from a single backbone pass: each k is only a shift plus the 1x1 head.

        For several k on a batch of moderate size (distillation), nin_A is applied to each direction once
        and only its outputs are shifted per k (``_shifted_sum``): measured 1.85x faster for seven k on
        8 x 128^2. The result equals ``net(x, k)`` up to float round-off (the sums run in another order).
        """
        shifts = [shift_for_k(k) for k in ks]
        plan = self._plan(x)
        maps = self._backbone(x, plan)
        n, (h, w) = x.shape[0], x.shape[-2:]
        projected_bytes = 4 * self.nin_A.out_channels * n * h * w * maps[0].element_size()
        if len(shifts) < 2 or plan["path"] != "infer" or projected_bytes > _PROJECTED_HEAD_BYTES:
            return [self._head(maps, (h, w), s, plan) for s in shifts]
        feats = _to_image_frame(maps, TURNS, h, w)
        wa, c = self.nin_A.weight, feats[0].shape[1]
        projected = [F.conv2d(f, wa[:, d * c : (d + 1) * c]) for d, f in enumerate(feats)]
        return [self._mix_after_a(F.leaky_relu(_shifted_sum(projected, s, self.nin_A.bias), NEG_SLOPE, inplace=True))
                for s in shifts]

    # ------------------------------------------------------------------------------------ the paths
    def _plan(self, x: torch.Tensor) -> dict:
        """The one place that picks the implementation for a call (outputs are the same up to round-off).

        - ``path`` (:func:`execution_path`): "train", "export" or "infer";
        - ``batched``: training on square crops runs the four rotations as one batch (its backward measured
          ~6% faster); otherwise one backbone pass per rotation (inference at 256^2: 0.36 vs 0.51 s, since
          a single image's rows stay contiguous views and the working set is 4x smaller);
        - ``channels_last``: keep activations in the weights' layout (not while exporting);
        - the head: a whole shifted stack when training or exporting, bands of rows without autograd.
        """
        path = execution_path()
        return {"path": path, "batched": path == "train" and x.shape[-1] == x.shape[-2],
                "channels_last": path != "export" and self.nin_A.weight.is_contiguous(
                    memory_format=torch.channels_last)}

    def _backbone(self, x: torch.Tensor, plan: dict) -> list[torch.Tensor]:
        """The blind UNet on the four rotations of ``x`` padded to 32: four maps, each in its rotated frame."""
        x = into_weights(x, self.config.value_range)
        h, w = x.shape[-2:]
        x = F.pad(x, (0, multiple_pad(w, 32), 0, multiple_pad(h, 32)))  # bottom/right: tiles keep the pool grid

        def layout(t: torch.Tensor) -> torch.Tensor:
            return t.contiguous(memory_format=torch.channels_last) if plan["channels_last"] else t

        if plan["batched"]:
            return list(self.unet(layout(torch.cat([rotate(x, q) for q in TURNS], dim=0))).chunk(4, dim=0))
        return [self.unet(layout(rotate(x, q))) for q in TURNS]

    def _head(self, maps: Sequence[torch.Tensor], size: Sequence[int], s: int, plan: dict,
              turns: Sequence[int] = TURNS) -> torch.Tensor:
        """Shift and mix maps that ``rotate(maps[i], -turns[i])[..., :h, :w]`` brings to the image frame.

        Without autograd it runs on bands of rows: the 4C-channel shifted stack and the 1x1 layers' outputs
        then stay small (at 1024^2 the whole stack is 1.6 GB, and the 384 -> 384 layer ran at a third of
        its speed on it), and the rotations back to the image frame copy a band at a time.
        """
        h, w = size
        if plan["path"] != "infer":
            return self._mix(_shifted_cat(_to_image_frame(maps, turns, h, w), s, plan["path"] == "export"))
        f0 = maps[0]
        n = f0.shape[0]
        fmt = torch.channels_last if f0.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        out = torch.empty((n, self.nin_C.out_channels, h, w), dtype=f0.dtype, device=f0.device, memory_format=fmt)
        rows = max(1, _HEAD_BAND_PIXELS // w)
        for a in range(0, h, rows):
            b = min(a + rows, h)
            out[:, :, a:b] = self._mix(_shifted_band(maps, turns, h, w, s, a, b, fmt))
        return out

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix_after_a(F.leaky_relu(self.nin_A(x), NEG_SLOPE, inplace=True))

    def _mix_after_a(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.nin_B(x), NEG_SLOPE, inplace=True)
        x = self.nin_C(x)
        return out_of_weights(x, self.config.value_range)


# ------------------------------------------------------------------------------------------------------
# The shifts, written on image-frame slices. Direction d's map looks at one half-plane; the head moves it
# ``s`` pixels away from that half-plane (zeros fill in), which hides the (2s - 1)-square around each pixel.


def _moves(h: int, w: int, sh: int, sw: int) -> list[tuple[tuple, tuple, tuple[int, int, int, int]]]:
    """The four shifts of the head as (source, destination, pad), one per direction: 0 moves down by ``sh``,
    1 right by ``sw``, 2 up, 3 left. ``map[source]`` is the part that stays in the image, ``destination`` where
    it lands, and ``pad`` (F.pad order) puts it there with zeros filling in."""
    r = (slice(None), slice(None))
    return [
        ((*r, slice(0, h - sh)), (*r, slice(sh, None)), (0, 0, sh, 0)),
        ((..., slice(0, w - sw)), (..., slice(sw, None)), (sw, 0, 0, 0)),
        ((*r, slice(sh, None)), (*r, slice(0, h - sh)), (0, 0, 0, sh)),
        ((..., slice(sw, None)), (..., slice(0, w - sw)), (0, sw, 0, 0)),
    ]


def _shifted_cat(features: Sequence[torch.Tensor], s: int, exporting: bool = False) -> torch.Tensor:
    """Concatenate the four directional maps along channels, each shifted by ``s`` pixels away from the
    half-plane it looks at (``_moves``; zeros fill in). This is the image-frame equivalent of the authors'
    "shift down in the rotated frame, then rotate back". Used when training and exporting; inference builds
    the same stack band by band (``_shifted_band``).
    """
    if s == 0:
        return torch.cat(list(features), dim=1)
    f0 = features[0]
    h, w = f0.shape[-2:]
    # exporting: no layout queries or clamps on symbolic sizes (they would add shape guards)
    sh, sw = (s, s) if exporting else (min(s, h), min(s, w))  # tiny maps: all zeros
    moves = _moves(h, w, sh, sw)
    cuts = [f[src] for f, (src, _, _) in zip(features, moves)]
    if not exporting and f0.is_contiguous(memory_format=torch.channels_last):
        # a pad keeps its input's layout: make the two transposed maps channels-last first, else the stack
        # (and the 1x1 convolution after it) would not be. Slice-assignments into one buffer instead would
        # each clone the whole gradient in the backward (measured slower).
        cuts = [t.contiguous(memory_format=torch.channels_last) for t in cuts]
    return torch.cat([F.pad(t, pad) for t, (_, _, pad) in zip(cuts, moves)], dim=1)


def _shifted_sum(projected: Sequence[torch.Tensor], s: int, bias: torch.Tensor) -> torch.Tensor:
    """``nin_A(_shifted_cat(f))`` from the four maps already projected by nin_A's slices (``W_d f_d``).

    A 1x1 convolution commutes with a shift (the zeros shifted in map to zeros), so the projections can be
    made once and only shifted and summed per k: this is what makes many teachers cheap.
    """
    h, w = projected[0].shape[-2:]
    z = torch.empty_like(projected[0])
    z.copy_(bias.view(1, -1, 1, 1).expand_as(z))
    for g, (src, dst, _) in zip(projected, _moves(h, w, min(s, h), min(s, w))):
        z[dst] += g[src]
    return z


def _to_image_frame(maps: Sequence[torch.Tensor], turns: Sequence[int], h: int, w: int) -> Features:
    """Rotate each map back by its turns and crop the padding (views, but for the flips)."""
    out = [rotate(f, -q) if q else f for f, q in zip(maps, turns)]
    if execution_path() == "export" or any(f.shape[-2:] != (h, w) for f in out):
        out = [f[..., :h, :w] for f in out]  # only when needed: a no-op crop still costs a backward copy
    return tuple(out)  # type: ignore[return-value]


def _image_rows(f: torch.Tensor, q: int, a: int, b: int) -> torch.Tensor:
    """Rows a..b-1 of ``rotate(f, -q)``, rotating only those rows."""
    q %= 4
    if q == 0:
        return f[:, :, a:b]
    if q == 2:
        hf = f.shape[2]
        return f[:, :, hf - b : hf - a].flip(2, 3)
    if q == 1:  # rotate(f, 3) = f.transpose(2, 3).flip(2)
        wf = f.shape[3]
        return f[:, :, :, wf - b : wf - a].transpose(2, 3).flip(2)
    return f[:, :, :, a:b].transpose(2, 3).flip(3)  # rotate(f, 1) = f.transpose(2, 3).flip(3)


def _shifted_band(maps: Sequence[torch.Tensor], turns: Sequence[int], h: int, w: int, s: int, a: int, b: int,
                  fmt: torch.memory_format) -> torch.Tensor:
    """Rows a..b-1 of ``_shifted_cat`` of the image-frame maps, built from the band's own rows only."""
    n, c = maps[0].shape[:2]
    band = torch.empty((n, 4 * c, b - a, w), dtype=maps[0].dtype, device=maps[0].device, memory_format=fmt)
    band.zero_()  # a band is small: zeroing it all costs less than tracking the strips the shift uncovers
    lo, hi = max(a - s, 0), max(b - s, 0)  # direction 0 moves down: band row i holds row i - s
    if hi > lo:
        band[:, :c, lo + s - a : hi + s - a] = _image_rows(maps[0], turns[0], lo, hi)[..., :w]
    lo, hi = a + s, min(b + s, h)  # direction 2 moves up: band row i holds row i + s
    if hi > lo:
        band[:, 2 * c : 3 * c, : hi - lo] = _image_rows(maps[2], turns[2], lo, hi)[..., :w]
    sw = min(s, w)  # directions 1 and 3 move right and left: the band's own rows
    if sw < w:
        band[:, c : 2 * c, :, sw:] = _image_rows(maps[1], turns[1], a, b)[..., : w - sw]
        band[:, 3 * c :, :, : w - sw] = _image_rows(maps[3], turns[3], a, b)[..., sw:w]
    return band
