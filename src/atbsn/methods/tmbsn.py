"""TM-BSN (CVPR 2026): a blind-spot teacher built from triangular-masked convolutions, hole size chosen per call.

Every 3x3 convolution of the backbone keeps only the taps whose column offset is at least their row offset
(the upper triangle with its diagonal, ``[[1, 1, 1], [0, 1, 1], [0, 0, 1]]``), so a stack of them sees only
the half-plane dx >= dy around each pixel. The image and its three rotations go through that backbone; each
map is shifted by the hole size h (down by h rows, and left by h columns: two copies), the rotations are
undone and a 1x1 head mixes the eight maps. What no copy sees is the diamond |dx - dy| < h and |dx + dy| < h
around each pixel: the blind spot, chosen at run time like AT-BSN's k.

Constants from the authors' repository (parkjun210/TM-BSN, ``model/TMBSN.py`` and ``train_tmbsn.py``): 48
features, five residual-in-residual groups of five residual blocks (masked conv, ReLU, masked conv, skip; a
masked conv and the group skip), the backbone's output added to its first conv's; head 1x1 384 -> 384 -> 96 ->
3 with ReLU; inputs in 0..1; training L1 to the noisy input at h = 5, Adam lr 1e-4, batch 4 of 128 x 128 crops,
cosine decay; validation over h in 1..6 and their SIDD benchmark at h = 2 (reflect-padded by 16). Module
names equal theirs (``unet.RIR_blocks.0.res_blocks.0.conv1``, ``nin_A``, ...) so their files load as they are.
Their code stacks the rotations in the batch (square inputs only); here a non-square input runs them one by
one, the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..blindspot import integer
from ..config import ModelConfig, RunConfig
from ..errors import AtbsnError
from ..losses import SelfL1
from ..ranges import into_weights, out_of_weights
from . import Arch, Knob, Method, MethodSpec, blind_spot, conv_weight, knob_values, parameters, register, start
from .common import CPU_BUDGET

GROUPS = BLOCKS = 5
TRIANGLE = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])  # kept taps: dx >= dy


def validate_hole(h: object) -> int:
    """A hole size: an integer >= 0 (0 hides only what the triangles already hide: nothing)."""
    value = integer(h)
    if value is None or value < 0:
        raise AtbsnError(f"invalid hole size {h!r}: TM-BSN's hole is an integer >= 0 (2 to 6 in its paper)")
    return value


def _train_hole(h: object) -> int:
    value = validate_hole(h)
    if value == 0:
        raise AtbsnError("a hole of 0 hides nothing: the network would learn the identity; train with h >= 1")
    return value


class TriangleConv(nn.Conv2d):
    """3x3 convolution whose weight is multiplied by the triangular ``mask`` at every forward (the authors' files
    store the mask; gradients of the hidden taps are zero)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3, padding=1)
        self.register_buffer("mask", TRIANGLE.expand(cout, cin, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = TriangleConv(c, c), TriangleConv(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class RIRGroup(nn.Module):
    def __init__(self, c: int, blocks: int) -> None:
        super().__init__()
        self.res_blocks = nn.Sequential(*[ResBlock(c) for _ in range(blocks)])
        self.conv_out = TriangleConv(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_out(self.res_blocks(x))


class TriangleNet(nn.Module):
    """The backbone: sees only offsets with dx >= dy."""

    def __init__(self, cin: int, c: int, groups: int = GROUPS, blocks: int = BLOCKS) -> None:
        super().__init__()
        self.conv1 = TriangleConv(cin, c)
        self.RIR_blocks = nn.Sequential(*[RIRGroup(c, blocks) for _ in range(groups)])  # noqa: N815 - their name
        self.conv2 = TriangleConv(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.conv1(x)
        return x1 + self.conv2(self.RIR_blocks(x1))


# The four views (the authors' order) and how each is undone.
_VIEWS = (lambda t: t, lambda t: t.transpose(2, 3).flip(3), lambda t: t.flip(2).flip(3),
          lambda t: t.transpose(2, 3).flip(2))
_UNDO = (lambda t: t, lambda t: t.flip(3).transpose(2, 3), lambda t: t.flip(2).flip(3),
         lambda t: t.flip(2).transpose(2, 3))


def _shifted(f: torch.Tensor, h: int) -> torch.Tensor:
    """The map shifted down by h rows and, apart, left by h columns (zeros come in), side by side on channels."""
    if h == 0:
        return torch.cat((f, f), 1)
    rows, cols = f.shape[-2:]
    down = F.pad(f[..., : max(rows - h, 0), :], (0, 0, min(h, rows), 0))
    left = F.pad(f[..., :, min(h, cols):], (0, min(h, cols), 0, 0))
    return torch.cat((down, left), 1)


class TMBSN(nn.Module):
    """TM-BSN: ``forward(x, k=None)`` on N x C x H x W in 0..255, hole size ``k`` (default ``config.k_infer``).

    ``teachers(x, ks)`` gives the outputs for several holes from one backbone pass (the authors' ``forward_outs``).
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig("tmbsn", width=48, value_range=1.0, k_train=5, k_infer=2)
        c, cin = self.config.width, self.config.in_channels
        self.unet = TriangleNet(cin, c)
        self.nin_A = nn.Conv2d(8 * c, 8 * c, 1)  # noqa: N815 - the authors' names
        self.nin_B = nn.Conv2d(8 * c, 2 * c, 1)  # noqa: N815
        self.nin_C = nn.Conv2d(2 * c, cin, 1)  # noqa: N815

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's map of each of the four views, each in its own (rotated) frame."""
        x = into_weights(x, self.config.value_range)
        views = [v(x) for v in _VIEWS]
        if x.shape[-1] == x.shape[-2]:  # square: one batch, as the authors run it
            return list(self.unet(torch.cat(views, 0)).chunk(4, 0))
        return [self.unet(v) for v in views]

    def head(self, maps: list[torch.Tensor], h: int) -> torch.Tensor:
        y = torch.cat([undo(_shifted(f, h)) for undo, f in zip(_UNDO, maps)], 1)
        y = self.nin_C(F.relu(self.nin_B(F.relu(self.nin_A(y)))))
        return out_of_weights(y, self.config.value_range)

    def forward(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        return self.head(self.features(x), blind_spot(self.config, k))

    def teachers(self, x: torch.Tensor, ks: Sequence[int]) -> list[torch.Tensor]:
        maps = self.features(x)
        return [self.head(maps, validate_hole(k)) for k in ks]


class HoleL1(SelfL1):
    """TM-BSN's loss: L1 between the output at the training hole and the noisy input itself."""

    def __init__(self, hole: int) -> None:
        super().__init__(_train_hole(hole))
        self.hole = self.control


def _unwrap(obj) -> tuple[dict, float] | None:
    """Their resume file ``bsn_latest.pth``: ``{"iter", "model": state dict, "optimizer", "scheduler"}``."""
    return (obj["model"], 1.0) if "iter" in obj and isinstance(obj.get("model"), dict) else None


def _detect(sd, value_range: float) -> ModelConfig | None:  # noqa: ARG001 - the authors' files are on 0..1
    if "unet.RIR_blocks.0.res_blocks.0.conv1.weight" in sd and "nin_A.weight" in sd:
        w = conv_weight(sd, "unet.conv1.weight")
        groups = len({k.split(".")[2] for k in sd if k.startswith("unet.RIR_blocks.")})
        blocks = len({k.split(".")[4] for k in sd if k.startswith("unet.RIR_blocks.0.res_blocks.")})
        if (groups, blocks) != (GROUPS, BLOCKS):
            raise AtbsnError(f"a TM-BSN of {groups} groups of {blocks} blocks; atbsn builds {GROUPS} x {BLOCKS}")
        return ModelConfig("tmbsn", width=w.shape[0], in_channels=w.shape[1], value_range=1.0, k_train=5, k_infer=2)
    return None


HOLE = Knob("hole", "hole size", train=5, infer=2, sweep=(0, 1, 2, 3, 4, 5, 6), validate=validate_hole,
            validate_train=_train_hole, span=lambda h: 2 * h + 1)
# No pooling: tiled from free memory, not at the training crop. Context: 57 triangular 3x3 convolutions reach 57
# pixels, plus the hole's shift. Peak memory: four views of 48 channels, several maps alive, plus the 384-channel
# head (measured with benchmarks/memory.py's method: about 4 KB a pixel at width 48, rounded up).
register(Arch("tmbsn", "TM-BSN", TMBSN, _detect, bytes_per_pixel=5000, margin=64, knob=HOLE, teacher=True,
              tile_at_train_crop=False, unwrap=_unwrap))


def make(config: RunConfig, init=None) -> Method:
    """A TM-BSN of ``config.width`` features trained at hole ``k_train``, ``k_infer`` recorded for inference."""
    hole_train, hole_infer = knob_values(config, SPEC)
    model = TMBSN(ModelConfig("tmbsn", width=config.width, value_range=1.0, k_train=hole_train, k_infer=hole_infer))
    how = start(model, init)
    return Method(model, HoleL1(hole_train),
                  f"training TM-BSN ({config.width} features, {parameters(model)} parameters, {how}): hole "
                  f"{hole_train} for training, {hole_infer} for inference")


SPEC = register(MethodSpec("tmbsn", "TM-BSN", "tmbsn", make, presets={
    "sidd": {"steps": 500_000, "batch": 4, "crop": 128, "width": 48, "lr": 1e-4, "k_train": 5, "k_infer": 2},
    "cpu": {**CPU_BUDGET, "k_train": 5, "k_infer": 2},
}))
