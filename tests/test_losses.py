"""Losses: the partition variant of distillation follows the flat-area teacher on flat pixels and the
texture teacher on textured ones; the texture measure is a local standard deviation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from atbsn.config import ModelConfig
from atbsn.errors import AtbsnError
from atbsn.losses import DistillL1, local_std


class FakeTeacher(nn.Module):
    """k -> a constant image of value 10 k; its own k_b (the initial result): left half flat, right half a
    checkerboard of +-40 (texture)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = ModelConfig("atbsn", width=8, k_infer=3)

    def teachers(self, y, ks):
        out = []
        for k in ks:
            if k == self.config.k_infer:
                init = torch.full_like(y, 120.0)
                w = y.shape[-1]
                checker = (torch.arange(y.shape[-2])[:, None] + torch.arange(w)[None]) % 2 * 80.0 - 40.0
                init[..., w // 2:] += checker[:, w // 2:]
                out.append(init)
            else:
                out.append(torch.full_like(y, 10.0 * k))
        return out


def test_partition_targets_follow_the_flat_teacher_on_flat_pixels_and_the_texture_teacher_on_texture():
    loss = DistillL1(FakeTeacher(), [9, 0], "partition", threshold=5.0)
    y = torch.zeros(1, 3, 24, 32)
    target, textured = loss.partition(y)
    assert torch.all(target[..., :, :12] == 90.0)  # flat (k = 9), away from the split by the window
    assert torch.all(target[..., :, 20:] == 0.0)  # textured (k = 0)
    assert textured[..., :12].sum() == 0 and textured[..., 20:].min() == 1
    student = nn.Conv2d(3, 3, 1)
    value = loss(lambda x: student(x), y, torch.ones(1, 1, 24, 32))
    assert torch.isclose(value, (student(y) - target).abs().mean(), rtol=1e-5)


def test_partition_needs_two_ks_and_local_std_measures_texture():
    with pytest.raises(AtbsnError, match="two k"):
        DistillL1(FakeTeacher(), [0, 3, 9], "partition")
    flat = torch.full((1, 3, 16, 16), 100.0)
    assert local_std(flat).max() == 0
    noisy = flat + torch.randn(1, 3, 16, 16) * 10
    assert 5 < local_std(noisy).mean() < 15
