"""TM-BSN's teacher: the authors' checkpoint and every tensor their code computes, reproduced; its blind spot (the
triangles of every convolution and the diamond the hole leaves) tested by gradients at the borders and odd sizes;
and it teaches a student through atbsn's distillation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_to_scale, shared_path

from atbsn.checkpoint import load
from atbsn.config import ModelConfig, RunConfig
from atbsn.distill import distill_method
from atbsn.errors import AtbsnError
from atbsn.methods.tmbsn import _VIEWS, TMBSN, TRIANGLE, HoleL1, validate_hole


@pytest.fixture(scope="module")
def authors():
    folder = shared_path("fixtures", "tmbsn")
    model = load(folder / "tmbsn_official_format.pth", part="teacher")
    return model, torch.load(folder / "tmbsn_expected_outputs.pt", weights_only=True)


def _close(ours: torch.Tensor, ref: torch.Tensor, rel: float = 1e-5) -> None:
    """The README's tolerance: two runs of the authors' code differ by 1e-6 of the scale with 2 threads."""
    assert_close_to_scale(ours, ref, rel)


def test_the_authors_checkpoint_loads_as_their_teacher(authors):
    model, ref = authors
    assert model.config.arch == "tmbsn" and model.config.value_range == 1.0 and model.config.k_infer == 2
    assert sum(p.numel() for p in model.parameters()) == 1_350_339
    assert torch.equal(TRIANGLE, ref["conv_mask_3x3"])
    assert torch.equal(model.unet.conv1.mask[0, 0], ref["conv_mask_3x3"])


@torch.no_grad()
def test_every_tensor_of_the_authors_code_is_reproduced(authors):
    model, ref = authors
    x = ref["input"] * 255  # their 0..1 input on atbsn's 0..255 scale; outputs back to 0..1 below
    _close(torch.cat([v(ref["input"]) for v in _VIEWS]), ref["rotated_input"], 0)
    _close(torch.cat(model.features(x)), ref["blindnet_features"])
    for h in range(7):
        _close(model(x, h) / 255, ref[f"forward_h{h}"])
    _close(torch.stack(model.teachers(x, [1, 2, 3, 4, 5, 6])) / 255, ref["forward_outs_h1to6"])
    padded = F.pad(x, (16,) * 4, mode="reflect")
    bench = model(padded, 2)[..., 16:-16, 16:-16] / 255
    _close(bench, ref["benchmark_pad16_h2"])
    rounded = torch.round(bench.clamp(0, 1) * 255)
    assert float((rounded - ref["benchmark_uint8"]).abs().max()) <= 1  # only a .5 may flip under round-off
    assert float((rounded != ref["benchmark_uint8"]).float().mean()) < 1e-3
    targets = torch.stack([t[..., 16:-16, 16:-16] for t in model.teachers(padded, [2, 3, 4, 5, 6])]) / 255
    _close(targets, ref["distill_targets_pad16_h2to6"])


def test_the_training_path_and_loss_are_theirs(authors):
    model, ref = authors
    model = model.train()
    x = ref["input"] * 255
    _close(model(x, 5) / 255, ref["train_forward_h5"])
    loss = HoleL1(5)(model, x, torch.ones_like(x[:, :1])).detach() / 255  # L1 on 0..255: 255 x theirs on 0..1
    assert abs(float(loss) - float(ref["train_loss_L1"])) <= 1e-5 * float(ref["train_loss_L1"])
    model.eval()


def _hidden(model: TMBSN, h: int, size: tuple[int, int], at: tuple[int, int]) -> set[tuple[int, int]]:
    """The input pixels, as offsets from ``at``, on which the output at ``at`` does not depend (gradients)."""
    x = (torch.rand(1, 3, *size, dtype=torch.float64) * 255).requires_grad_(True)
    model(x, h)[0, :, at[0], at[1]].sum().backward()
    g = x.grad.abs().sum(1)[0]
    return {(int(r) - at[0], int(c) - at[1]) for r, c in (g == 0).nonzero()}


def _diamond(h: int, size: tuple[int, int], at: tuple[int, int]) -> set[tuple[int, int]]:
    return {(dy, dx) for dy in range(-at[0], size[0] - at[0]) for dx in range(-at[1], size[1] - at[1])
            if abs(dx - dy) < h and abs(dx + dy) < h}


@pytest.mark.parametrize("h, size, at", [(2, (17, 15), (8, 7)), (3, (17, 15), (0, 0)), (4, (13, 18), (12, 17)),
                                          (5, (16, 16), (3, 14)), (0, (9, 11), (4, 5)), (1, (9, 11), (0, 10))])
def test_the_hole_is_the_diamond_and_nothing_else_at_borders_and_odd_sizes(h, size, at):
    torch.manual_seed(h)
    model = TMBSN(ModelConfig("tmbsn", width=4, value_range=1.0, k_infer=h)).double()
    with torch.no_grad():  # masked taps non-zero: the mask must hide them, not the weights
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0, 0.5)
    assert _hidden(model, h, size, at) == _diamond(h, size, at)


def test_a_triangular_convolution_sees_only_its_triangle_and_masks_its_gradients():
    model = TMBSN(ModelConfig("tmbsn", width=4, value_range=1.0))
    conv = model.unet.conv1
    x = torch.rand(1, 3, 7, 7, requires_grad=True)
    conv(x)[0, :, 3, 3].sum().backward()
    seen = (x.grad.abs().sum(1)[0, 2:5, 2:5] > 0).float()
    assert torch.equal(seen, TRIANGLE)
    assert torch.equal(conv.weight.grad[:, :, TRIANGLE == 0], torch.zeros_like(conv.weight.grad[:, :, TRIANGLE == 0]))


def test_hole_sizes_are_checked_and_distillation_takes_the_teacher_s_own_rule():
    assert validate_hole(4) == 4
    for bad in (-1, 2.5, "3", True):
        with pytest.raises(AtbsnError, match="hole"):
            validate_hole(bad)
    teacher = TMBSN(ModelConfig("tmbsn", width=4, value_range=1.0))
    method = distill_method(RunConfig(task="distill", ks=[2, 4, 6], crop=32), torch.device("cpu"), teacher=teacher)
    assert method.loss.ks == [2, 4, 6]  # even holes: TM-BSN's rule, not AT-BSN's odd k
    y = torch.rand(2, 3, 32, 32) * 255
    assert float(method.loss(method.model, y, torch.ones(2, 1, 32, 32))) > 0
