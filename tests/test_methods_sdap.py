"""SDAP(E): the authors' checkpoint, their random sub-sample draw and every tensor their code computes,
reproduced; the blind spot of training (a sub-image never sees the pixels it is pulled toward, nor the pixel it
predicts) tested by gradients at borders and odd sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_close_to_scale, shared_path

from atbsn.checkpoint import load
from atbsn.config import ModelConfig
from atbsn.methods.sdap import RSGL1, SDAP, draw_cells, subimages


@pytest.fixture(scope="module")
def authors():
    folder = shared_path("fixtures", "sdap")
    return load(folder / "sdap_official_format.pth", part="teacher"), \
        torch.load(folder / "sdap_expected_outputs.pt", weights_only=True)


def _close(ours: torch.Tensor, ref: torch.Tensor, rel: float = 1e-5) -> None:
    """Two runs of the authors' code differ by 4.3e-6 of the scale with 2 threads (their README)."""
    assert_close_to_scale(ours, ref, rel)


def test_the_authors_checkpoint_loads_as_sdap(authors):
    model, _ = authors
    assert model.config.arch == "sdap" and model.config.value_range == 1.0
    assert (model.config.k_train, model.config.k_infer) == (5, 2)
    assert sum(p.numel() for p in model.parameters()) == 3_656_131


def test_the_random_sub_samples_are_their_draw(authors):
    """Their draw (stored: the fixture's seed does not matter) read as our cell index gives their masks and
    sub-images; our draws have the same form: each cell's positions in a random order."""
    _, ref = authors
    index = ref["rsg_cell_index"]  # positions x images x cell rows x cell columns
    j, n, rows, cols = index.shape
    assert torch.equal(index.sort(0).values, torch.arange(j)[:, None, None, None].expand_as(index))
    flat = torch.zeros(j, n * rows * cols * j, dtype=torch.bool)  # their masks, from the same draw
    cells = torch.arange(n * rows * cols) * j
    for i in range(j):
        flat[i, cells + index[i].reshape(-1)] = True
    assert torch.equal(flat, ref["rsg_masks"])
    assert torch.equal(subimages(ref["input"], index), ref["rsg_subimages"])
    ours = draw_cells(n, rows, cols, np.random.RandomState(1))
    assert ours.shape == index.shape and torch.equal(ours.sort(0).values, index.sort(0).values)


def test_the_training_path_and_cyclic_loss_are_theirs(authors):
    model, ref = authors
    subs = ref["rsg_subimages"]
    _close(torch.stack([model.net(s) for s in subs]), ref["rsg_sub_denoised"])

    class Fixed(RSGL1):  # the same loss on their draw
        def draw(self, n, rows, cols):
            return ref["rsg_cell_index"]

    x = ref["input"]
    with torch.no_grad():
        loss = Fixed()(model, x * 255, torch.ones_like(x[:, :1])) / 255  # L1 on 0..255: 255 x theirs
    assert abs(float(loss) - float(ref["train_loss_cyclic_L1"])) <= 1e-5 * float(ref["train_loss_cyclic_L1"])


@torch.no_grad()
def test_every_inference_tensor_of_the_authors_code_is_reproduced(authors):
    model, ref = authors
    x = ref["input"][:1]
    c, h, w = x.shape[1:]
    phases = x.reshape(1, c, h // 2, 2, w // 2, 2).permute(0, 3, 5, 1, 2, 4).reshape(4, c, h // 2, w // 2)
    _close(phases, ref["test_pd2_subimages"], 0)
    head = model.head(phases)
    _close(head, ref["test_pd2_head"])
    _close(model.branch1(head), ref["test_pd2_branch1"])
    _close(model.branch2(head), ref["test_pd2_branch2"])
    _close(model.net(phases), ref["test_pd2_net_out"])
    _close(model(x * 255, 2, enhance=False) / 255, ref["test_noE"])
    _close(model(x * 255) / 255, ref["test_E"])  # SDAP(E): the default
    _close((model(x * 255) / 255).clamp(0, 1), ref["test_E_clamped"])
    _close(model.net(x), ref["net_on_full_input"])


def test_odd_sizes_run_and_are_cropped_back():
    model = SDAP(ModelConfig("sdap", width=8, value_range=1.0)).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 33, 27) * 255).shape == (1, 3, 33, 27)


@pytest.mark.parametrize("size, cell", [((20, 15), (0, 0)), ((25, 35), (4, 6)), ((23, 17), (2, 1))])
def test_a_sub_image_never_sees_its_target_nor_its_own_pixel(size, cell):
    """Training's blind spot by gradients: sub-image j's output at a cell depends on none of sub-image j + 1's
    pixels (its target) nor on its own pixel there, and on the other pixels of sub-image j it reaches."""
    torch.manual_seed(0)
    model = SDAP(ModelConfig("sdap", width=8, value_range=1.0)).double()
    h, w = size[0] // 5 * 5, size[1] // 5 * 5  # the loss keeps whole cells
    x = (torch.rand(1, 3, *size, dtype=torch.float64) * 255).requires_grad_(True)
    index = draw_cells(1, h // 5, w // 5, np.random.RandomState(3))
    subs = subimages(x[..., :h, :w], index)
    j, (i, k) = 7, cell
    model.net(subs[j])[0, :, i, k].sum().backward()
    g = x.grad.abs().sum(1)[0]

    def where(jj: int, ii: int, kk: int) -> tuple[int, int]:
        r = int(index[jj, 0, ii, kk])
        return 5 * ii + r // 5, 5 * kk + r % 5

    targets = [where(j + 1, a, b) for a in range(h // 5) for b in range(w // 5)]
    assert all(g[p] == 0 for p in targets)
    assert g[where(j, i, k)] == 0
    near = [where(j, a, b) for a in range(h // 5) for b in range(w // 5)
            if (a, b) != (i, k) and abs(a - i) <= 1 and abs(b - k) <= 1]
    assert near and all(g[p] > 0 for p in near)  # its neighbours in the sub-image it does see
    seen = {where(j, a, b) for a in range(h // 5) for b in range(w // 5)}
    assert all(g[r, c] == 0 for r in range(size[0]) for c in range(size[1]) if (r, c) not in seen)
