"""The five-level UNet shared by the AT-BSN backbone (blind) and student C (plain).

Module names follow the authors' release (``intro``, ``enc1``..``enc6``, ``dec5``..``dec1``, each conv
under ``convN.conv``) so their state dicts load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn

from .blindspot import Conv, Pool, upsample2


class EncoderStage(nn.Module):
    def __init__(self, cin: int, cout: int, *, blind: bool, pool: bool = True) -> None:
        super().__init__()
        self.conv1 = Conv(cin, cout, blind=blind)
        self.pool = Pool(blind) if pool else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.pool(x) if self.pool is not None else x


class DecoderStage(nn.Module):
    def __init__(self, cin: int, cmid: int, cout: int, *, blind: bool, up: bool = True) -> None:
        super().__init__()
        self.conv1 = Conv(cin, cmid, blind=blind)
        self.conv2 = Conv(cmid, cout, blind=blind)
        self.up = up

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # under autocast the network's input stays fp32 while x is bf16/fp16: concatenating them would
        # promote the whole stack to fp32 (measured: a third of student C's bf16 time at 256^2)
        x = self.conv2(self.conv1(torch.cat((x, skip.to(x.dtype)), dim=1)))
        return upsample2(x) if self.up else x


class UNet(nn.Module):
    """Input H and W must be multiples of 32 (five poolings); callers pad."""

    levels = 5

    def __init__(self, in_channels: int = 3, width: int = 48, out_channels: int = 96, *, blind: bool) -> None:
        super().__init__()
        c = width
        self.intro = Conv(in_channels, c, blind=blind)
        for i in range(1, 6):
            setattr(self, f"enc{i}", EncoderStage(c, c, blind=blind))
        self.enc6 = EncoderStage(c, c, blind=blind, pool=False)
        self.dec5 = DecoderStage(2 * c, 2 * c, 2 * c, blind=blind)
        for i in (4, 3, 2):
            setattr(self, f"dec{i}", DecoderStage(3 * c, 2 * c, 2 * c, blind=blind))
        self.dec1 = DecoderStage(2 * c + in_channels, 2 * c, out_channels, blind=blind, up=False)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = self.intro(inp)
        skips = []
        for enc in (self.enc1, self.enc2, self.enc3, self.enc4, self.enc5):
            x = enc(x)
            skips.append(x)
        x = upsample2(self.enc6(x))
        for dec, skip in zip((self.dec5, self.dec4, self.dec3, self.dec2), reversed(skips[:-1])):
            x = dec(x, skip)
        return self.dec1(x, inp)


def init_weights(module: nn.Module) -> None:
    """The authors' initialisation: Kaiming normal (a = 0.1) for every conv, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=0.1)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
