"""Losses: the partition variant of distillation follows the flat-area teacher on flat pixels and the
texture teacher on textured ones; the texture measure is a local standard deviation."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from atbsn.config import ModelConfig
from atbsn.engine import photo_targets
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


def test_a_classical_teacher_moves_every_target_toward_its_output_by_its_weight():
    """A classical teacher (``distill --nlm-h``: non-local means of each patch): each blind-spot target moves toward
    its output by the weight (mean: the one averaged target; multi: each of them); weight 0 or none is the
    blind-spot teachers alone."""
    from atbsn.classical import nlm_at, nlm_teacher

    g = torch.Generator().manual_seed(0)
    y = (torch.rand(2, 3, 20, 24, generator=g) * 60 + 100).round()
    classical = nlm_teacher(6.0)
    out = classical(y)
    assert out.shape == y.shape and out.dtype == torch.float32
    first = y[0].permute(1, 2, 0).to(torch.uint8).numpy()
    assert torch.equal(out[0], torch.from_numpy(nlm_at(first, 6.0)).permute(2, 0, 1).float())
    assert (out - y).abs().mean() > 1  # it denoises
    for weight in (0.25, 1.0):
        mean = DistillL1(FakeTeacher(), [0, 1], "mean", classical=classical, classical_weight=weight).targets(y)
        assert len(mean) == 1 and torch.allclose(mean[0], 5.0 + weight * (out - 5.0), atol=1e-4)
        multi = DistillL1(FakeTeacher(), [0, 1], "multi", classical=classical, classical_weight=weight).targets(y)
        assert [torch.allclose(t, 10.0 * k + weight * (out - 10.0 * k), atol=1e-4) for k, t in zip((0, 1), multi)] \
            == [True, True]
    unmoved = DistillL1(FakeTeacher(), [0, 1], "mean", classical=classical, classical_weight=0.0).targets(y)
    assert torch.equal(unmoved[0], torch.full_like(y, 5.0))
    with pytest.raises(AtbsnError, match="weight must be in 0..1"):
        DistillL1(FakeTeacher(), [0, 1], "mean", classical=classical, classical_weight=1.5)


@pytest.mark.slow  # about 7 s: a process pool spawned, and BM3D
def test_bm3d_as_a_teacher_is_bm3d_on_each_image_and_photos_side_by_side_give_the_same_outputs():
    """``bm3d_teacher`` (``--bm3d-sigma``) is :func:`atbsn.classical.bm3d` on each image of a batch; ``many`` runs
    photos in processes (one per core) with the outputs of one call each, in order."""
    from dataclasses import replace

    from atbsn.classical import bm3d, bm3d_teacher, nlm_teacher

    y = (torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 60 + 100).round()
    teacher = bm3d_teacher(6.0)
    assert teacher.processes and teacher.name == "BM3D"
    image = y[0].permute(1, 2, 0).to(torch.uint8).numpy()
    assert torch.equal(teacher(y)[0], torch.from_numpy(bm3d(image, 6.0)).permute(2, 0, 1).float())
    side_by_side = replace(nlm_teacher(6.0), processes=True)  # the pool, with a fast denoiser
    photos = [image, image[::-1].copy(), image[:, ::-1].copy()]
    got = side_by_side.many([a.astype(np.float32) for a in photos])
    assert all(np.array_equal(g, nlm_teacher(6.0).many([a])[0]) for g, a in zip(got, photos))


def test_a_run_takes_one_classical_teacher_by_its_options():
    """``distill``'s options pick the classical teacher and its weight; both at once is refused on one line."""
    from atbsn.config import RunConfig
    from atbsn.distill import classical_teacher

    run = partial(RunConfig, task="distill", data=["x"], out="o")
    assert classical_teacher(run()) == (None, 0.0)
    fn, weight = classical_teacher(run(bm3d_sigma=4.0, bm3d_weight=0.3))
    assert (fn.name, fn.strength, fn.processes, weight) == ("BM3D", 4.0, True, 0.3)
    fn, weight = classical_teacher(run(nlm_h=6.0))
    assert (fn.name, fn.strength, fn.processes, weight) == ("NLM", 6.0, False, 0.5)
    with pytest.raises(AtbsnError, match="give one classical teacher"):
        classical_teacher(run(nlm_h=6.0, bm3d_sigma=4.0))


@pytest.mark.parametrize("mode", ["partition", "multi"])
def test_targets_appended_to_the_batch_replace_the_teacher_exactly(mode):
    loss = DistillL1(FakeTeacher(), [9, 0], mode)
    y = torch.rand(2, 3, 24, 32) * 255
    student = nn.Conv2d(3, 3, 1)
    mask = torch.ones(2, 1, 24, 32)
    cached = torch.cat([y, *loss.targets(y)], 1)
    assert cached.shape[1] == 3 * (1 + loss.n_targets)
    assert torch.equal(loss(student, cached, mask), loss(student, y, mask))


class PixelTeacher(FakeTeacher):
    """Each output a function of each pixel alone (as a real teacher's is of its neighbourhood, wherever it is):
    k_b gives the photo itself, any other k half of it plus k."""

    def teachers(self, y, ks):
        return [y.clone() if k == self.config.k_infer else 0.5 * y + k for k in ks]


def test_a_photos_targets_in_the_teachers_tiles_equal_the_untiled_ones():
    """Tiled at a recorded training crop of 32 (windows of 16 + 2 x 8 context), the partition's texture map (7 x 7)
    and the targets are those of the whole photo, at odd sizes too."""
    teacher = PixelTeacher()
    teacher.config.train_crop = 32
    loss = DistillL1(teacher, [9, 0], "partition")
    photo = np.full((45, 71, 3), 100, np.float32)
    photo[:, 30:] += np.random.default_rng(0).uniform(-20, 20, (45, 41, 3)).astype(np.float32)  # texture on the right
    got = photo_targets(loss, photo, torch.device("cpu"))
    whole = loss.targets(torch.from_numpy(photo.transpose(2, 0, 1).copy())[None])[0][0].permute(1, 2, 0).numpy()
    assert got.shape == (45, 71, 3) and np.allclose(got, whole, atol=1e-4)
    assert np.all(got[:, :20] == 59.0) and np.allclose(got[:, 40:], 0.5 * photo[:, 40:])  # flat: k = 9; texture: k = 0


def test_a_classical_teacher_sees_the_whole_photo_once_not_the_teachers_tiles():
    """With ``--cache-targets`` the classical teacher runs once on the whole photo (BM3D's block matching needs the
    photo's reach, and tiles would cost it their overlap): the blind-spot targets tiled, then moved toward it."""
    calls = []

    def classical(y):
        calls.append(tuple(y.shape[-2:]))
        return y.flip(-1)  # depends on the whole width: a tiled call would differ

    teacher = PixelTeacher()
    teacher.config.train_crop = 32
    loss = DistillL1(teacher, [1, 0], "multi", classical=classical, classical_weight=0.25)
    photo = np.random.default_rng(1).uniform(0, 255, (45, 71, 3)).astype(np.float32)
    got = photo_targets(loss, photo, torch.device("cpu"))
    assert calls == [(45, 71)]
    whole = torch.from_numpy(photo.transpose(2, 0, 1).copy())[None]
    expected = torch.cat(loss.targets(whole), 1)[0].permute(1, 2, 0).numpy()
    assert got.shape == (45, 71, 6) and np.allclose(got, expected, atol=1e-3)
