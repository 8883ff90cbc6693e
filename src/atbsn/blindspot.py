"""The blind-spot machinery: shifted convolutions and pools, rotations, and the k -> shift rule.

A "blind" layer only ever looks at rows on or above the current row (Laine et al. 2019). Four copies of
a network built from such layers, each run on a rotated image, cover the four half-planes; shifting every
map by ``s`` rows before rotating back hides a square of side ``2 s - 1`` around each pixel.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from .errors import AtbsnError

NEG_SLOPE = 0.1


def execution_path() -> str:
    """Which implementation the layers run, decided here for the whole package.

    ``"export"``: inside ``torch.export`` (symbolic sizes: plain pads, no layout queries); ``"train"``:
    autograd on (layouts whose backward is fast: pad then convolve, whole stacks); ``"infer"``: no autograd
    (shifts folded into padding, the teacher's head in bands of rows, shared projections for many k).
    Each choice is checked against the layer-by-layer reference (:mod:`atbsn.reference`) by the tests.
    """
    if torch.compiler.is_exporting():
        return "export"
    return "train" if torch.is_grad_enabled() else "infer"


def integer(value: object) -> int | None:
    """``value`` as an int if it is an integer (ints and numpy integers; not bools, floats or strings), else None:
    the first check of every blind-spot control."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def validate_k(k: object) -> int:
    """Return ``k`` as an int if it is a valid blind-spot size (0 or a positive odd integer)."""
    value = integer(k)
    value = -1 if value is None else value
    if value != 0 and (value < 0 or value % 2 == 0):
        raise AtbsnError(f"invalid blind-spot size k={k!r}: k must be 0 or a positive odd integer (1, 3, 5, ...)")
    return value


def validate_k_train(k: object) -> int:
    """A training blind spot k_a: a valid k that hides something (k_a = 0 would learn the identity)."""
    value = validate_k(k)
    if value == 0:
        raise AtbsnError("k_train = 0 hides nothing: the network would learn the identity; use k_a >= 1")
    return value


def shift_for_k(k: int) -> int:
    """Rows each directional feature map is shifted down so that a k x k square is hidden."""
    return (validate_k(k) + 1) // 2


def shift_down(x: torch.Tensor, rows: int) -> torch.Tensor:
    """Move a map ``rows`` rows down: zeros come in at the top, the bottom rows fall off."""
    if rows == 0:
        return x
    h = x.shape[-2]
    if rows >= h:
        return torch.zeros_like(x)
    return F.pad(x[..., : h - rows, :], (0, 0, rows, 0))


class Conv(nn.Module):
    """3x3 convolution + LeakyReLU(0.1); ``blind`` restricts the receptive field to rows at or above.

    The blind version is "pad one zero row on top, convolve with padding 1, drop the last row". That
    equals a convolution with the shift folded into its own padding (2 rows, 1 column) whose last two
    output rows are dropped: no padded copy of the input is made (a view, measured about 10 to 30% faster
    per layer than pad-then-convolve on CPU). ``padding_mode`` other than zeros (students A and B use
    replicate) is only allowed for non-blind layers: a replicated pixel would leak the centre into the
    blind spot.
    """

    def __init__(self, cin: int, cout: int, *, bias: bool = True, blind: bool = False,
                 padding_mode: str = "zeros", act: bool = True) -> None:
        super().__init__()
        if blind and padding_mode != "zeros":
            raise ValueError("blind convolutions need zero padding")
        self.blind = blind
        self.padding_mode = padding_mode
        self.act = act
        self.conv = nn.Conv2d(cin, cout, 3, padding=0, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.conv.weight, self.conv.bias
        if self.blind and execution_path() != "infer":
            # exporting: the plain pad handles symbolic sizes; training: the backward of the cropped
            # output is about twice as slow as that of the padded copy (channels-last, measured)
            x = F.conv2d(F.pad(x, (1, 1, 2, 0)), w, b)
        elif self.blind:
            x = F.conv2d(x, w, b, padding=(2, 1))[:, :, : x.shape[2]]
        elif self.padding_mode == "zeros":
            x = F.conv2d(x, w, b, padding=1)
        else:
            x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode=self.padding_mode), w, b)
        return F.leaky_relu(x, NEG_SLOPE, inplace=True) if self.act else x


class Pool(nn.Module):
    """2x2 max-pool; the blind version first shifts the map down by one row."""

    def __init__(self, blind: bool = False) -> None:
        super().__init__()
        self.blind = blind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.blind:
            x = shift_down(x, 1)
        return F.max_pool2d(x, 2)


def upsample2(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour x2 upsampling."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def rotate(x: torch.Tensor, quarter_turns: int) -> torch.Tensor:
    """Rotate N x C x H x W maps counter-clockwise by 90 degrees times ``quarter_turns``.

    Matches the authors' convention: a turn of 1 is ``x.transpose(2, 3).flip(3)``.
    """
    q = quarter_turns % 4
    if q == 0:
        return x
    if q == 1:
        return x.transpose(2, 3).flip(3)
    if q == 2:
        return x.flip(2, 3)
    return x.transpose(2, 3).flip(2)


def multiple_pad(size: int, multiple: int) -> int:
    """Rows (or columns) to add so that ``size`` becomes a multiple of ``multiple``."""
    return (multiple - size % multiple) % multiple  # no negative modulo: it exports to ONNX unambiguously
