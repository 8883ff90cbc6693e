"""The blind spot is exact: zero gradient on the k x k square, non-zero just outside, at any pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atbsn import ATBSN, validate_k
from atbsn.blindspot import shift_for_k


def _grad_map(net: ATBSN, shape: tuple[int, int], k: int, y: int, x: int) -> torch.Tensor:
    h, w = shape
    inp = (torch.rand(1, 3, h, w, dtype=torch.float64) * 255).requires_grad_(True)
    out = net(inp, k)
    assert out.shape == inp.shape
    out[0, :, y, x].sum().backward()
    return inp.grad[0].abs().sum(0)  # H x W, all channels together


@pytest.fixture(scope="module")
def net() -> ATBSN:
    torch.manual_seed(1)
    return ATBSN(width=8).double().eval()


PIXELS = {"centre": (0.5, 0.5), "top-left corner": (0, 0), "bottom-right corner": (1, 1), "left edge": (0.5, 0)}


@pytest.mark.parametrize("shape", [(37, 53), (40, 33), (64, 64), (9, 6)])
@pytest.mark.parametrize("k", [1, 3, 5, 9, 11])
def test_gradient_is_exactly_zero_on_the_k_square_and_not_outside(net, shape, k):
    h, w = shape
    s = shift_for_k(k)
    for fy, fx in PIXELS.values():
        y, x = round(fy * (h - 1)), round(fx * (w - 1))
        g = _grad_map(net, shape, k, y, x)
        y0, y1, x0, x1 = max(y - s + 1, 0), min(y + s, h), max(x - s + 1, 0), min(x + s, w)
        assert torch.all(g[y0:y1, x0:x1] == 0), f"leak inside the {k}x{k} blind spot at ({y},{x})"
        outside = [(y - s, x), (y + s, x), (y, x - s), (y, x + s)]
        inside_image = [(a, b) for a, b in outside if 0 <= a < h and 0 <= b < w]
        for a, b in inside_image:
            assert g[a, b] > 0, f"pixel ({a},{b}) just outside the blind spot of ({y},{x}) is unused"
        covers_all = y0 == 0 and x0 == 0 and y1 == h and x1 == w
        assert covers_all or g.sum() > 0


@pytest.mark.parametrize("shape", [(37, 53), (5, 3)])
def test_k0_sees_the_centre_pixel(net, shape):
    h, w = shape
    for fy, fx in PIXELS.values():
        y, x = round(fy * (h - 1)), round(fx * (w - 1))
        assert _grad_map(net, shape, 0, y, x)[y, x] > 0


def test_tiny_images_and_batches_keep_their_shape(net):
    for h, w in [(1, 1), (2, 7), (33, 1)]:
        x = torch.rand(2, 3, h, w, dtype=torch.float64) * 255
        assert net(x, 3).shape == x.shape


@pytest.mark.parametrize("bad", [2, 4, -1, -3, 1.0, 3.5, "3", None, True])
def test_invalid_k_is_refused_with_the_valid_values(net, bad):
    with pytest.raises(ValueError, match="0 or a positive odd integer"):
        validate_k(bad) if bad is None else net(torch.zeros(1, 3, 8, 8, dtype=torch.float64), bad)


def test_valid_k_accepts_numpy_integers():
    assert validate_k(np.int64(5)) == 5
    assert shift_for_k(0) == 0 and shift_for_k(1) == 1 and shift_for_k(9) == 5
