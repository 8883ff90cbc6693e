"""Neighbor2Neighbor: the sub-sampler takes two adjacent pixels of each 2x2 cell; prediction and target are
disjoint; the pairs and the regulariser's weight are functions of (seed, step)."""

from __future__ import annotations

import torch

from atbsn.methods.n2n import GAMMA_END, Neighbor2NeighborLoss, draw_pairs, subsample
from atbsn.students import Student


def test_the_two_sub_images_hold_adjacent_pixels_of_each_cell():
    h, w = 10, 14
    pos = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w).repeat(2, 3, 1, 1)
    g = torch.Generator().manual_seed(0)
    a, b = subsample(pos, draw_pairs(pos, g))
    assert a.shape == (2, 3, h // 2, w // 2)
    ya, xa, yb, xb = a // w, a % w, b // w, b % w
    assert torch.equal(ya // 2, torch.arange(h // 2)[:, None].expand_as(ya[0, 0]).expand_as(ya))  # same cell
    assert torch.equal(xa // 2, xb // 2)
    assert torch.equal((ya - yb).abs() + (xa - xb).abs(), torch.ones_like(ya))  # 4-neighbours, never equal
    assert torch.equal(a[:, 0], a[:, 2])  # one choice for all channels
    seen = {(int(p), int(q)) for p, q in zip(((ya % 2) * 2 + xa % 2).flatten(), ((yb % 2) * 2 + xb % 2).flatten())}
    assert len(seen) == 8  # all eight ordered pairs occur


def test_the_prediction_never_sees_its_target_pixels():
    net = Student("C", width=4).double()
    y = (torch.rand(1, 3, 32, 32, dtype=torch.float64) * 255).requires_grad_(True)
    pairs = draw_pairs(y, torch.Generator().manual_seed(1))
    sub1, _ = subsample(y, pairs)
    net(sub1).sum().backward()
    marker = torch.zeros_like(y)
    _, s2 = subsample(torch.arange(y.numel(), dtype=torch.float64).reshape(y.shape), pairs)
    marker.view(-1)[s2.long().flatten()] = 1
    assert (y.grad * marker).abs().sum() == 0  # no gradient reaches the pixels of the second sub-image
    assert y.grad.abs().sum() > 0


def test_pairs_and_gamma_follow_the_step_so_resume_is_exact():
    loss = Neighbor2NeighborLoss(seed=4)
    y = torch.rand(2, 3, 16, 16)
    loss.at(7, 10)
    first = draw_pairs(y, loss.generator)
    loss.at(3, 10)
    loss.at(7, 10)
    assert torch.equal(first, draw_pairs(y, loss.generator))
    loss.at(9, 10)
    assert loss.gamma == GAMMA_END
    net = Student("C", width=4)
    value = loss(net, y * 255, torch.ones(2, 1, 16, 16))
    assert value.ndim == 0 and torch.isfinite(value)
