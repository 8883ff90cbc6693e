"""Zero-Shot Noise2Noise (Mansour and Heckel, CVPR 2023): a two-layer network trained on the noisy photo itself.

The photo's two half-size images, the means of each 2 x 2 cell's diagonal pixels and of its anti-diagonal ones,
carry nearly the same content with (for pixel-wise independent noise) independent noise: each is the other's
target. The network predicts the noise (output = input - net(input)); its loss is the symmetric residual loss
between the halves plus a consistency loss (denoising then halving must agree with halving then denoising).

Constants from the authors' paper and notebook: convolutions 3 x 3 (c -> 48), 3 x 3 (48 -> 48), 1 x 1 (48 -> c),
LeakyReLU 0.2 after the first two; MSE on 0..1 values; Adam lr 1e-3, halved every 1,000 of 2,000 steps, on the
whole photo. That is the zero-shot rule (:func:`zero_shot`: a fresh network per photo, as its authors run it,
and what ``atbsn.classical.zsn2n`` gives the benchmark tables); ``atbsn train --method zsn2n`` trains one such
network on a folder's crops with the same loss, for the same harness as the other methods.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, RunConfig
from ..losses import Loss
from ..ranges import into_weights, out_of_weights
from ..runtime import autocast
from . import Arch, Method, MethodSpec, conv_weight, parameters, register, start
from .common import CPU_BUDGET

WIDTH, STEPS, LR, HALVE_EVERY, SLOPE = 48, 2000, 1e-3, 1000, 0.2


class ZSN2N(nn.Module):
    """The two-layer noise predictor, as every network here: 0..255 in and out, its weights on 0..1 values."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig("zsn2n", width=WIDTH, value_range=1.0)
        c, cin = self.config.width, self.config.in_channels
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(cin, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1), \
            nn.Conv2d(c, cin, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = into_weights(x, self.config.value_range)
        noise = self.conv3(F.leaky_relu(self.conv2(F.leaky_relu(self.conv1(x), SLOPE)), SLOPE))
        return out_of_weights(x - noise, self.config.value_range)


def halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The diagonal and anti-diagonal half-size images of ``x`` (N x C x H x W; an odd last row/column dropped)."""
    x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    return (a + d) / 2, (b + c) / 2


class ZSN2NLoss(Loss):
    """Residual + consistency on 0..1 values: 1/2 (|a - f(b)|^2 + |b - f(a)|^2) + 1/2 (|f(a) - halves(f(y))_1|^2
    + |f(b) - halves(f(y))_2|^2), means over pixels (the authors' loss)."""

    def forward(self, model: nn.Module, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # every term on 0..255, the sum scaled to 0..1 values at the end; no mask: each half-size pixel comes from
        # its own 2 x 2 cell of the crop
        a, b = halves(y)
        fa, fb = model(a).float(), model(b).float()
        ga, gb = halves(model(y).float())
        terms = F.mse_loss(fb, a) + F.mse_loss(fa, b) + F.mse_loss(fa, ga) + F.mse_loss(fb, gb)
        return 0.5 * terms / 255.0**2


def zero_shot(noisy: np.ndarray, steps: int = STEPS, seed: int = 0, device: str | torch.device = "cpu",
              precision: str = "fp32") -> np.ndarray:
    """The authors' rule: a fresh network (its initial weights from ``seed``) trained ``steps`` steps on this
    photo alone (H x W x C uint8), then applied to it; uint8 back. Channels-last (2x faster on a CPU); ``precision``
    ``bf16`` or ``auto`` (bf16 where native) is about 3x faster again where the CPU computes bf16 natively. Still
    minutes per megapixel on a CPU: 2,000 steps over the whole photo."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):  # the initial weights from the seed, the caller's generator untouched
        torch.manual_seed(seed)
        net = ZSN2N(ModelConfig("zsn2n", width=WIDTH, in_channels=noisy.shape[2], value_range=1.0))
    net = net.to(device, memory_format=torch.channels_last)
    y = torch.from_numpy(np.ascontiguousarray(noisy.transpose(2, 0, 1))).float()[None].to(device)
    y = y.contiguous(memory_format=torch.channels_last)
    loss, ctx = ZSN2NLoss(), autocast(device, precision)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=HALVE_EVERY, gamma=0.5)
    mask = torch.ones_like(y[:, :1])
    for _ in range(steps):
        opt.zero_grad()
        with ctx:
            value = loss(net, y, mask)
        value.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        out = net(y).float().clamp(0, 255)
    return np.round(out[0].permute(1, 2, 0).cpu().numpy()).astype(np.uint8)


def _detect(sd, value_range: float) -> ModelConfig | None:
    if set(sd) == {f"conv{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}:
        w = conv_weight(sd, "conv1.weight")
        return ModelConfig("zsn2n", width=w.shape[0], in_channels=w.shape[1], value_range=value_range)
    return None


def make(config: RunConfig, init=None) -> Method:
    model = ZSN2N(ModelConfig("zsn2n", width=config.width, value_range=1.0))
    how = start(model, init)
    return Method(model, ZSN2NLoss(), f"training Zero-Shot Noise2Noise on the folder's crops (two layers of width "
                                      f"{config.width}, {parameters(model)} parameters, {how}); non-blind")


# Two 3 x 3 convolutions: it sees 2 pixels around each one; no pooling, so any tile size and no training crop
register(Arch("zsn2n", "ZS-N2N", ZSN2N, _detect, bytes_per_pixel=600, margin=4, tile_at_train_crop=False))
register(MethodSpec("zsn2n", "Zero-Shot Noise2Noise", "zsn2n", make,
                    presets={"sidd": {"steps": STEPS, "batch": 1, "crop": 256, "width": WIDTH, "lr": LR},
                             "cpu": {**CPU_BUDGET, "width": WIDTH, "lr": LR}}))
