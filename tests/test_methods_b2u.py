"""Blind2Unblind: the 16 masks tile the image, the blind prediction never sees its pixel, beta follows the
authors' schedule."""

from __future__ import annotations

import pytest
import torch

from atbsn.methods.b2u import Blind2UnblindLoss, beta_at, grid_masks, masked_copies
from atbsn.students import Student


def test_each_pixel_is_hidden_in_exactly_one_copy_and_interpolated_from_its_neighbours():
    masks = grid_masks(9, 11)
    assert masks.shape == (16, 1, 9, 11) and torch.equal(masks.sum(0), torch.ones(1, 9, 11))
    y = torch.zeros(1, 1, 8, 8)
    y[0, 0, 4, 5] = 6.0  # one bright pixel; copy (r % 4) * 4 + c % 4 hides pixel (r, c)
    copies, _ = masked_copies(y)
    assert copies[0, (4 % 4) * 4 + 5 % 4, 0, 4, 5] == 0  # hidden where it lies
    assert copies[0, (4 % 4) * 4 + 6 % 4, 0, 4, 6] == 1.0  # a side neighbour: weight 1 / 6
    assert copies[0, (5 % 4) * 4 + 6 % 4, 0, 5, 6] == 0.5  # a diagonal one: weight 0.5 / 6


@pytest.mark.parametrize("y0,x0", [(0, 0), (7, 3), (11, 11), (5, 0)])
def test_the_blind_prediction_has_zero_gradient_on_its_own_pixel(y0, x0):
    torch.manual_seed(0)
    net = Student("C", width=4).double()
    y = (torch.rand(1, 3, 12, 12, dtype=torch.float64) * 255).requires_grad_(True)
    Blind2UnblindLoss().blind(net, y)[0, :, y0, x0].sum().backward()
    g = y.grad[0].abs().sum(0)
    assert g[y0, x0] == 0 and g.sum() > 0


def test_beta_rises_from_2_to_20_over_the_last_60_percent():
    assert beta_at(0.1) == beta_at(0.4) == 2.0
    assert beta_at(0.7) == pytest.approx(11.0) and beta_at(1.0) == pytest.approx(20.0)
    loss = Blind2UnblindLoss()
    loss.at(99, 100)
    assert loss.beta == pytest.approx(20.0)
    value = loss(Student("C", width=4), torch.rand(2, 3, 18, 21) * 255, torch.ones(2, 1, 18, 21))
    assert torch.isfinite(value)
